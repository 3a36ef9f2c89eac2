"""Plain helpers shared by the test modules: GeoTIFF writers, small data roots, miniature configs, CLI runners.

Test modules import from here (and from the harness modules beside them),
never from one another; fixtures shared by several modules live in
``conftest.py`` files. ``tests/test_architecture.py`` checks the first rule.

torch and caswit_geo's models are imported inside the functions that need
them, so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from caswit_geo.core.spec import ClassInfo, ClassTable

# -- GeoTIFF writers -----------------------------------------------------------------------------------

X0, Y0 = 650_000.0, 6_860_000.0  # upper-left corner of most test rasters, Lambert-93 metres
GSD = 0.2  # ground sampling distance of most test rasters, metres


def write_geotiff(path, data, *, transform=None, crs=None, nodata=None, alpha=False, mask=None, **profile) -> Path:
    """Write ``data`` (bands, rows, cols), or (rows, cols) for one band, as a GeoTIFF at ``path``; return it.

    ``transform`` and ``crs`` left out: a raster in pixel coordinates. ``alpha``: the bands are
    tagged red, green, blue, alpha (as many as there are). ``mask``: an internal dataset mask,
    True where valid. ``profile``: any other creation setting (tiled, blockxsize, compress, dtype...).
    Missing parent folders are created.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    options = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, nodata=nodata)
    if crs is not None:
        options["crs"] = crs
    if transform is not None:
        options["transform"] = transform
    options.update(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an internal mask rather than a .msk sidecar: the test sees one file per raster
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # no CRS is what such a test wants
        with rasterio.open(path, "w", **options) as dst:
            dst.write(data)
            if alpha:
                dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha][:count]
            if mask is not None:
                dst.write_mask(np.asarray(mask).astype(np.uint8) * 255)
    return path


def grid_transform(col: int = 0, row: int = 0, *, res: float = GSD, x0: float = X0, y0: float = Y0) -> Affine:
    """North-up transform of a raster whose first pixel is pixel (row, col) of a ``res`` m grid cornered at (x0, y0)."""
    return Affine(res, 0, x0 + col * res, 0, -res, y0 - row * res)


def write_on_grid(path, data, *, col=0, row=0, res=GSD, x0=X0, y0=Y0, crs="EPSG:2154", **kw) -> Path:
    """``write_geotiff`` with ``data`` placed at pixel (row, col) of a ``res`` m grid (``grid_transform``).

    ``crs=None``: a raster in pixel coordinates (identity transform), whatever the placement.
    """
    transform = grid_transform(col, row, res=res, x0=x0, y0=y0) if crs else Affine.identity()
    return write_geotiff(path, data, transform=transform, crs=crs, **kw)


# -- predict: inputs, a checkpoint, runs ------------------------------------------------------------------

NANO_TILE = 128  # caswit-nano's tile size, px
PREDICT_CLASSES = ClassTable([ClassInfo(0, "building", (219, 14, 154)), ClassInfo(1, "water", (21, 83, 174)),
                              ClassInfo(2, "forest", (25, 74, 38)), ClassInfo(3, "field", (255, 243, 191))])


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(3, h, w) uint8 in 16 px blocks plus noise, so a random model sees structure; 1..255 (0 is left for nodata)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(1, 256, (3, h // 16 + 1, w // 16 + 1))
    big = np.kron(small, np.ones((1, 16, 16)))[:, :h, :w]
    return np.clip(big + rng.integers(-20, 20, (3, h, w)), 1, 255).astype(np.uint8)


def save_nano_checkpoint(path, classes: ClassTable, *, seed: int = 0, gsd: float = GSD, **metadata) -> Path:
    """An untrained caswit-nano checkpoint (weights drawn from ``seed``) for ``classes``, 128 px tiles."""
    import torch

    import caswit_geo
    from caswit_geo.core.spec import InputSpec

    torch.manual_seed(seed)
    model = caswit_geo.build_model("caswit-nano", num_classes=len(classes))
    return caswit_geo.save_checkpoint(model, path, classes=classes, input_spec=InputSpec(tile_size=NANO_TILE, gsd=gsd),
                                      **metadata)


def module_checkpoint(shared: dict, tmp_path_factory, classes: ClassTable, name: str = "nano.safetensors",
                      **kw) -> Iterator[None]:
    """Body of a module-scoped fixture: a caswit-nano checkpoint in ``shared["ckpt"]``, outside every case
    folder, while the module's tests run (``kw``: :func:`save_nano_checkpoint`'s)."""
    shared["ckpt"] = save_nano_checkpoint(tmp_path_factory.mktemp("checkpoint") / name, classes, **kw)
    yield
    shared.clear()


def run_predict(weights, inputs, out, **kw):
    """``predict`` in this process, without DataLoader workers or progress bar unless ``kw`` says otherwise."""
    from caswit_geo.engine.predict import PredictConfig, predict

    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return predict(PredictConfig(inputs=[str(i) for i in inputs], out=str(out), weights=str(weights), **kw))


def interrupt_forward_pass(monkeypatch, n: int):
    """Ctrl-C at predict's ``n``-th forward pass; returns (call counter, the real function)."""
    from caswit_geo.engine.predict import units

    calls = {"n": 0}
    real = units.predict_probabilities

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(units, "predict_probabilities", interrupted)
    return calls, real


# -- ``tiles`` data sets and training runs ---------------------------------------------------------------

TILES_CLASSES = 3  # classes of the data sets make_tiles_root writes


def stripes(size: int = NANO_TILE) -> np.ndarray:
    """Labels 0 | 1 on the left/right, class 2 below."""
    label = np.zeros((size, size), np.uint8)
    label[:, size // 3 :] = 1
    label[size // 2 :, :] = 2
    return label


def make_tiles_root(root: Path, labels: dict[str, np.ndarray], val: tuple[str, ...] = ("a",), seed: int = 0) -> Path:
    """A ``tiles`` dataset: 3-band uint8 GeoTIFFs (EPSG:2154, 0.2 m) whose colours follow the labels."""
    root = Path(root)
    for sub in ("images", "labels", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (name, label) in enumerate(labels.items()):
        image = np.stack([label * 80 + 20, 200 - label * 60, label * 30 + 50]).astype(np.float32)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        place = dict(crs="EPSG:2154", transform=from_origin(X0 + 1000 * i, Y0, GSD, GSD))
        write_geotiff(root / "images" / f"{name}.tif", image, **place)
        write_geotiff(root / "labels" / f"{name}.tif", label, **place)
    classes = [{"id": k, "name": f"class {k}", "color": [60 * k, 120, 200 - 50 * k]} for k in range(TILES_CLASSES)]
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    (root / "splits" / "train.txt").write_text("\n".join(labels))
    (root / "splits" / "val.txt").write_text("\n".join(val))
    return root


def nano_train_config(root: Path, out: Path, **kw):
    """A one-epoch caswit-nano ``TrainConfig`` on a ``tiles`` root: batches of 2, 2 crops per image."""
    from caswit_geo.engine.train.training import TrainConfig

    settings = dict(model="caswit-nano", dataset="tiles", root=root, out=out, epochs=1, batch_size=2, workers=0,
                    crops_per_image=2, progress=False)
    settings.update(kw)
    return TrainConfig(**settings)


def brute_force_miou(checkpoint: Path, root: Path, split: str) -> float:
    """mIoU of a checkpoint on a ``tiles`` split: per-pixel loops with np.add.at, classes absent from both skipped."""
    import torch

    import caswit_geo
    from caswit_geo.data import build_dataset

    model, meta = caswit_geo.load_checkpoint(checkpoint)
    dataset = build_dataset("tiles", root, split, meta.input_spec)
    n = len(meta.classes)
    cm = np.zeros((n, n), np.int64)
    with torch.no_grad():
        for i in range(len(dataset)):
            s = dataset[i]
            pred = model(s["hr"][None], s["lr"][None])[0].argmax(0).numpy().ravel()
            gt = s["label"].numpy().ravel()
            keep = gt != 255
            np.add.at(cm, (gt[keep], pred[keep]), 1)
    ious = []
    for c in range(n):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        if tp + fn + fp:
            ious.append(tp / (tp + fn + fp))
    return float(np.mean(ious))


# -- a generated FLAIR-HUB tree (the real naming, Lambert-93, patches on a grid) ----------------------------

FLAIRHUB_PATCH = 32  # patch size, px (0.2 m pixels: GSD)
FLAIRHUB_X0, FLAIRHUB_Y0 = 651_200.0, 6_862_400.0  # corner of patch (0, 0) of every zone
LAMBERT93 = CRS.from_epsg(2154)
# The same projection without the EPSG code, as some FLAIR files carry it.
LOCAL_L93 = CRS.from_proj4(
    "+proj=lcc +lat_0=46.5 +lon_0=3 +lat_1=49 +lat_2=44 +x_0=700000 +y_0=6600000 +ellps=GRS80 +units=m +no_defs"
)
# (zone, roi, row, col): D024047-2021 has a 3 x 6 block over two ROIs with a hole at (0, 3).
FLAIRHUB_PATCHES = [("D024047-2021", "AA-S1-V18", r, c) for r in range(3) for c in range(4) if (r, c) != (0, 3)]
FLAIRHUB_PATCHES += [("D024047-2021", "AB-S2-7", r, c) for r in range(3) for c in range(4, 6)]
# Another domain-year at the same place: never a neighbour of the first.
FLAIRHUB_PATCHES += [("D012-2019", "AF-S1-27", r, c) for r in range(2) for c in range(2)]
FLAIRHUB_GRID = {"D024047-2021": (3, 6), "D012-2019": (2, 2)}  # zone: (rows, cols) of patches


def flairhub_patch_id(zone: str, roi: str, r: int, c: int) -> str:
    return f"{zone}_{roi}_{c}-{r}"


def make_flairhub_tree(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write FLAIRHUB_PATCHES (RGBI image, COSIA labels) under ``root``.

    Returns {zone: (image mosaic (4, H, W), label mosaic (H, W))} with a one-patch black (255 for
    labels) margin around the zone's grid. Patch (1, 1) of D024047-2021 is 0.04 m off the grid
    (within tolerance); every other patch carries the CRS without its EPSG code.
    """
    P = FLAIRHUB_PATCH
    rng = np.random.default_rng(seed)
    mosaics = {}
    for zone, (rows, cols) in FLAIRHUB_GRID.items():
        img = np.zeros((4, (rows + 2) * P, (cols + 2) * P), np.uint8)
        lab = np.full(((rows + 2) * P, (cols + 2) * P), 255, np.uint8)
        mosaics[zone] = (img, lab)
    for n, (zone, roi, r, c) in enumerate(FLAIRHUB_PATCHES):
        img, lab = mosaics[zone]
        data = rng.integers(0, 256, (4, P, P), dtype=np.uint8)
        small = rng.integers(0, 19, (P // 8, P // 8))
        labels = np.kron(small, np.ones((8, 8), int)).astype(np.uint8)[None]
        sl = (slice((r + 1) * P, (r + 2) * P), slice((c + 1) * P, (c + 2) * P))
        img[(slice(None), *sl)] = data
        lab[sl] = labels[0]
        jitter = 0.04 if (zone, r, c) == ("D024047-2021", 1, 1) else 0.0  # within tolerance
        transform = from_origin(FLAIRHUB_X0 + c * P * GSD + jitter, FLAIRHUB_Y0 - r * P * GSD, GSD, GSD)
        crs = LOCAL_L93 if n % 2 else LAMBERT93
        stem = f"{roi}_{c}-{r}"
        write_geotiff(root / f"{zone}_AERIAL_RGBI" / roi / f"{zone}_AERIAL_RGBI_{stem}.tif", data,
                      transform=transform, crs=crs)
        write_geotiff(root / f"{zone}_AERIAL_LABEL-COSIA" / roi / f"{zone}_AERIAL_LABEL-COSIA_{stem}.tif", labels,
                      transform=transform, crs=crs)
    return mosaics


def write_flairhub_split_gpkg(root: Path, columns: list[str]) -> list[dict]:
    """GLOBAL_ALL_MTD/GLOBAL_ALL_MTD_SPLIT.gpkg: patches train, valid, test in turn in each of ``columns``."""
    import geopandas as gpd
    from shapely.geometry import box

    P = FLAIRHUB_PATCH
    rows = []
    for i, (zone, roi, r, c) in enumerate(FLAIRHUB_PATCHES):
        x, y = FLAIRHUB_X0 + c * P * GSD, FLAIRHUB_Y0 - r * P * GSD
        row = {"patch_id": flairhub_patch_id(zone, roi, r, c), "geometry": box(x, y - P * GSD, x + P * GSD, y)}
        for col in columns:
            row[col] = ("train", "valid", "test")[i % 3]
        rows.append(row)
    path = root / "GLOBAL_ALL_MTD" / "GLOBAL_ALL_MTD_SPLIT.gpkg"
    path.parent.mkdir(parents=True)
    gpd.GeoDataFrame(rows, crs="EPSG:2154").to_file(path, driver="GPKG")
    return rows


# -- the command line, in this process -----------------------------------------------------------------------


def cli_exit_code(*argv) -> int:
    """Exit code of ``caswit-geo ARGV`` run in this process (arguments converted with str)."""
    from caswit_geo.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``caswit-geo ARGV`` in this process: (exit code, stdout, stderr)."""
    from caswit_geo.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# -- QGIS styles -------------------------------------------------------------------------------------------


def qml_palette(path) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, label, RGB) of the paletted renderer of a ``.qml`` file, in file order."""
    import xml.etree.ElementTree as ET

    renderer = ET.parse(path).getroot().find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted", path
    return [(int(e.get("value")), e.get("label"), tuple(int(e.get("color")[i : i + 2], 16) for i in (1, 3, 5)))
            for e in renderer.iter("paletteEntry")]


def colour_table_classes(path, classes: ClassTable) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, RGB) of ``classes`` with the colours read from the GeoTIFF's own colour table."""
    with rasterio.open(path) as src:
        cmap = src.colormap(1)
    return [(c.id, c.name, tuple(cmap[c.id][:3])) for c in classes.classes]


# -- vector labels: a mosaic of two GeoTIFFs, label polygons and labelled areas ------------------------------

VECTOR_NAMES = ("building", "field", "water")  # sorted: ids 0, 1, 2; "field" is the background
VECTOR_COLOURS = {0: (200, 40, 40), 1: (60, 170, 60), 2: (30, 60, 200)}


def vector_label_polygons(size: tuple[int, int], seed: int = 0):
    """Polygons over a ``size`` (rows, cols) px scene at (X0, Y0), GSD m: [(geometry in EPSG:2154, class name)].

    Rectangles of buildings and water, one water body with an island (a hole), and buildings that
    overlap it (the later one wins).
    """
    from shapely.geometry import Polygon, box

    h, w = size
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(h * w // 3000):
        r, c = rng.integers(0, h - 10), rng.integers(0, w - 10)
        dh, dw = rng.integers(8, 40, 2)
        name = ("building", "water")[int(rng.integers(0, 2))]
        out.append((box(X0 + c * GSD, Y0 - (r + dh) * GSD, X0 + (c + dw) * GSD, Y0 - r * GSD), name))
    cx, cy = X0 + w * GSD / 2, Y0 - h * GSD / 2
    shell = [(cx - 12, cy - 9), (cx + 12, cy - 9), (cx + 12, cy + 9), (cx - 12, cy + 9)]
    hole = [(cx - 4, cy - 3), (cx + 4, cy - 3), (cx + 4.5, cy + 3), (cx - 4, cy + 3)]
    out.append((Polygon(shell, [hole]), "water"))
    out.append((box(cx + 8, cy - 2, cx + 16, cy + 5), "building"))  # overlaps the water: burnt over it
    return out


def write_vector_scene(root: Path, size: tuple[int, int] = (384, 512), seed: int = 0, background: bool = True) -> dict:
    """Two side-by-side GeoTIFFs (one mosaic) whose colours follow the polygons, labels.gpkg (field
    ``kind``, a third of the polygons written in EPSG:4326 as a second file labels_4326.gpkg with the same
    order), areas.gpkg (field ``split``: train left, val middle, test right). Returns paths and the label raster.
    """
    import geopandas as gpd
    from rasterio.features import rasterize
    from shapely.geometry import box

    root = Path(root)
    h, w = size
    polys = vector_label_polygons(size, seed)
    ids = {n: i for i, n in enumerate(VECTOR_NAMES)}
    transform = from_origin(X0, Y0, GSD, GSD)
    label = rasterize([(g, ids[n]) for g, n in polys], out_shape=(h, w), transform=transform,
                      fill=ids["field"] if background else 255, dtype="uint8")
    rng = np.random.default_rng(seed)
    image = np.zeros((3, h, w), np.float32)
    for k, colour in VECTOR_COLOURS.items():
        image[:, label == k] = np.asarray(colour, np.float32)[:, None]
    image = np.clip(image + rng.normal(0, 10, image.shape), 1, 255).astype(np.uint8)
    half = w // 2
    write_geotiff(root / "images" / "west.tif", image[:, :, :half], transform=transform, crs="EPSG:2154")
    write_geotiff(root / "images" / "east.tif", image[:, :, half:], transform=from_origin(X0 + half * GSD, Y0, GSD, GSD),
                  crs="EPSG:2154")
    frame = gpd.GeoDataFrame({"kind": [n for _, n in polys]}, geometry=[g for g, _ in polys], crs="EPSG:2154")
    frame.to_file(root / "labels.gpkg", driver="GPKG")
    frame.to_crs("EPSG:4326").to_file(root / "labels_4326.gpkg", driver="GPKG")
    x1, x2 = X0 + 0.55 * w * GSD, X0 + 0.75 * w * GSD
    areas = gpd.GeoDataFrame(
        {"split": ["train", "val", "test"]},
        geometry=[box(X0, Y0 - h * GSD, x1, Y0), box(x1, Y0 - h * GSD, x2, Y0), box(x2, Y0 - h * GSD, X0 + w * GSD, Y0)],
        crs="EPSG:2154",
    )
    areas.to_file(root / "areas.gpkg", driver="GPKG")
    return {"images": root / "images", "labels": root / "labels.gpkg", "areas": root / "areas.gpkg",
            "labels_4326": root / "labels_4326.gpkg", "label": label, "polygons": polys, "transform": transform}


# -- predict jobs for the hostile suites -------------------------------------------------------------

_NANO_BYTES: dict[int, bytes] = {}


def nano_checkpoint(folder: Path, name: str = "nano.safetensors", seed: int = 0) -> Path:
    """A caswit-nano checkpoint of PREDICT_CLASSES (built once per seed, copied into ``folder``)."""
    if seed not in _NANO_BYTES:
        tmp = save_nano_checkpoint(folder / f".build-{seed}.safetensors", PREDICT_CLASSES, seed=seed)
        _NANO_BYTES[seed] = tmp.read_bytes()
        tmp.unlink()
    path = folder / name
    path.write_bytes(_NANO_BYTES[seed])
    return path


def predict_inputs(folder: Path) -> None:
    """``in.tif`` (256 x 384 px RGB on the test grid) and ``nano.safetensors`` in ``folder``."""
    write_on_grid(folder / "in.tif", rgb_image(256, 384, seed=3))
    nano_checkpoint(folder)


def interrupted_job(folder: Path, **kw) -> None:
    """An interrupted job to ``map.tif``: half of its units done (share 0 of 2), nothing at the destination."""
    predict_inputs(folder)
    run_predict(folder / "nano.safetensors", [folder / "in.tif"], folder / "map.tif", unit_size=NANO_TILE,
                shard=(0, 2), **kw)
    assert not (folder / "map.tif").exists() and (folder / ".map.tif.caswit-job").is_dir()


# -- STAC documents ------------------------------------------------------------------------------------------

GEOTIFF = "image/tiff; application=geotiff; profile=cloud-optimized"


def stac_item(item_id: str, assets: dict[str, tuple[str, str | None, list[str]]], epsg: int | None = 2154) -> dict:
    """A STAC Item (as JSON) whose ``assets`` are ``{key: (href, media type, roles)}``."""
    properties = {"datetime": "2024-05-01T10:00:00Z", **({"proj:epsg": epsg} if epsg else {})}
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [], "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [[[6.0, 46.0], [6.1, 46.0], [6.1, 46.1], [6.0, 46.1], [6.0, 46.0]]]},
        "bbox": [6.0, 46.0, 6.1, 46.1], "properties": properties, "links": [],
        "assets": {k: {"href": href, **({"type": media} if media else {}), "roles": roles}
                   for k, (href, media, roles) in assets.items()},
    }


def stac_collection(*items: dict) -> dict:
    """A FeatureCollection of STAC Items (a saved search)."""
    return {"type": "FeatureCollection", "features": list(items)}
