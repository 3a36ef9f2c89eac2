"""Benchmark of the ``predict`` pipeline on generated mosaics.

Reports, for each (model, mosaic size):

(a) overhead: end-to-end ``predict()`` time divided by the time of the model
    forward passes alone on the same tiles (inputs prepared in memory
    beforehand, same batches). Target <= 1.05.
(b) memory: peak RSS of the run on the large mosaic divided by the one on the
    small mosaic; every run is its own subprocess, which reads its own
    ``ru_maxrss`` (and its DataLoader workers' through RUSAGE_CHILDREN).
    Target <= 1.1.
(c) vectorisation: ``geo.vectorize`` vs plain ``gdal_polygonize`` on the same
    class rasters (skipped with a message when the GDAL command is absent).

Mosaics are grids of 1024 px GeoTIFF files (tiled, DEFLATE) read as one
mosaic, with random-weight checkpoints: speed and memory do not depend on
the weights. Usage::

    python benchmarks/predict_pipeline.py                    # nano 2048 + 8192, tiny 2048
    python benchmarks/predict_pipeline.py --sizes 2048 --models caswit-nano
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILE_SIZE = 1024  # px per generated file
GSD = 0.2
NUM_CLASSES = 8


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    """Box blur along the last two axes (twice): smooth random fields."""
    for _ in range(2):
        for axis in (-2, -1):
            pad = [(0, 0)] * x.ndim
            pad[axis] = (r + 1, r)
            c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
            n = x.shape[axis]
            x = (np.take(c, range(2 * r + 1, 2 * r + 1 + n), axis=axis) - np.take(c, range(n), axis=axis)) / (
                2 * r + 1
            )
    return x


def make_mosaic(folder: Path, size: int, seed: int = 0) -> Path:
    """``size x size`` RGB uint8 mosaic as a grid of FILE_SIZE px GeoTIFFs in ``folder``."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x0, y0 = 650_000.0, 6_860_000.0
    for r in range(0, size, FILE_SIZE):
        for c in range(0, size, FILE_SIZE):
            low = _blur(rng.normal(size=(3, FILE_SIZE // 8, FILE_SIZE // 8)).astype(np.float32), 3)
            img = np.kron(low, np.ones((1, 8, 8), np.float32))
            img = (img - img.min()) / (np.ptp(img) + 1e-6) * 200 + rng.integers(0, 40, img.shape)
            profile = dict(
                driver="GTiff", width=FILE_SIZE, height=FILE_SIZE, count=3, dtype="uint8", crs="EPSG:2154",
                transform=Affine(GSD, 0, x0 + c * GSD, 0, -GSD, y0 - r * GSD), tiled=True, blockxsize=256,
                blockysize=256, compress="deflate",
            )
            with rasterio.open(folder / f"tile_{r:05d}_{c:05d}.tif", "w", **profile) as dst:
                dst.write(np.clip(img, 0, 255).astype(np.uint8))
    return folder


def make_class_raster(path: Path, size: int, seed: int = 0) -> Path:
    """A land-cover-like class raster (blobs, 8 px staircases, isolated specks)."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    low = _blur(rng.normal(size=(6, size // 8, size // 8)).astype(np.float32), 4).argmax(axis=0).astype(np.uint8)
    cls = np.kron(low, np.ones((8, 8), np.uint8))
    n = size * size // 2000
    cls[rng.integers(0, size, n), rng.integers(0, size, n)] = rng.integers(0, 6, n)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:2154", nodata=255,
        transform=Affine(GSD, 0, 650_000.0, 0, -GSD, 6_860_000.0), tiled=True, blockxsize=256, blockysize=256,
        compress="deflate",
    ) as dst:
        dst.write(cls, 1)
    return path


def make_checkpoint(path: Path, model_name: str) -> Path:
    import torch

    import caswit_geo
    from caswit_geo.core.spec import InputSpec
    from caswit_geo.model.configs import get_config

    torch.manual_seed(0)
    tile = get_config(model_name, num_classes=NUM_CLASSES).img_size
    model = caswit_geo.build_model(model_name, num_classes=NUM_CLASSES)
    caswit_geo.save_checkpoint(model, path, input_spec=InputSpec(tile_size=tile, gsd=GSD))
    return path


# ---------------------------------------------------------------------------
# One measurement (runs in its own subprocess)
# ---------------------------------------------------------------------------


def measure(args: dict) -> dict:
    """End-to-end predict, then the forward passes alone on the same tiles; ``repeats`` times each,
    alternating, keeping the fastest (other load on the machine only ever slows a run down)."""
    import rasterio
    import torch

    from caswit_geo.engine.predict import PredictConfig, predict, predict_probabilities
    from caswit_geo.engine.predict.source import PredictTiles, model_inputs
    from caswit_geo.geo.grid import TileGrid, plan_tiles
    from caswit_geo.geo.lowres import build_lowres
    from caswit_geo.geo.mosaic import expand_inputs, open_mosaic
    from caswit_geo.model.checkpoint import load_checkpoint
    from caswit_geo.runtime.precision import prepare_inference, resolve_precision

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    out = Path(args["out"])
    config = PredictConfig(
        inputs=[args["mosaic"]], out=out, weights=args["weights"], batch_size=args["batch_size"],
        workers=args["workers"], overwrite=True, progress=False,
    )

    def end_to_end():
        t0 = time.perf_counter()
        res = predict(config)
        return time.perf_counter() - t0, res

    e2e, res = end_to_end()
    # peak of the end-to-end run alone (the forward-only part below holds all tiles in memory)
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    # forward passes alone: same tiles, same batches, inputs already in memory
    model, meta = load_checkpoint(args["weights"])
    precision = resolve_precision(config.precision, torch.device("cpu"), model, model_name=meta.name)
    prepare_inference(model, precision)  # as predict runs it
    spec = meta.input_spec
    mosaic = open_mosaic(expand_inputs([args["mosaic"]]), spec.bands)
    grid = TileGrid(mosaic.width, mosaic.height, spec.tile_size)
    plan = plan_tiles(grid, None)
    with tempfile.TemporaryDirectory() as tmp:
        with mosaic.open() as src:
            lowres = build_lowres(src, spec.bands, grid, spec.context_factor, Path(tmp) / "lr.tif")
        ds = PredictTiles(mosaic.source, [w for _, w in plan], spec, "prepass", lowres)
        bs = args["batch_size"]
        batches = [model_inputs(ds.collate([ds[i] for i in range(s, min(s + bs, len(ds)))]), spec, torch.device("cpu"))
                   for s in range(0, len(ds), bs)]
        ds.close()
    predict_probabilities(model, *batches[0], precision)  # warm-up, untimed

    def forward_only():
        t0 = time.perf_counter()
        for hr, lr in batches:
            probs = predict_probabilities(model, hr, lr, precision)
            conf, cls = probs.max(dim=1)
            cls.to(torch.uint8).cpu(), conf.cpu()
        return time.perf_counter() - t0

    e2e_runs, fwd_runs, phases = [e2e], [forward_only()], [res.phases]
    for _ in range(args["repeats"] - 1):
        t, r = end_to_end()
        e2e_runs.append(t)
        phases.append(r.phases)
        fwd_runs.append(forward_only())
    best = int(np.argmin(e2e_runs))
    with rasterio.open(out) as src:
        shape = src.shape
    return dict(
        model=args["model"], size=args["size"], tiles=res.tiles, e2e_s=min(e2e_runs), forward_only_s=min(fwd_runs),
        ratio=min(e2e_runs) / min(fwd_runs), e2e_runs=e2e_runs, forward_runs=fwd_runs, phases=phases[best],
        engine_forward_s=res.forward_seconds, rss_self_mb=rss_self, rss_workers_mb=rss_children,
        rss_total_mb=rss_self + rss_children, out_shape=shape, threads=torch.get_num_threads(),
        workers=args["workers"],
    )


def run_measurement(**args) -> dict:
    """``measure`` in a fresh interpreter (its own peak RSS)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(args)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Vectorisation
# ---------------------------------------------------------------------------


def bench_vectorize(class_raster: Path, work: Path) -> list[str]:
    from caswit_geo.core.spec import ClassTable
    from caswit_geo.geo.vectorize import vectorize

    classes = ClassTable.generic(NUM_CLASSES)
    lines = []
    t0 = time.perf_counter()
    r = vectorize(class_raster, work / "ours.gpkg", classes)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectorize(class_raster, work / "ours_simpl.gpkg", classes, simplify=0.5)
    ours_s = time.perf_counter() - t0
    gdal = shutil.which("gdal_polygonize") or shutil.which("gdal_polygonize.py")
    line = f"{class_raster.name}: {r.features:,} polygons; vectorize {ours:.2f} s (with --simplify 0.5: {ours_s:.2f} s)"
    if gdal is None:
        lines.append(line + "; gdal_polygonize not installed (apt-get install gdal-bin): comparison skipped")
        return lines
    t0 = time.perf_counter()
    subprocess.run([gdal, "-q", str(class_raster), "-f", "GPKG", str(work / "gdal.gpkg")], check=True,
                   capture_output=True)
    ref = time.perf_counter() - t0
    lines.append(line + f"; gdal_polygonize {ref:.2f} s; ratio {ours / ref:.2f}")
    return lines


# ---------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--models", nargs="+", default=["caswit-nano", "caswit-tiny"])
    p.add_argument("--tiny-sizes", type=int, nargs="+", default=[2048], help="sizes for non-nano models")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="reader processes of predict")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads, both sides (0 = torch default; 1 is steadier on a shared machine)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side; the fastest counts")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(json.loads(a.measure))))
        return

    work = Path(a.workdir or tempfile.mkdtemp(prefix="caswit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for model in a.models:
        ckpt = work / f"{model}.safetensors"
        if not ckpt.exists():
            make_checkpoint(ckpt, model)
        sizes = a.sizes if model.endswith("nano") else a.tiny_sizes
        for size in sizes:
            mosaic = work / f"mosaic_{size}"
            if not mosaic.exists():
                make_mosaic(mosaic, size)
            row = run_measurement(
                model=model, size=size, mosaic=str(mosaic), weights=str(ckpt), out=str(work / f"{model}_{size}.tif"),
                batch_size=a.batch_size, workers=a.workers, threads=a.threads, repeats=a.repeats,
            )
            rows.append(row)
            print(
                f"{model:12s} {size:5d}^2 {row['tiles']:5d} tiles: end-to-end {row['e2e_s']:7.1f} s, "
                f"forward alone {row['forward_only_s']:7.1f} s -> (a) ratio {row['ratio']:.3f} "
                f"[phases {', '.join(f'{k} {v:.1f}' for k, v in row['phases'].items())}]; "
                f"peak RSS {row['rss_self_mb']:.0f} MB + workers {row['rss_workers_mb']:.0f} MB "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    for model in a.models:
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["size"])
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            print(
                f"(b) {model}: peak RSS {large['size']}^2 / {small['size']}^2 = "
                f"{large['rss_self_mb'] / small['rss_self_mb']:.3f} (main process), "
                f"{large['rss_total_mb'] / small['rss_total_mb']:.3f} (with workers)",
                flush=True,
            )
    # (c) on the largest predicted class raster and on a land-cover-like one of the same size
    largest = max(rows, key=lambda r: r["size"])
    targets = [work / f"{largest['model']}_{largest['size']}.tif"]
    synth = work / f"classes_{largest['size']}.tif"
    if not synth.exists():
        make_class_raster(synth, largest["size"])
    targets.append(synth)
    for t in targets:
        for line in bench_vectorize(t, work):
            print(f"(c) {line}", flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
