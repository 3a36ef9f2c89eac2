"""What test-time augmentation gains and costs: the demo model on the synthetic test split.

Predicts every test mosaic of a ``caswit-geo synth`` data set with
``predict`` (whole mosaics, 128 px tiles with their LR context) without
augmentation, with ``--tta-flips`` (4 passes a tile) and with ``--tta``
(8 passes), and scores each map against the labels with the generic
protocol (every class, mIoU over the classes present). Reports mIoU, per-class
IoU, model time and wall time per mode. Usage::

    caswit-geo synth data/synthetic --seed 0
    python benchmarks/tta_gain.py data/synthetic                 # CPU, about 10 minutes on 2 cores
    python benchmarks/tta_gain.py data/synthetic --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from caswit_geo.core.spec import ClassTable
from caswit_geo.engine.evaluate.metrics import ConfusionMatrix, iou_per_class
from caswit_geo.engine.predict import PredictConfig, predict

MODES = ("none", "flips", "dihedral")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a caswit-geo synth data set")
    parser.add_argument("--weights", default="weights/caswit-nano-synthetic.safetensors")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    classes = ClassTable.from_dict(json.loads((args.root / "classes.json").read_text()))
    names = (args.root / "splits" / f"{args.split}.txt").read_text().split()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        # untimed: the first run in a process pays for imports and first-call set-ups
        predict(PredictConfig(inputs=[str(args.root / "images" / f"{names[0]}.tif")], out=str(Path(tmp) / "warm.tif"),
                              weights=args.weights, device=args.device, progress=False, batch_size=args.batch_size))
        for mode in MODES:
            cm = ConfusionMatrix(len(classes))
            forward = wall = 0.0
            for name in names:
                out = Path(tmp) / f"{name}_{mode}.tif"
                t0 = time.perf_counter()
                result = predict(PredictConfig(inputs=[str(args.root / "images" / f"{name}.tif")], out=str(out),
                                               weights=args.weights, device=args.device, tta=mode, progress=False,
                                               batch_size=args.batch_size))
                wall += time.perf_counter() - t0
                forward += result.forward_seconds
                with rasterio.open(out) as pred, rasterio.open(args.root / "labels" / f"{name}.tif") as ref:
                    cm.update(ref.read(1), pred.read(1))
            present = cm.matrix.sum(0) + cm.matrix.sum(1) > 0
            iou = iou_per_class(cm.matrix)
            figures[mode] = dict(miou=float(np.mean(iou[present])), model_s=forward, wall_s=wall,
                                 iou={c.name: float(iou[c.id]) for c in classes.classes})
            print(f"{mode:>9}: mIoU {100 * figures[mode]['miou']:.2f}  model {forward:.1f} s  wall {wall:.1f} s",
                  flush=True)
    base = figures["none"]
    print("\nmode       mIoU    gain   model time  x    wall time  x")
    for mode, f in figures.items():
        print(f"{mode:<9} {100 * f['miou']:6.2f}  {100 * (f['miou'] - base['miou']):+5.2f}  "
              f"{f['model_s']:8.1f} s {f['model_s'] / base['model_s']:4.1f}  {f['wall_s']:8.1f} s {f['wall_s'] / base['wall_s']:4.1f}")
    print("\nper-class IoU: " + ", ".join(f"{n}" for n in figures["none"]["iou"]))
    for mode, f in figures.items():
        print(f"{mode:<9} " + " ".join(f"{100 * v:5.1f}" for v in f["iou"].values()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
