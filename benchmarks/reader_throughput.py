"""Benchmark of predict's reading side: tiles with their LR context per second, the model replaced by a no-op.

For each input format (the same pixels each time) and reader worker count,
``predict``'s unit runner (engine/predict/units.py: LR pre-pass, reader
workers, batches) runs with its model loop replaced by one that only
drains the batches. Reported per run: tiles/s, CPU seconds of the whole
process tree (the run's process and its reader processes) per source
megapixel, the same against one full decode of the files (every block
read once, one process), and the cores kept busy (CPU seconds per second:
with one worker the LR pre-pass thread, the reader process and the run's
process already share the cores, which bounds what a second worker can
add on a 2-core machine). Formats:

- ``gtiff``: DEFLATE GeoTIFF, 512 px blocks;
- ``cog``: Cloud Optimized GeoTIFF (DEFLATE, 512 px blocks, overviews);
- ``jp2-4``, ``jp2-10``: JPEG 2000, lossy about 4:1 and 10:1, 1024 px codestream tiles, 5 resolutions
  (IGN's BD ORTHO layout);
- ``jp2-1tile``: JPEG 2000 4:1 with one codestream tile per file;
- ``http-cog``: the mosaic as one COG served by a loopback HTTP server (Range requests), read through
  ``/vsicurl/`` (the reading layer is called directly).

Then the goals, measured side by side in this run:

1. reading in predict costs at most 1.3 full decodes of the JP2 files with 2 workers: (CPU of reading
   JP2 - CPU of reading GeoTIFF) / (CPU of decoding the JP2 files once - same for GeoTIFF);
2. the reader is at least 1.7x faster with 2 workers than with 1;
3. ``--resample`` on JP2 is within 2x of ``--resample`` on GeoTIFF (reading time);
4. one process, batch 1: reading with the LR context within 1.1x of the same tiles without context, and of
   a minimal reader loop (rasterio windowed reads of the same 512 px tiles, no context: what IGN's
   FLAIR-HUB zonal detection does per tile); memory growth of the process tree during a run at most 300 MB.

Every measurement runs in its own interpreter; timings are the minimum (and median) of ``--repeats``.
Memory is sampled in one more run of each: reading ``/proc/*/smaps_rollup`` every 20 ms stalls the
process's memory mappings, and would slow the timed runs (the more so the more they allocate).
Usage::

    python benchmarks/reader_throughput.py --quick          # 4096 px mosaic, workers 1 and 2, a few minutes
    python benchmarks/reader_throughput.py                  # 8192 px mosaic, workers 1, 2, 4
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's package, run as a script

GSD = 0.2
TILE = 512
FORMATS = ("gtiff", "cog", "jp2-4", "jp2-10", "jp2-1tile", "http-cog")


def cpu_line() -> str:
    """The CPU model and its bf16/AMX flags (as every benchmark prints them)."""
    from model_speed import cpu_description, describe_cpu

    return describe_cpu(cpu_description())


# ---------------------------------------------------------------------------
# Data: one mosaic of 2 x 2 files, written in every format
# ---------------------------------------------------------------------------


def _pixels(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, size, size) uint8: smooth fields, edges and noise (compresses like an orthophoto, roughly)."""
    coarse = rng.integers(30, 220, (3, size // 64 + 1, size // 64 + 1)).astype(np.float32)
    img = np.repeat(np.repeat(coarse, 64, axis=1), 64, axis=2)[:, :size, :size]
    yy, xx = np.mgrid[0:size, 0:size]
    img += 20 * np.sin(xx / 17.0 + yy / 29.0)[None]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _profile(fmt: str, size: int, transform) -> dict:
    base = dict(width=size, height=size, count=3, dtype="uint8", crs="EPSG:2154", transform=transform)
    if fmt == "gtiff":
        return dict(base, driver="GTiff", tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    if fmt == "cog":
        return dict(base, driver="COG", blocksize=512, compress="deflate")
    quality = {"jp2-4": 25, "jp2-10": 10, "jp2-1tile": 25}[fmt]
    block = size if fmt == "jp2-1tile" else 1024
    return dict(base, driver="JP2OpenJPEG", QUALITY=quality, REVERSIBLE="NO", RESOLUTIONS=5,
                BLOCKXSIZE=block, BLOCKYSIZE=block)


def make_inputs(work: Path, file_size: int) -> dict[str, list[Path]]:
    """Every format's 2 x 2 files (same pixels), and the single-file COG served over HTTP."""
    import rasterio
    import rasterio.shutil
    from affine import Affine

    rng = np.random.default_rng(0)
    tiles = {(r, c): _pixels(rng, file_size) for r in range(2) for c in range(2)}
    out: dict[str, list[Path]] = {}
    for fmt in FORMATS[:-1]:
        folder = work / fmt
        folder.mkdir(parents=True, exist_ok=True)
        ext = "jp2" if fmt.startswith("jp2") else "tif"
        paths = []
        for (r, c), img in tiles.items():
            t = Affine(GSD, 0, 650_000 + c * file_size * GSD, 0, -GSD, 6_860_000 - r * file_size * GSD)
            path = folder / f"ortho_{r}_{c}.{ext}"
            if fmt == "cog":  # the COG driver writes from a source dataset
                with rasterio.MemoryFile() as mem:
                    with mem.open(**_profile("gtiff", file_size, t)) as tmp:
                        tmp.write(img)
                    with mem.open() as tmp:
                        rasterio.shutil.copy(tmp, path, driver="COG", blocksize=512, compress="deflate")
            else:
                with rasterio.open(path, "w", **_profile(fmt, file_size, t)) as dst:
                    dst.write(img)
            paths.append(path)
        out[fmt] = paths
    whole = np.block([[tiles[0, 0], tiles[0, 1]], [tiles[1, 0], tiles[1, 1]]])
    served = work / "http" / "mosaic.tif"
    served.parent.mkdir(exist_ok=True)
    with rasterio.MemoryFile() as mem:
        with mem.open(**_profile("gtiff", 2 * file_size, Affine(GSD, 0, 650_000, 0, -GSD, 6_860_000))) as tmp:
            tmp.write(whole)
        with mem.open() as tmp:
            rasterio.shutil.copy(tmp, served, driver="COG", blocksize=512, compress="deflate")
    out["http-cog"] = [served]
    return out


def make_checkpoint(path: Path, gsd: float) -> Path:
    import torch

    import caswit_geo
    from caswit_geo.core.spec import InputSpec

    torch.manual_seed(0)
    model = caswit_geo.build_model("caswit-nano", num_classes=4, img_size=TILE)
    return caswit_geo.save_checkpoint(model, path, input_spec=InputSpec(tile_size=TILE, gsd=gsd))


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the served folder's files with single byte ranges (what GDAL's /vsicurl/ asks)."""

    root: Path

    def log_message(self, *args) -> None:  # quiet
        pass

    def _target(self) -> Path | None:
        path = (self.root / self.path.lstrip("/")).resolve()
        return path if path.is_file() and self.root in path.parents else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self._target()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, b = rng[6:].split("-", 1)
            start, end = int(a), min(int(b) if b else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            with open(path, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = type("Handler", (RangeHandler,), {"root": folder.resolve()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


# ---------------------------------------------------------------------------
# Measurements (each in its own interpreter)
# ---------------------------------------------------------------------------


class TreeRss:
    """Peak memory of this process and its descendants (proportional set size: pages shared by forked
    readers counted once), sampled every 20 ms."""

    def __init__(self) -> None:
        self.start = self.peak = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return out

    def sample(self) -> int:
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            except (OSError, StopIteration):
                continue
            todo += self._children(pid)
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> float:
        """Growth in MB over the start."""
        self._stop.set()
        self._thread.join()
        return (self.peak - self.start) / 2**20


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure_decode(args: dict) -> dict:
    """Every block of every file read once, one process, no extra GDAL threads."""
    import rasterio

    t0, c0 = time.perf_counter(), cpu_seconds()
    pixels = 0
    with rasterio.Env(GDAL_NUM_THREADS=1, GDAL_CACHEMAX=64 * 2**20):
        for path in args["inputs"]:
            with rasterio.open(path) as src:
                bh, bw = src.block_shapes[0]
                # whole block rows at once: a codestream tile larger than the window is decoded once
                for r in range(0, src.height, bh):
                    for c in range(0, src.width, max(bw, 4096)):
                        w = rasterio.windows.Window(c, r, min(max(bw, 4096), src.width - c), min(bh, src.height - r))
                        src.read(window=w)
                pixels += src.width * src.height
    return dict(wall_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - c0, mpx=pixels / 1e6)


def measure_read(args: dict) -> dict:
    """predict's unit runner with a model loop that only drains the batches."""
    import dataclasses

    import torch

    from caswit_geo.engine.predict import units as units_module
    from caswit_geo.engine.predict.config import PredictConfig
    from caswit_geo.engine.predict.job import Job
    from caswit_geo.engine.predict.plan import plan_predict
    from caswit_geo.engine.predict.source import InputBuffers, model_inputs
    from caswit_geo.runtime.device import CpuThreads

    work = Path(args["work"])
    config = PredictConfig(inputs=[str(p) for p in args["inputs"]], out=work / "out.tif", weights=args["weights"],
                           resample=args.get("resample", False), workers=args["workers"],
                           batch_size=args["batch_size"], progress=False, overwrite=True)
    plan = plan_predict(config)
    if args.get("context") == "none":
        plan.context = "none"
    if args.get("url"):
        plan.mosaic = dataclasses.replace(plan.mosaic, source=args["url"])
    counted = {"tiles": 0}

    def drain(model, batches, workers, sink_thread, device, *rest):
        # the model's inputs made as predict's model loop makes them (on the CPU here, with its threads), not run
        with CpuThreads(device, workers) as threads:
            threads.update(int(rest[-1]))  # the pre-pass busy: a core left to it
            # as the model loop does on the CPU; on a GPU the inputs are made on the device, in no host buffer
            buffers = None if args.get("gpu_host") else InputBuffers()
            for batch in batches:
                model_inputs(batch, plan.spec, device, buffers)
                counted["tiles"] += len(batch.index)

    units_module._model_loop = drain
    job_dir = Path(tempfile.mkdtemp(dir=work))
    for sub in ("units", "lowres", "log"):
        (job_dir / sub).mkdir()
    job = Job(job_dir, {})
    if args.get("gpu_host"):  # the run's process set up as predict sets it up when the model is on a GPU
        units_module.release_large_buffers()
    rss = TreeRss() if args.get("memory") else None
    t0, c0 = time.perf_counter(), cpu_seconds()
    units_module.run_units(plan, job, plan.units, None, torch.device("cpu"), batch_size=args["batch_size"],
                           workers=args["workers"])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return dict(wall_s=wall, cpu_s=cpu, tiles=counted["tiles"], rss_growth_mb=rss.stop() if rss else None,
                mpx=plan.mosaic.width * plan.mosaic.height / 1e6)


def measure_minimal(args: dict) -> dict:
    """A minimal reader loop: each 512 px tile read by rasterio from the mosaic, no context, one process."""
    import rasterio
    import torch
    from rasterio.windows import Window

    from caswit_geo.geo.mosaic import open_mosaic

    mosaic = open_mosaic([Path(p) for p in args["inputs"]], (1, 2, 3))
    rss = TreeRss() if args.get("memory") else None
    t0, c0 = time.perf_counter(), cpu_seconds()
    n = 0
    with rasterio.Env(GDAL_CACHEMAX=32 * 2**20), rasterio.open(mosaic.source) as src:
        for r in range(0, src.height, TILE):
            for c in range(0, src.width, TILE):
                x = src.read(window=Window(c, r, TILE, TILE), boundless=True, fill_value=0)
                torch.from_numpy(x).float().div_(255)
                n += 1
    return dict(wall_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - c0, tiles=n, rss_growth_mb=rss.stop() if rss else None,
                mpx=mosaic.width * mosaic.height / 1e6)


MEASURES = {"decode": measure_decode, "read": measure_read, "minimal": measure_minimal}


def run_child(kind: str, repeats: int, **args) -> dict:
    """``kind`` measured ``repeats`` times, each in a fresh interpreter: min and median of each figure; its
    memory growth in one more run, and for predict's reading one more with the run's process set up as on
    a GPU (``kind`` "decode" samples none)."""
    runs = []
    sampled_runs = {"decode": [], "read": [{}, {"gpu_host": True}]}.get(kind, [{}])
    for memory, extra in [(False, {})] * repeats + [(True, e) for e in sampled_runs]:
        child = json.dumps({"kind": kind, **args, **extra, "memory": memory}, default=str)
        proc = subprocess.run([sys.executable, __file__, "--child", child], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} {args}: {proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    sampled = runs[repeats:]
    runs = runs[:repeats]
    out = dict(runs[0])
    if sampled:
        out["rss_growth_mb"] = sampled[0]["rss_growth_mb"]
        out["rss_growth_gpu_host_mb"] = sampled[-1]["rss_growth_mb"]
    out["cores"] = statistics.median(r["cpu_s"] / r["wall_s"] for r in runs)  # each run's own ratio
    for key in ("wall_s", "cpu_s"):
        if key in out:
            values = [r[key] for r in runs]
            out[key], out[key + "_median"] = min(values), statistics.median(values)
    return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def goal(name: str, measured: float, limit: float, at_least: bool = False, detail: str = "") -> str:
    met = measured >= limit if at_least else measured <= limit
    sign = ">=" if at_least else "<="
    return f"GOAL {name}: {measured:.2f} (goal {sign} {limit}) {'met' if met else 'NOT met'}{'; ' + detail if detail else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2048 px files (a 4096 px mosaic), workers 1 and 2")
    ap.add_argument("--file-size", type=int, default=None, help="px per file (the mosaic is 2 x 2 files)")
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resample-gsd", type=float, default=0.25,
                    help="the model's GSD of the --resample runs (m; the files are 0.2 m)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the generated files (default: a temporary one)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        args = json.loads(a.child)
        print(json.dumps(MEASURES[args.pop("kind")](args)))
        return
    file_size = a.file_size or (2048 if a.quick else 4096)
    workers = a.workers or ([1, 2] if a.quick else [1, 2, 4])
    repeats = a.repeats or (2 if a.quick else 3)
    print(cpu_line())
    print(f"mosaic: 2 x 2 files of {file_size} px ({2 * file_size} px, {(2 * file_size // TILE) ** 2} tiles of "
          f"{TILE} px, LR context x2); batch {a.batch_size}; timings min (median) of {repeats} runs")
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        inputs = make_inputs(work, file_size)
        weights = make_checkpoint(work / "nano.safetensors", GSD)
        # --resample: 0.2 m read at 0.25 m (by default)
        coarse = make_checkpoint(work / f"nano-{a.resample_gsd:g}.safetensors", a.resample_gsd)
        print(f"inputs written in {time.perf_counter() - t0:.0f} s")
        server, port = serve(work / "http")
        url = f"/vsicurl/http://127.0.0.1:{port}/mosaic.tif"
        common = dict(work=str(work), weights=str(weights), batch_size=a.batch_size)

        decode, read = {}, {}
        print(f"\n{'format':10} {'workers':>7} {'tiles/s':>16} {'CPU s/Mpx':>16} {'x decode':>9} {'cores':>6} "
              f"{'mem +MB':>8} {'as GPU':>7}")
        for fmt in a.formats:
            files = inputs["cog" if fmt == "http-cog" else fmt] if fmt != "http-cog" else inputs["http-cog"]
            decode[fmt] = run_child("decode", repeats, inputs=[str(p) for p in files])
            d = decode[fmt]
            print(f"{fmt:10} {'decode':>7} {d['mpx'] / d['wall_s']:>9.1f} Mpx/s {d['cpu_s'] / d['mpx']:>16.4f}")
            for n in workers:
                extra = dict(url=url) if fmt == "http-cog" else {}
                src = inputs["http-cog"] if fmt == "http-cog" else files
                r = read[fmt, n] = run_child("read", repeats, inputs=[str(p) for p in src], workers=n, **common, **extra)
                rate, rate_med = r["tiles"] / r["wall_s"], r["tiles"] / r["wall_s_median"]
                print(f"{fmt:10} {n:>7} {rate:>7.1f} ({rate_med:>6.1f}) {r['cpu_s'] / r['mpx']:>16.4f} "
                      f"{r['cpu_s'] / d['cpu_s']:>9.2f} {r['cores']:>6.2f} {r['rss_growth_mb']:>8.0f} "
                      f"{r['rss_growth_gpu_host_mb']:>7.0f}")

        lines = []
        if "jp2-4" in a.formats and "gtiff" in a.formats and 2 in workers:
            extra_cpu = read["jp2-4", 2]["cpu_s"] - read["gtiff", 2]["cpu_s"]
            one_decode = decode["jp2-4"]["cpu_s"] - decode["gtiff"]["cpu_s"]
            lines.append(goal("JP2 reading with 2 workers, in full decodes of the files", extra_cpu / one_decode, 1.3,
                              detail=f"{extra_cpu:.1f} CPU-s beyond GeoTIFF against {one_decode:.1f} for one decode"))
        if 1 in workers and 2 in workers:
            for fmt in ("jp2-4", "gtiff"):
                if fmt in a.formats:
                    speedup = read[fmt, 1]["wall_s"] / read[fmt, 2]["wall_s"]
                    # the 1-worker run already keeps its pre-pass thread, reader and model loop busy together
                    busy, cores = read[fmt, 1]["cores"], os.cpu_count() or 1
                    lines.append(goal(f"{fmt} reader 2 workers vs 1 (speed-up)", speedup, 1.7, at_least=True,
                                      detail=f"the 1-worker run keeps {busy:.2f} of {cores} cores busy: at most "
                                             f"{cores / busy:.2f}x here"))
        if "jp2-4" in a.formats and "gtiff" in a.formats:
            n = 2 if 2 in workers else workers[0]
            res = {fmt: run_child("read", repeats, inputs=[str(p) for p in inputs[fmt]], workers=n, resample=True,
                                  **dict(common, weights=str(coarse))) for fmt in ("jp2-4", "gtiff")}
            lines.append(goal(f"--resample JP2 / GeoTIFF reading time ({n} workers)",
                              res["jp2-4"]["wall_s"] / res["gtiff"]["wall_s"], 2.0,
                              detail=f"{res['jp2-4']['wall_s']:.2f} s against {res['gtiff']['wall_s']:.2f} s"))
            # what the ratio is made of: the JPEG 2000 decoding beyond GeoTIFF's, in full decodes of the files
            extra_cpu = res["jp2-4"]["cpu_s"] - res["gtiff"]["cpu_s"]
            one_decode = decode["jp2-4"]["cpu_s"] - decode["gtiff"]["cpu_s"]
            lines.append(f"     --resample JP2 beyond GeoTIFF, in full decodes of the files: "
                         f"{extra_cpu / one_decode:.2f} ({extra_cpu:.1f} CPU-s against {one_decode:.1f})")
        if "gtiff" in a.formats:
            one = dict(common, batch_size=1, inputs=[str(p) for p in inputs["gtiff"]], workers=0)
            ctx = run_child("read", repeats, **one)
            no_ctx = run_child("read", repeats, context="none", **one)
            minimal = run_child("minimal", repeats, inputs=one["inputs"])
            lines.append(goal("one process, batch 1: with LR context / without", ctx["wall_s"] / no_ctx["wall_s"], 1.1,
                              detail=f"{ctx['wall_s']:.2f} s against {no_ctx['wall_s']:.2f} s"))
            lines.append(goal("one process, batch 1: with LR context / minimal rasterio tile loop",
                              ctx["wall_s"] / minimal["wall_s"], 1.1,
                              detail=f"{ctx['wall_s']:.2f} s against {minimal['wall_s']:.2f} s"))
            lines.append(goal("one process, batch 1: memory growth of a run with LR context (MB)", ctx["rss_growth_mb"], 300))
            growth = max(r["rss_growth_mb"] for r in [ctx, *read.values()])
            lines.append(goal("memory growth of the process tree during a run (MB, worst run, model on the CPU)",
                              growth, 300))
            growth = max(r["rss_growth_gpu_host_mb"] for r in [ctx, *read.values()])
            lines.append(goal("memory growth of the process tree during a run (MB, worst run, set up as for a GPU)",
                              growth, 300))
        server.shutdown()
        print()
        print("\n".join(lines))


if __name__ == "__main__":
    main()
