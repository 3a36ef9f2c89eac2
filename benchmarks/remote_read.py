"""Benchmark of predict reading a COG over HTTP against reading the same file from the disk.

One generated COG (default 4096 x 4096 px RGB, DEFLATE, 512 px blocks,
overviews) is served by a local HTTP server with Range support
(``tests/http_server.py``, a process of its own, on 127.0.0.1). Side by side,
alternating, each measurement in a fresh interpreter (no GDAL cache carried
over):

(a) read: every HR tile of the plan read as predict's readers read it
    (``PredictTiles``, pixels and masks, no model), local path against URL.
    Goal: remote / local <= 1.2 on the loopback.
(b) predict: the whole ``predict`` (caswit-nano, random weights, LR pre-pass
    from the overviews), local path against URL.

For the remote runs: HTTP requests and bytes served, against the file's
size (never a whole download). Times are the minimum and median of
``--repeats`` runs (other load only slows a run down). Above the figures:
the CPU model and its bf16 / AMX flags. Usage::

    python benchmarks/remote_read.py                 # 4096 px, 3 repeats
    python benchmarks/remote_read.py --size 2048 --repeats 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

GSD = 0.2


def make_cog(path: Path, size: int, seed: int = 0) -> Path:
    """A ``size`` x ``size`` RGB COG of smooth fields and grain (compresses like an orthophoto)."""
    import numpy as np
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    low = rng.normal(size=(3, size // 32 + 1, size // 32 + 1)).astype(np.float32)
    img = np.kron(low, np.ones((1, 32, 32), np.float32))[:, :size, :size]
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * 200 + rng.integers(0, 40, img.shape)
    profile = dict(driver="COG", width=size, height=size, count=3, dtype="uint8", crs="EPSG:2154",
                   transform=Affine(GSD, 0, 650_000.0, 0, -GSD, 6_860_000.0), blocksize=512, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(img, 0, 255).astype(np.uint8))
    return path


def make_checkpoint(path: Path) -> Path:
    import torch

    import caswit_geo
    from caswit_geo.core.spec import InputSpec

    torch.manual_seed(0)  # random weights: reading and speed do not depend on them
    model = caswit_geo.build_model("caswit-nano", num_classes=6)
    caswit_geo.save_checkpoint(model, path, input_spec=InputSpec(tile_size=128, gsd=GSD))
    return path


# ---------------------------------------------------------------------------
# One measurement (in its own interpreter)
# ---------------------------------------------------------------------------


def measure(args: dict) -> dict:
    import rasterio
    import torch

    from caswit_geo.engine.predict import PredictConfig, predict
    from caswit_geo.engine.predict.plan import plan_predict
    from caswit_geo.engine.predict.source import PredictTiles
    from caswit_geo.geo.remote import gdal_remote_options

    torch.set_num_threads(args["threads"])
    config = PredictConfig(inputs=[args["source"]], out=args["out"], weights=args["weights"], overwrite=True,
                           progress=False, workers=args["workers"])
    t0 = time.perf_counter()
    if args["what"] == "predict":
        result = predict(config)
        return {"seconds": time.perf_counter() - t0, "tiles": result.tiles}
    plan = plan_predict(config)
    opened = time.perf_counter() - t0
    windows = [w for unit in plan.units for _, w in plan.tiles(unit)]
    tiles = PredictTiles(plan.mosaic.source, windows, plan.spec, "none")
    t1 = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=plan.cache_bytes, **gdal_remote_options(plan.inputs)):
        for start in range(0, len(windows), 8):
            tiles.__getitems__(list(range(start, min(start + 8, len(windows)))))
    tiles.close()
    return {"seconds": time.perf_counter() - t1, "plan_seconds": opened, "tiles": len(windows)}


def run_measure(args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(args)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Side by side
# ---------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    p.add_argument("--workers", type=int, default=0, help="predict's reader processes")
    p.add_argument("--what", nargs="+", choices=("read", "predict"), default=["read", "predict"])
    p.add_argument("--measure", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(json.loads(a.measure))))
        return

    from model_speed import cpu_description, describe_cpu

    from tests.http_server import ServedFolder

    print(describe_cpu(cpu_description()))
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="remote_read_") as tmp:
        work = Path(tmp)
        cog = make_cog(work / "ortho.tif", a.size)
        weights = make_checkpoint(work / "nano.safetensors")
        size_mb = cog.stat().st_size / 2**20
        print(f"COG {a.size} x {a.size} px, {size_mb:.1f} MiB; caswit-nano 128 px tiles; {a.repeats} repeats", flush=True)
        with ServedFolder(work) as server:
            url = server.url("ortho.tif")
            for what in a.what:
                times: dict[str, list[float]] = {"local": [], "remote": []}
                counts = []
                for _ in range(a.repeats):
                    for where, source in (("local", str(cog)), ("remote", url)):
                        server.reset_counts()
                        res = run_measure(dict(what=what, source=source, out=str(work / f"{where}.tif"),
                                               weights=str(weights), threads=a.threads, workers=a.workers))
                        times[where].append(res["seconds"])
                        if where == "remote":
                            requests = server.requests
                            counts.append((len(requests), sum(r.sent for r in requests)))
                        print(f"  {what} {where}: {res['seconds']:.2f} s ({res['tiles']} tiles)", flush=True)
                lo, re_ = times["local"], times["remote"]
                n, sent = min(counts)
                print(f"{what}: local min {min(lo):.2f} s / median {statistics.median(lo):.2f} s; "
                      f"remote min {min(re_):.2f} s / median {statistics.median(re_):.2f} s; "
                      f"ratio min {min(re_) / min(lo):.2f}, median {statistics.median(re_) / statistics.median(lo):.2f}; "
                      f"{n} requests, {sent / 2**20:.1f} MiB served ({sent / cog.stat().st_size:.2f} x the file)",
                      flush=True)


if __name__ == "__main__":
    main()
