"""Tiles per second with LR context: the vector dataset against the tiles dataset, on the same imagery.

One mosaic (tiled DEFLATE GeoTIFF, RGB uint8) with its label raster for the
``tiles`` dataset and the same labels as polygons for the ``vector`` dataset
(one polygon per connected patch of a random class map of 32 px cells, with
holes, plus later rectangles that overlap them; the label raster is
``rasterio.features.rasterize`` of that layer, checked against the vector
dataset's labels on a few windows), with train areas over the whole imagery.

* One process, interleaved: chunks of random T x T tiles with their kT
  context from one dataset then the other (the order swapped every repeat),
  so that a shared machine's load weighs on both alike; min and median of
  the chunks' ms per tile, and the ratio of the medians (goal: vector at
  most 1.5x slower).
* A DataLoader (batches of 4, as training) with 1 and 2 workers, per dataset,
  interleaved too: tiles/s and tiles/s per worker.
* The rate one H100 trains caswit-base at, estimated: FLOPs of a training
  tile (forward and backward, auxiliary LR head, 512 px) counted by torch's
  FlopCounterMode on the meta device, against the H100 SXM's dense bf16
  peak at an assumed utilisation (``--mfu``); the DataLoader workers (one core
  each) that rate needs from each dataset.
* Memory: the RSS that polygons, their STRtree and their edges add, per
  10-vertex polygon, measured in a fresh process.

Above the figures: the CPU model, its core count and its bf16/AMX flags.

    python benchmarks/vector_dataset.py                  # 4096 px mosaic, T 512, k 2; about 1-2 minutes
    python benchmarks/vector_dataset.py --size 8192 --tiles 400
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL = 1.5  # vector dataset at most this much slower than the tiles dataset
H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's figure for the H100 SXM, without sparsity
MFU = 0.4  # an assumed share of that peak for Swin training (windowed attention, many small matmuls)


def cpu_line() -> str:
    """The CPU model and its bf16/AMX flags (as every benchmark prints them)."""
    from model_speed import cpu_description, describe_cpu

    return describe_cpu(cpu_description())


def make_data(folder: Path, size: int, seed: int = 0) -> tuple[int, int]:
    """Imagery, label raster, label polygons, classes and areas under ``folder``: (polygons, overlapping rectangles)."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize, shapes
    from rasterio.transform import from_origin
    from shapely.geometry import box, shape

    rng = np.random.default_rng(seed)
    transform = from_origin(650_000, 6_860_000, 0.2, 0.2)
    cells = rng.integers(0, 6, (size // 32, size // 32)).astype(np.uint8)
    label = np.kron(cells, np.ones((32, 32), np.uint8))
    polys = [(shape(g), int(v)) for g, v in shapes(label, transform=transform)]
    # later rectangles over the patches (a building, a road layer drawn over land use): the later one wins
    n_rects = (size // 256) ** 2
    for _ in range(n_rects):
        x, y = rng.uniform(0, size - 200, 2)
        w, h = rng.uniform(20, 200, 2)
        polys.append((box(*(transform @ (x, y + h)), *(transform @ (x + w, y))), int(rng.integers(0, 6))))
    label = rasterize(polys, out_shape=(size, size), transform=transform, fill=255, dtype="uint8")
    image = (np.stack([label * 40, 250 - label * 40, label * 20]) + rng.integers(0, 10, (3, size, size))).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, crs="EPSG:2154", transform=transform, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate")
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    with rasterio.open(folder / "images" / "m.tif", "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / "labels" / "m.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(label[None])
    frame = gpd.GeoDataFrame({"cls": [f"c{v}" for _, v in polys]}, geometry=[g for g, _ in polys], crs="EPSG:2154")
    frame.to_file(folder / "labels.gpkg")
    classes = [{"id": i, "name": f"c{i}", "color": [40 * i, 100, 100]} for i in range(6)]
    (folder / "classes.json").write_text(json.dumps({"classes": classes}))
    b = rasterio.transform.array_bounds(size, size, transform)
    gpd.GeoDataFrame({"split": ["train"]}, geometry=[box(*b)], crs="EPSG:2154").to_file(folder / "areas.gpkg")
    return len(frame), n_rects


def check_same_labels(vector, label_path: Path, tile: int, count: int = 5) -> None:
    """The vector dataset's HR labels equal the label raster's on a few windows (the two read the same labels)."""
    import rasterio

    with rasterio.open(label_path) as src:
        for i in range(count):
            window = vector.window(i)
            expected = src.read(1, window=window)
            got, _ = vector.labels(window)
            if not np.array_equal(got, expected):
                raise SystemExit(f"labels differ at {window}: the benchmark compares different data")


def interleaved(datasets: dict, tiles: int, repeats: int) -> tuple[dict, dict]:
    """Wall and CPU seconds per tile of each chunk ({name: [...]}, twice): ``repeats`` chunks a dataset, order swapped.

    CPU time counts this process only: less sensitive than wall time to other processes on a shared machine.
    """
    for dataset in datasets.values():
        dataset[0]  # open the handles
    chunk = max(tiles // repeats, 1)
    wall = {name: [] for name in datasets}
    cpu = {name: [] for name in datasets}
    names = list(datasets)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            dataset = datasets[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(chunk):
                dataset[i % len(dataset)]
            wall[name].append((time.perf_counter() - start) / chunk)
            cpu[name].append((time.process_time() - start_cpu) / chunk)
    return wall, cpu


def loader_rates(datasets: dict, workers: list[int], tiles: int, batch: int, repeats: int) -> dict:
    """{(name, workers): tiles/s of each repeat} of a DataLoader, after its first batch (the workers' start)."""
    import torch

    out = {}
    names = list(datasets)
    for r in range(repeats):
        for w in workers:
            for name in names if r % 2 == 0 else names[::-1]:
                loader = torch.utils.data.DataLoader(datasets[name], batch_size=batch, num_workers=w, shuffle=True,
                                                     drop_last=True)
                it = iter(loader)
                next(it)
                start, n = time.perf_counter(), 0
                for _ in range(tiles // batch):
                    n += len(next(it)["hr"])
                out.setdefault((name, w), []).append(n / (time.perf_counter() - start))
                del it, loader
    return out


def polygon_memory(count: int) -> tuple[float, float]:
    """(bytes of RSS held, bytes of peak RSS) per 10-vertex polygon with its STRtree and edges, in this process."""
    import shapely

    from caswit_geo.geo.polygon_raster import PolygonIndex

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], 1) * 5
    before, peak_before = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    geoms = shapely.polygons(rng.uniform(0, 1e5, (count, 1, 2)) + ring[None])
    index = PolygonIndex(geoms, np.zeros(count, np.uint8))
    held = rss() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - max(peak_before, before)
    assert len(index) == count
    return held / count, max(peak, held) / count


def base_step_flops(tile: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one caswit-base training tile (auxiliary LR head), on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from caswit_geo.model.build import build_model

    with torch.device("meta"):
        model = build_model("caswit-base", num_classes=19, img_size=tile)
    model.train()
    x = torch.randn(2, 3, tile, tile, device="meta")  # 2: BatchNorm needs more than one value per channel
    with FlopCounterMode(display=False) as counter:
        out = model(x, x)
        forward = counter.get_total_flops()
        sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    return forward / 2, counter.get_total_flops() / 2


def fmt(rates: list[float]) -> str:
    return f"median {statistics.median(rates):6.1f}, best {max(rates):6.1f} tiles/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tiles", type=int, default=400, help="tiles per dataset in one process (all repeats)")
    parser.add_argument("--repeats", type=int, default=20, help="chunks per dataset in one process")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts")
    parser.add_argument("--loader-tiles", type=int, default=96, help="tiles per DataLoader run")
    parser.add_argument("--loader-repeats", type=int, default=2)
    parser.add_argument("--mfu", type=float, default=MFU, help="assumed share of the H100's bf16 peak in training")
    parser.add_argument("--polygons", type=int, default=200_000, help="for the memory measure")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(polygon_memory(args.polygons)))
        return

    import torch

    torch.manual_seed(0)
    from caswit_geo.core.spec import InputSpec
    from caswit_geo.data import build_dataset
    from caswit_geo.data.vector import VectorDataset, VectorSource, load_vector_data, summary_line

    print(cpu_line())
    spec = InputSpec(tile_size=args.tile, context_factor=2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_polygons, n_rects = make_data(folder, args.size)
        tiles = build_dataset("tiles", folder, None, spec, random_crops=True, crops_per_image=args.tiles)
        start = time.perf_counter()
        source = VectorSource(images=(str(folder / "images"),), labels=folder / "labels.gpkg", class_field="cls",
                              areas=folder / "areas.gpkg", classes=folder / "classes.json")
        data = load_vector_data(source, spec.bands, args.tile, 2)
        vector = VectorDataset(data, "train", spec, random_crops=True, samples=args.tiles)
        setup = time.perf_counter() - start
        check_same_labels(vector, folder / "labels" / "m.tif", args.tile)
        datasets = {"tiles": tiles, "vector": vector}
        spent, cpu = interleaved(datasets, args.tiles, args.repeats)
        loaders = loader_rates(datasets, args.workers, args.loader_tiles, 4, args.loader_repeats)
    print(f"mosaic {args.size} px, T {args.tile}, k 2; {summary_line(data)} "
          f"({n_rects} rectangles drawn over the patches); vector setup {setup:.1f} s")
    print(f"one process, {args.repeats} interleaved chunks of {max(args.tiles // args.repeats, 1)} tiles each:")
    for name, times in spent.items():
        ms = [1e3 * t for t in times]
        print(f"  {name:6} dataset: {statistics.median(ms):5.1f} ms per tile median, {min(ms):5.1f} min "
              f"-> {1e3 / statistics.median(ms):5.1f} tiles/s median, {1e3 / min(ms):5.1f} best")
    ratio = statistics.median(spent["vector"]) / statistics.median(spent["tiles"])
    best = min(spent["vector"]) / min(spent["tiles"])
    cpu_ratio = statistics.median(cpu["vector"]) / statistics.median(cpu["tiles"])
    print(f"  vector / tiles: {ratio:.2f}x the time per tile (ratio of medians; {best:.2f}x of the minima; "
          f"{cpu_ratio:.2f}x in this process's CPU time, medians {1e3 * statistics.median(cpu['vector']):.1f} "
          f"and {1e3 * statistics.median(cpu['tiles']):.1f} ms)")
    print(f"DataLoader, batches of 4, {args.loader_tiles} tiles after the first batch, median of "
          f"{args.loader_repeats} (this machine has {os.cpu_count()} cores, shared):")
    for w in args.workers:
        t, v = loaders[("tiles", w)], loaders[("vector", w)]
        print(f"  {w} worker(s): tiles {fmt(t)}; vector {fmt(v)}; per worker (core): tiles "
              f"{statistics.median(t) / w:.1f}, vector {statistics.median(v) / w:.1f} tiles/s; "
              f"ratio {statistics.median(t) / statistics.median(v):.2f}x")
    forward, step = base_step_flops(args.tile)
    need = H100_BF16_DENSE * args.mfu / step
    print(f"caswit-base training tile ({args.tile} px, LR context, auxiliary head): {forward / 1e12:.2f} TFLOP forward, "
          f"{step / 1e12:.2f} TFLOP forward + backward (torch FlopCounterMode)")
    print(f"  one H100 SXM ({H100_BF16_DENSE / 1e12:.0f} TFLOP/s dense bf16) at {args.mfu:.0%} of its peak: about "
          f"{need:.0f} tiles/s ({H100_BF16_DENSE * 0.3 / step:.0f} at 30 %, {H100_BF16_DENSE * 0.5 / step:.0f} at 50 %); "
          "an estimate, not a measurement")
    alone = {name: 1 / statistics.median(spent[name]) for name in datasets}
    print(f"  workers to feed it (one core each): from the one-process rates, tiles dataset "
          f"{need / alone['tiles']:.1f}, vector dataset {need / alone['vector']:.1f}; from the DataLoader's "
          "per-worker rates (batches collated and handed over too), "
          + ", ".join(f"{w} worker(s): tiles {need * w / statistics.median(loaders[('tiles', w)]):.1f}, "
                      f"vector {need * w / statistics.median(loaders[('vector', w)]):.1f}" for w in args.workers))
    proc = subprocess.run([sys.executable, __file__, "--memory-only", "--polygons", str(args.polygons)],
                          capture_output=True, text=True, check=True)
    held, peak = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"memory ({args.polygons:,} 10-vertex polygons, fresh process): {held:.0f} B per polygon held with its "
          f"STRtree and edges ({peak:.0f} B peak while indexing) -> about {held * 1e6 / 2**30:.2f} GiB for 1 M")
    print(f"goal <= {GOAL}x: measured {ratio:.2f}x (one process, ratio of medians): {'met' if ratio <= GOAL else 'not met'}")


if __name__ == "__main__":
    main()
