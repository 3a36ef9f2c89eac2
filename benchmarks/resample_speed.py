"""Benchmark of ``--resample``'s resampling (geo/resampled.py) against GDAL's warper on the same pixels.

For a few pixel-size ratios, one 0.2 m RGB raster in memory is resampled to
an output grid of ``--size`` px a side, by our reader (the values of any
window are those of the whole) and by ``rasterio.warp.reproject`` (GDAL's
warper, 'average' when shrinking, 'bilinear' when enlarging), one thread
each. Prints ns per output pixel, the ratio of the two, and how many values
differ and by how much: GDAL's warper weighs the last row and column of an
average, and the first of a bilinear, differently, and where a bilinear
value is an exact half the float rounding of the pixel positions decides.

    python benchmarks/resample_speed.py [--size 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's package, run as a script

NATIVE = 0.2


def cpu_line() -> str:
    """The CPU model and its bf16/AMX flags (as every benchmark prints them)."""
    from model_speed import cpu_description, describe_cpu

    return describe_cpu(cpu_description())


def best_of(repeats: int, fn) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="output px a side")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import rasterio
    from affine import Affine
    from rasterio.io import MemoryFile
    from rasterio.warp import Resampling, reproject

    from caswit_geo.geo.resampled import ResampledReader

    print(cpu_line())
    print(f"output {a.size} x {a.size} px, RGB uint8, one thread each; min of {a.repeats} runs\n")
    print(f"{'ratio':>6} {'kernel':>9} {'ours ns/px':>11} {'GDAL ns/px':>11} {'ours/GDAL':>10} "
          f"{'values differ':>14} {'by':>3}")
    rng = np.random.default_rng(0)
    for res in (0.25, 0.5, 0.15):
        native = int(np.ceil(a.size * res / NATIVE)) + 1
        small = rng.integers(0, 256, (3, native // 16 + 1, native // 16 + 1))
        data = (np.kron(small, np.ones((1, 16, 16)))[:, :native, :native]
                + rng.integers(0, 32, (3, native, native))).clip(0, 255).astype(np.uint8)
        src_t = Affine(NATIVE, 0, 0.0, 0, -NATIVE, 0.0)
        dst_t = Affine(res, 0, 0.0, 0, -res, 0.0)
        alg = Resampling.average if res > NATIVE else Resampling.bilinear
        profile = dict(driver="GTiff", width=native, height=native, count=3, dtype="uint8", crs="EPSG:2154",
                       transform=src_t, tiled=True, blockxsize=512, blockysize=512)
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(data)
            with mem.open() as src, rasterio.Env(GDAL_NUM_THREADS="1"):
                reader = ResampledReader(src, a.size, a.size, dst_t)
                ours_s, ours = best_of(a.repeats, lambda: reader.read([1, 2, 3]))

                def gdal():
                    out = np.zeros((3, a.size, a.size), np.uint8)
                    reproject(rasterio.band(src, [1, 2, 3]), out, src_transform=src_t, src_crs=src.crs,
                              dst_transform=dst_t, dst_crs=src.crs, resampling=alg, num_threads=1)
                    return out

                gdal_s, ref = best_of(a.repeats, gdal)
        n = a.size * a.size
        print(f"{res / NATIVE:>6.2f} {alg.name:>9} {ours_s / n * 1e9:>11.1f} {gdal_s / n * 1e9:>11.1f} "
              f"{ours_s / gdal_s:>10.2f} {int((ours != ref).sum()):>14} {int(np.abs(ours.astype(int) - ref).max()):>3}")


if __name__ == "__main__":
    main()
