"""GPU throughput of CASWiT: tiles/s and km2/h by model, batch, precision, layout and torch.compile.

    python benchmarks/gpu_throughput.py [--device cuda:0] [--budget 420] [--mosaic 16384]
                                        [--decoders upernet segformer]

On a machine without CUDA it prints one line and exits 0. Otherwise, on
random weights and inputs at 512 px (0.2 m, so a tile covers 0.0105 km2),
with each decoder of ``--decoders`` (both by default):

1. eager forward passes of caswit-tiny and caswit-base, batch 1..32, fp32
   and bf16 (fp16 where the GPU has no bf16), prepared as predict runs them
   (``prepare_inference``: fused window attention, decoder channels_last
   under bf16/fp16); at batch 16 also the other decoder layout, and the model
   as built (no fused window attention);
2. torch.compile of each model in that precision at batch 16: compile time,
   tiles/s, and whether its class maps agree with eager;
3. the stage-1 cross-attention (16,384 x 16,384 tokens) through each SDPA
   backend, to check the one PyTorch picks;
4. ``predict`` of a 16384 x 16384 px mosaic with caswit-tiny (the first
   decoder of ``--decoders``), from a GeoTIFF and (``--jp2``) from the same
   pixels as JPEG 2000 (IGN's BD ORTHO layout: lossy 4:1, 1024 px codestream
   tiles, 5 resolutions): wall time, and GPU busy time over wall time from
   CUDA events around every forward pass (a GPU starved by reading, the LR
   pre-pass or writing shows < 100 %).

Every row records peak GPU memory. Rows that would overrun ``--budget``
seconds are skipped (and listed as such), so the run ends in under 8 min.
One table is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

TILE = 512
GSD = 0.2  # m
KM2_PER_TILE = (TILE * GSD / 1000) ** 2
BATCHES = (1, 4, 8, 16, 32)
MODELS = ("caswit-tiny", "caswit-base")


@contextlib.contextmanager
def gpu_timer(events: list):
    """Bracket the work issued inside with CUDA events (appended to ``events`` as (start, end))."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    yield
    end.record()
    events.append((start, end))


def busy_seconds(events: list) -> float:
    import torch

    torch.cuda.synchronize()
    return sum(s.elapsed_time(e) for s, e in events) / 1000


class Table:
    COLUMNS = ("run", "model", "decoder", "precision", "layout", "compile", "batch", "tiles/s", "km2/h", "ms/tile",
               "peak GiB", "GPU busy", "note")

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, *row) -> None:
        row = tuple("" if v is None else v for v in row)
        self.rows.append(row)
        print("  " + " | ".join(str(v) for v in row), file=sys.stderr, flush=True)  # progress

    def print(self) -> None:
        def fmt(v):
            return f"{v:,.1f}" if isinstance(v, float) else str(v)

        cells = [self.COLUMNS] + [tuple(fmt(v) for v in r) for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.COLUMNS))]
        for n, r in enumerate(cells):
            print("  ".join(c.rjust(w) if 6 <= i <= 11 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if n == 0:
                print("  ".join("-" * w for w in widths))


def throughput(model, precision, batch: int, device, seconds: float = 1.5) -> tuple[float, float, float]:
    """(tiles/s, peak GiB, GPU busy fraction) of back-to-back forward passes."""
    import torch

    hr = torch.randn(batch, 3, TILE, TILE, device=device)
    lr = torch.randn(batch, 3, TILE, TILE, device=device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), precision.autocast():
        for _ in range(2):  # warm-up: cuDNN autotuning, allocator
            model(hr, lr)
        torch.cuda.synchronize(device)
        events, n, t0 = [], 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            with gpu_timer(events):
                model(hr, lr)
            n += 1
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    return n * batch / wall, torch.cuda.max_memory_allocated(device) / 2**30, busy_seconds(events) / wall


def write_mosaic(path: Path, side: int) -> None:
    """A side x side RGB GeoTIFF (0.2 m, EPSG:2154), smooth random fields, written in strips."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:2154",
                   transform=from_origin(650000, 6860000, GSD, GSD), tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, 1024):
            h = min(1024, side - r)
            coarse = rng.integers(20, 235, (3, h // 32 + 1, side // 32 + 1), dtype=np.uint8)
            block = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :h, :side]
            noise = rng.integers(0, 20, block.shape, dtype=np.uint8)
            dst.write(block + noise, window=Window(0, r, side, h))


def predict_run(side: int, device, table: Table, work: Path, decoder: str, jp2: bool = False) -> None:
    """predict of a side x side mosaic with caswit-tiny (auto precision), GPU busy time from CUDA events;
    with ``jp2`` also from a JPEG 2000 copy of it."""
    import caswit_geo
    from caswit_geo.core.spec import InputSpec

    weights = work / "caswit-tiny.safetensors"
    caswit_geo.save_checkpoint(caswit_geo.build_model("caswit-tiny", 19, decoder=decoder), weights,
                               input_spec=InputSpec(gsd=GSD))
    t0 = time.perf_counter()
    mosaic = work / "mosaic.tif"
    write_mosaic(mosaic, side)
    note = f"mosaic written in {time.perf_counter() - t0:.0f} s"
    sources = [(mosaic, "GeoTIFF")]
    if jp2:
        import rasterio.shutil

        rasterio.shutil.copy(mosaic, work / "mosaic.jp2", driver="JP2OpenJPEG", QUALITY=25, REVERSIBLE="NO",
                             RESOLUTIONS=5, BLOCKXSIZE=1024, BLOCKYSIZE=1024)
        sources.append((work / "mosaic.jp2", "JPEG 2000"))
    for source, kind in sources:
        _predict_row(source, kind, side, weights, device, table, work, decoder, note)


def _predict_row(mosaic: Path, kind: str, side: int, weights: Path, device, table: Table, work: Path, decoder: str,
                 note: str) -> None:
    import torch

    from caswit_geo.engine.predict import PredictConfig, predict

    # time every forward pass, wherever the engine calls it from
    events: list = []
    patched = []
    for module in [m for name, m in sys.modules.items() if name.startswith("caswit_geo") and m is not None]:
        real = getattr(module, "predict_probabilities", None)
        if callable(real):
            def timed(*args, _real=real, **kwargs):
                with gpu_timer(events):
                    return _real(*args, **kwargs)
            setattr(module, "predict_probabilities", timed)
            patched.append((module, real))
    torch.cuda.reset_peak_memory_stats(device)
    try:
        res = predict(PredictConfig(inputs=[mosaic], out=work / "landcover.tif", weights=weights, device=str(device),
                                    batch_size=16, progress=False, overwrite=True))
    finally:
        for module, real in patched:
            setattr(module, "predict_probabilities", real)
    busy = busy_seconds(events)
    tiles = res.tiles_run / res.seconds
    precision = res.precision.split(" ")[0]
    layout = "NCHW" if precision == "fp32" else "channels_last"
    table.add("predict", "caswit-tiny", decoder, precision, layout, "off", 16, tiles,
              tiles * KM2_PER_TILE * 3600, 1000 / tiles, torch.cuda.max_memory_allocated(device) / 2**30,
              f"{100 * busy / res.seconds:.0f} %",
              f"{side}x{side} px in {res.seconds:.1f} s, tile loop {res.phases.get('tiles', 0):.1f} s (GPU busy "
              f"{100 * busy / max(res.phases.get('tiles', 0), 1e-9):.0f} % of it), model {res.forward_seconds:.1f} s; "
              f"from {kind}, {os.cpu_count()} CPU cores; {note}")


def sdpa_rows(device, dtype, table: Table) -> None:
    """Stage-1 cross-attention of a batch of 16 through each SDPA backend."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, heads, tokens, dim = 16, 3, (TILE // 4) ** 2, 32  # caswit-tiny stage 1
    q, k, v = (torch.randn(b, heads, tokens, dim, device=device, dtype=dtype) for _ in range(3))
    name = str(dtype).replace("torch.", "")
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize(device)
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < 0.5 or n < 3:
                    F.scaled_dot_product_attention(q, k, v)
                    n += 1
                torch.cuda.synchronize(device)
            ms = (time.perf_counter() - t0) / n * 1000
            table.add("stage-1 SDPA", "caswit-tiny", "", name, "", "off", b, b / ms * 1000, None, ms / b, None, None,
                      backend.name.lower())
        except RuntimeError as e:
            table.add("stage-1 SDPA", "caswit-tiny", "", name, "", "off", b, None, None, None, None, None,
                      f"{backend.name.lower()}: unavailable ({str(e).splitlines()[0][:60]})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget", type=float, default=420, help="seconds; rows that would overrun it are skipped")
    p.add_argument("--mosaic", type=int, default=16384, help="side of the predicted mosaic in px (0: no predict)")
    p.add_argument("--decoders", nargs="+", choices=("upernet", "segformer"), default=["upernet", "segformer"])
    p.add_argument("--jp2", action="store_true", help="also predict the mosaic from a JPEG 2000 copy")
    a = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device on this machine, nothing measured")
        return
    import copy

    import caswit_geo
    from caswit_geo.runtime.precision import Precision, prepare_inference, resolve_precision

    start = time.perf_counter()
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    table = Table()
    reduced = resolve_precision("auto", device).name  # bf16, or fp16 on GPUs without it
    left = lambda: a.budget - (time.perf_counter() - start)  # noqa: E731
    predict_reserve = 150 if a.mosaic else 0  # seconds kept for the mosaic predict

    for name, decoder in [(n, d) for n in MODELS for d in a.decoders]:
        torch.manual_seed(0)
        built = caswit_geo.build_model(name, num_classes=19, img_size=TILE, decoder=decoder).eval().to(device)
        models = {  # fused window attention; decoder layouts; the model as built
            "NCHW": prepare_inference(copy.deepcopy(built), Precision("fp32", "cuda", "benchmark")),
            "channels_last": prepare_inference(copy.deepcopy(built), Precision(reduced, "cuda", "benchmark")),
            "as built": built,
        }
        for prec in ("fp32", reduced):
            precision = Precision(prec, "cuda", "benchmark")
            used = "channels_last" if precision.mixed else "NCHW"  # what predict runs
            other = "NCHW" if precision.mixed else "channels_last"
            runs = [(used, b) for b in BATCHES] + [(other, 16), ("as built", 16)]
            for layout, batch in runs:
                if left() < predict_reserve + 20:
                    table.add("forward", name, decoder, prec, layout, "off", batch, None, None, None, None, None,
                              "skipped (time)")
                    continue
                try:
                    tiles, peak, busy = throughput(models[layout], precision, batch, device)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    table.add("forward", name, decoder, prec, layout, "off", batch, None, None, None, None, None,
                              "out of memory")
                    continue
                note = "trial" if (layout, batch) in ((other, 16), ("as built", 16)) else None
                table.add("forward", name, decoder, prec, layout, "off", batch, tiles, tiles * KM2_PER_TILE * 3600,
                          1000 / tiles, peak, f"{100 * busy:.0f} %", note)

        # torch.compile at batch 16 in the reduced precision
        precision = Precision(reduced, "cuda", "benchmark")
        if left() < predict_reserve + 90:
            table.add("forward", name, decoder, reduced, "channels_last", "on", 16, None, None, None, None, None,
                      "skipped (time)")
        else:
            model = models["channels_last"]
            compiled = torch.compile(model)
            x = torch.randn(16, 3, TILE, TILE, device=device)
            t0 = time.perf_counter()
            with torch.inference_mode(), precision.autocast():
                out, ref = compiled(x, x), model(x, x)
            torch.cuda.synchronize(device)
            compile_s = time.perf_counter() - t0
            agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
            finite = bool(torch.isfinite(out).all())
            tiles, peak, busy = throughput(compiled, precision, 16, device)
            table.add("forward", name, decoder, reduced, "channels_last", "on", 16, tiles, tiles * KM2_PER_TILE * 3600,
                      1000 / tiles, peak, f"{100 * busy:.0f} %",
                      f"compile {compile_s:.0f} s, maps = eager on {100 * agree:.1f} %" + ("" if finite else ", NaN"))
        del models, built
        torch.cuda.empty_cache()

    sdpa_rows(device, precision.dtype, table)
    if a.mosaic:
        with tempfile.TemporaryDirectory() as work:
            predict_run(a.mosaic, device, table, Path(work), a.decoders[0], jp2=a.jp2)
    print(f"\n{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {TILE} px tiles at {GSD} m "
          f"({KM2_PER_TILE:.4f} km2), {time.perf_counter() - start:.0f} s in all")
    table.print()


if __name__ == "__main__":
    main()
