"""Make the demo data: a synthetic ``tiles`` data set and one standalone orthophoto.

    python examples/make_demo_data.py                  # -> data/synthetic/, examples/sample_ortho.tif
    python examples/make_demo_data.py --out /tmp/demo --seed 1 --size 2048

The same data set comes from the command line::

    caswit-geo synth data/synthetic --seed 0 --size 1024 --train 8 --val 4 --test 4

The mosaics are 0.5 m RGB GeoTIFFs in Lambert-93 (EPSG:2154) with eight
classes. ``park`` and ``meadow`` are one grass texture told apart only by the
buildings around the grass patch (the rule is in
``caswit_geo/synthetic/__init__.py``), so a model needs the LR context to
separate them; the six other classes show in the HR tile itself. Train on
it as on any ``tiles`` data set (``caswit-geo train --dataset tiles --root
data/synthetic ...``) and predict on ``examples/sample_ortho.tif``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from caswit_geo.synthetic import CONTEXT_CLASSES, SyntheticConfig, generate_dataset, write_sample_mosaic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"), help="data set folder")
    parser.add_argument("--sample", type=Path, default=Path(__file__).with_name("sample_ortho.tif"),
                        help="standalone orthophoto (the first test mosaic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=1024, help="mosaic side, px")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    config = SyntheticConfig(seed=args.seed, size=args.size)  # 8 train, 4 val, 4 test mosaics
    summary = generate_dataset(config, args.out, overwrite=args.overwrite, progress=True)
    print(f"{summary.root}: {sum(map(len, summary.names.values()))} mosaics in {summary.seconds:.1f} s")
    for k, (name, share) in enumerate(zip(summary.class_names, summary.class_frequencies)):
        print(f"  {k} {name:<9} {100 * share:5.1f} %" + ("  (needs context)" if k in CONTEXT_CLASSES else ""))

    # Its reference labels go beside it, for comparing with a prediction.
    labels = args.sample.with_name(args.sample.stem + "_labels.tif")
    write_sample_mosaic(args.sample, config, labels_path=labels, overwrite=args.overwrite)
    print(f"{args.sample} (+ {labels.name}): test mosaic 0, unseen in training")


if __name__ == "__main__":
    main()
