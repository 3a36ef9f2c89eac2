"""Benchmark of predict over a region (--roi, --bbox) against the whole mosaic, in one run.

Reports, on a generated mosaic (default 4096 x 4096 px at 0.2 m, caswit-nano
with random weights: speed does not depend on the weights):

(a) the whole mosaic: wall time, tiles run;
(b) a polygon region given in EPSG:4326 (a disc of about a tenth of the
    mosaic): wall time, tiles run against the tiles meeting it (counted
    here by brute force on rasterio's rasterize), and that its map equals
    the whole map inside it;
(c) a box off the tile grid and the same box moved onto it: forward passes
    over the tiles meeting the box. Units of work start on the output's own
    block grid, so a box off the tile grid has tiles on unit borders that
    two units run.

Usage::

    python benchmarks/region_predict.py                 # 4096 px
    python benchmarks/region_predict.py --size 2048     # a quick run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

X0, Y0, GSD, TILE = 650_000.0, 6_860_000.0, 0.2, 128


def cpu_line() -> str:
    """The CPU model and its bf16/AMX flags (as every benchmark prints them)."""
    from model_speed import cpu_description, describe_cpu

    return describe_cpu(cpu_description())


def make_inputs(folder: Path, size: int) -> tuple[Path, Path]:
    import rasterio
    import torch

    import caswit_geo
    from caswit_geo.core.spec import ClassInfo, ClassTable, InputSpec

    rng = np.random.default_rng(0)
    small = rng.integers(1, 256, (3, size // 16, size // 16))
    data = np.kron(small, np.ones((1, 16, 16))).astype(np.uint8)
    image = folder / "ortho.tif"
    with rasterio.open(image, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:2154",
                       transform=rasterio.Affine(GSD, 0, X0, 0, -GSD, Y0), tiled=True, blockxsize=256,
                       blockysize=256) as dst:
        dst.write(data)
    torch.manual_seed(0)
    classes = ClassTable([ClassInfo(i, f"c{i}", (40 * i, 80, 120)) for i in range(4)])
    model = caswit_geo.build_model("caswit-nano", num_classes=4)
    weights = caswit_geo.save_checkpoint(model, folder / "nano.safetensors", classes=classes,
                                         input_spec=InputSpec(tile_size=TILE, gsd=GSD))
    return image, weights


def run(weights: Path, image: Path, out: Path, **kw):
    from caswit_geo.engine.predict import PredictConfig, predict

    t0 = time.perf_counter()
    res = predict(PredictConfig(inputs=[str(image)], out=str(out), weights=str(weights), progress=False,
                                overwrite=True, **kw))
    return res, time.perf_counter() - t0


def tiles_meeting(mask: np.ndarray) -> int:
    h, w = mask.shape
    return int(sum(mask[r : r + TILE, c : c + TILE].any() for r in range(0, h, TILE) for c in range(0, w, TILE)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.features import rasterize

    print(cpu_line())
    size, side = args.size, args.size * GSD
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, weights = make_inputs(folder, size)
        whole, t_whole = run(weights, image, folder / "whole.tif")
        print(f"(a) whole mosaic {size} x {size} px: {t_whole:.1f} s, {whole.tiles_run:,} tiles run")

        disc = shapely.Point(X0 + 0.43 * side, Y0 - 0.57 * side).buffer(0.18 * side)
        roi = folder / "roi.gpkg"
        gpd.GeoDataFrame(geometry=[disc], crs="EPSG:2154").to_crs("EPSG:4326").to_file(roi)
        region, t_region = run(weights, image, folder / "region.tif", roi=str(roi))
        transform = rasterio.Affine(GSD, 0, X0, 0, -GSD, Y0)
        reference = gpd.read_file(roi).to_crs("EPSG:2154").geometry[0]
        mask = rasterize([(reference, 1)], out_shape=(size, size), transform=transform, fill=0, dtype="uint8") > 0
        with rasterio.open(folder / "whole.tif") as a, rasterio.open(folder / "region.tif") as b:
            c, r = (round(v) for v in ~transform * (b.transform.c, b.transform.f))
            got, ref = b.read(1), a.read(1)[r : r + b.height, c : c + b.width]
            inside = mask[r : r + b.height, c : c + b.width]
            equal = bool(np.array_equal(got[inside], ref[inside]))
        print(f"(b) a disc given in EPSG:4326, {region.region_km2:.3f} km2 ({mask.mean():.1%} of the mosaic): "
              f"{t_region:.1f} s ({t_region / t_whole:.2f} x the whole), {region.tiles_run:,} forward passes for "
              f"{tiles_meeting(mask):,} tiles meeting it; map equal to the whole map inside: {equal}")

        for name, shift in (("off the tile grid", 37.3), ("on the tile grid", 0.0)):
            x0 = X0 + 2 * TILE * GSD + shift * GSD
            y1 = Y0 - 2 * TILE * GSD - shift * GSD
            box = (x0, y1 - 0.5 * side, x0 + 0.5 * side, y1)
            res, seconds = run(weights, image, folder / "box.tif", bbox=",".join(map(str, box)))
            mask = rasterize([(shapely.box(*box), 1)], out_shape=(size, size), transform=transform, fill=0,
                             dtype="uint8") > 0
            meeting = tiles_meeting(mask)
            print(f"(c) a box {name}: {seconds:.1f} s, {res.tiles_run:,} forward passes for {meeting:,} tiles "
                  f"meeting it ({res.tiles_run / meeting:.2f} x), {res.units} units")


if __name__ == "__main__":
    main()
