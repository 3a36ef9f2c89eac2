"""Tiles per second with LR context: the vector dataset against the tiles dataset, on the same imagery.

One mosaic (tiled DEFLATE GeoTIFF, RGB uint8) with its label raster for the
``tiles`` dataset and the same labels as polygons (one per 32 px cell of a
random class map, merged by class into multipolygons with holes, plus
overlapping rectangles) for the ``vector`` dataset, with train areas over the
whole imagery. Both read random T x T tiles with their kT context, in one
process, in alternating chunks of 10 (the same number of tiles each); a DataLoader
with W workers reads about W times as fast on W free cores. Prints the CPU
model and its bf16/AMX flags, each rate and the ratio (goal: vector at most
1.5x slower), the rate one H100 trains caswit-base at (estimated: FLOPs of a
training tile counted by torch's FlopCounterMode, at an assumed 40 % of the
GPU's bf16 peak) and the workers each dataset needs to keep up, and a memory
measure: the RSS the polygons and their STRtree add, per polygon.

    python benchmarks/vector_dataset.py                  # 4096 px mosaic, T 512, k 2, 200 tiles
    python benchmarks/vector_dataset.py --size 8192 --tiles 400
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_line() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f") if f in flags]
    return f"CPU: {model}; flags: {', '.join(wanted) or 'no bf16/AMX'}"


def make_data(folder: Path, size: int, seed: int = 0):
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from rasterio.transform import from_origin
    from shapely.geometry import box, shape

    rng = np.random.default_rng(seed)
    transform = from_origin(650_000, 6_860_000, 0.2, 0.2)
    cells = rng.integers(0, 6, (size // 32, size // 32)).astype(np.uint8)
    label = np.kron(cells, np.ones((32, 32), np.uint8))
    image = (np.stack([label * 40, 250 - label * 40, label * 20]) + rng.integers(0, 10, (3, size, size))).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, crs="EPSG:2154", transform=transform, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate")
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    with rasterio.open(folder / "images" / "m.tif", "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / "labels" / "m.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(label[None])
    polys = [(shape(g), int(v)) for g, v in shapes(label, transform=transform)]
    frame = gpd.GeoDataFrame({"cls": [f"c{v}" for _, v in polys]}, geometry=[g for g, _ in polys], crs="EPSG:2154")
    frame.to_file(folder / "labels.gpkg")
    classes = [{"id": i, "name": f"c{i}", "color": [40 * i, 100, 100]} for i in range(6)]
    (folder / "classes.json").write_text(json.dumps({"classes": classes}))
    b = rasterio.transform.array_bounds(size, size, transform)
    gpd.GeoDataFrame({"split": ["train"]}, geometry=[box(*b)], crs="EPSG:2154").to_file(
        folder / "areas.gpkg")
    return len(frame)


def rates(datasets: list, count: int, chunk: int = 10) -> list[float]:
    """Tiles/s of each dataset, read in alternating chunks so that a shared machine's load weighs on all alike."""
    for dataset in datasets:
        dataset[0]  # open the handles
    spent = [0.0] * len(datasets)
    for first in range(0, count, chunk):
        for n, dataset in enumerate(datasets):
            start = time.perf_counter()
            for i in range(first, min(first + chunk, count)):
                dataset[i % len(dataset)]
            spent[n] += time.perf_counter() - start
    return [count / s for s in spent]


def polygon_memory(count: int) -> float:
    """Bytes of RSS per polygon held with its STRtree (10-vertex polygons, the index built)."""
    import shapely

    from caswit_geo.geo.polygon_raster import PolygonIndex

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1e5, (count, 2))
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], 1) * 5
    coords = xy[:, None, :] + ring[None]
    geoms = shapely.polygons(coords)
    index = PolygonIndex(geoms, np.zeros(count, np.uint8))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(index) == count
    return (after - before) * 1024 / count


H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's figure for the H100 SXM without sparsity
MFU = 0.4  # an assumed share of that peak for Swin training (windowed attention, small matmuls)


def base_step_flops(tile: int) -> float:
    """FLOPs of one caswit-base training tile (forward and backward, auxiliary LR head), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from caswit_geo.model.build import build_model

    with torch.device("meta"):
        model = build_model("caswit-base", num_classes=19, img_size=tile)
    model.train()
    x = torch.randn(2, 3, tile, tile, device="meta")  # 2: BatchNorm needs more than one value per channel
    with FlopCounterMode(display=False) as counter:
        out = model(x, x)
        sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--polygons", type=int, default=200_000, help="for the memory measure")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    from caswit_geo.core.spec import InputSpec
    from caswit_geo.data import build_dataset
    from caswit_geo.data.vector import VectorDataset, VectorSource, load_vector_data

    print(cpu_line())
    spec = InputSpec(tile_size=args.tile, context_factor=2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_polygons = make_data(folder, args.size)
        tiles = build_dataset("tiles", folder, None, spec, random_crops=True, crops_per_image=args.tiles)
        start = time.perf_counter()
        source = VectorSource(images=(str(folder / "images"),), labels=folder / "labels.gpkg", class_field="cls",
                              areas=folder / "areas.gpkg", classes=folder / "classes.json")
        data = load_vector_data(source, spec.bands, args.tile, 2)
        vector = VectorDataset(data, "train", spec, random_crops=True, samples=args.tiles)
        setup = time.perf_counter() - start
        t_rate, v_rate = rates([tiles, vector], args.tiles)
    print(f"mosaic {args.size} px, T {args.tile}, k 2, {n_polygons:,} label polygons (vector setup {setup:.1f} s)")
    print(f"tiles dataset : {t_rate:7.1f} tiles/s per process")
    print(f"vector dataset: {v_rate:7.1f} tiles/s per process")
    print(f"vector is {t_rate / v_rate:.2f}x slower (goal <= 1.5)")
    flops = base_step_flops(args.tile)
    need = H100_BF16_DENSE * MFU / flops
    print(f"caswit-base training: {flops / 1e12:.2f} TFLOP per {args.tile} px tile (forward + backward, LR head); "
          f"one H100 at {MFU:.0%} of its bf16 peak trains about {need:.0f} tiles/s")
    print(f"DataLoader workers to keep up: tiles dataset {need / t_rate:.1f}, vector dataset {need / v_rate:.1f} "
          "(one core each, at this CPU's per-core rate)")
    per = polygon_memory(args.polygons)
    print(f"memory: {per:.0f} B per 10-vertex polygon with its STRtree -> about {per * 1e6 / 2**30:.2f} GiB for 1 M")


if __name__ == "__main__":
    main()
