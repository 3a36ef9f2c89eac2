"""eval end to end (random caswit-nano weights) and --pred/--ref against hand-computed cases."""

import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

import caswit_geo
from caswit_geo.core.errors import InputError
from caswit_geo.core.spec import ClassInfo, ClassTable, InputSpec, flairhub_classes, urur_classes
from caswit_geo.engine.evaluate.evaluation import EvalConfig, evaluate, evaluate_rasters
from caswit_geo.engine.evaluate.metrics import BoundaryStats
from caswit_geo.model.checkpoint import read_meta
from tests.helpers import colour_table_classes, qml_palette, run_cli, write_geotiff

T = 64
CLASSES = ClassTable([ClassInfo(0, "building", (200, 0, 0)), ClassInfo(1, "road", (90, 90, 90)), ClassInfo(2, "trees", (0, 120, 0))])
IMAGES = {
    "east": (150, 90, CRS.from_epsg(32631), from_origin(500_000, 5_000_000, 0.5, 0.5)),
    "west": (64, 64, CRS.from_epsg(2154), from_origin(650_000, 6_860_000, 0.2, 0.2)),
}


def checkpoint(path, num_classes, classes, tile):
    model = caswit_geo.build_model("caswit-nano", num_classes=num_classes, img_size=tile)
    return caswit_geo.save_checkpoint(model, path, classes=classes, input_spec=InputSpec(tile_size=tile))


@pytest.fixture(scope="module")
def tiles_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    for name, (w, h, crs, transform) in IMAGES.items():
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256]).astype(np.uint8)
        lab = ((xx // 20 + yy // 15) % 3).astype(np.uint8)
        lab[rng.random((h, w)) < 0.05] = 255
        write_geotiff(root / "images" / f"{name}.tif", img, crs=crs, transform=transform)
        write_geotiff(root / "labels" / f"{name}.tif", lab[None], crs=crs, transform=transform)
    (root / "classes.json").write_text(json.dumps(CLASSES.to_dict() | {"weights": None}))
    (root / "splits").mkdir()
    (root / "splits" / "test.txt").write_text("east\nwest\n")
    ckpt = checkpoint(root.parent / f"{root.name}-nano.safetensors", 3, CLASSES, T)
    return root, ckpt


def brute(pairs, ids):
    """Per-class TP/FP/FN with boolean masks over (label, pred) pixel arrays; mean over classes present."""
    iou, f1, correct, total = {}, {}, 0, 0
    for c in ids:
        tp = fp = fn = 0
        for lab, pred in pairs:
            ok = np.isin(lab, ids) & np.isin(pred, ids)
            tp += np.sum(ok & (lab == c) & (pred == c))
            fp += np.sum(ok & (lab != c) & (pred == c))
            fn += np.sum(ok & (lab == c) & (pred != c))
        if tp + fp + fn:
            iou[c], f1[c] = tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)
    for lab, pred in pairs:
        ok = np.isin(lab, ids) & np.isin(pred, ids)
        correct += np.sum(ok & (lab == pred))
        total += ok.sum()
    return iou, f1, correct / total


def test_eval_cli_tiles_end_to_end(tiles_root, tmp_path, capsys):
    root, ckpt = tiles_root
    out, preds = tmp_path / "report", tmp_path / "preds"
    code, stdout, stderr = run_cli(
        ["eval", "--dataset", "tiles", "--root", str(root), "--weights", str(ckpt), "--device", "cpu",
         "--workers", "0", "--batch-size", "3", "--out-dir", str(out), "--save-predictions", str(preds), "--no-progress"],
        capsys,
    )
    assert code == 0, stderr
    assert "mIoU" in stdout and "building" in stdout
    report = json.loads((out / "report.json").read_text())
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    rows = (out / "confusion_matrix.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[1:] == ["building", "road", "trees"]
    matrix = np.array([[int(v) for v in r.split(",")[1:]] for r in rows[1:]])

    pairs, boundary = [], BoundaryStats(3)
    for name, (w, h, crs, transform) in IMAGES.items():
        with rasterio.open(preds / f"{name}.tif") as p, rasterio.open(root / "labels" / f"{name}.tif") as lab_src:
            assert (p.width, p.height, p.crs, p.transform) == (w, h, crs, transform)
            assert p.dtypes[0] == "uint8" and p.nodata == 255 and p.colormap(1)[1][:3] == (90, 90, 90)
            pred, lab = p.read(1), lab_src.read(1)
        assert pred.max() < 3
        # the QGIS style lists exactly the checkpoint's classes, in the colours of the colour table
        assert qml_palette(preds / f"{name}.qml") == colour_table_classes(preds / f"{name}.tif", read_meta(ckpt).classes)
        pairs.append((lab, pred))
        # bIoU per T x T tile, edges padded with 255 as the dataset does
        hp, wp = -(-h // T) * T, -(-w // T) * T
        lab_pad = np.pad(lab, ((0, hp - h), (0, wp - w)), constant_values=255)
        pred_pad = np.pad(pred, ((0, hp - h), (0, wp - w)), constant_values=255)
        for r in range(0, hp, T):
            for c in range(0, wp, T):
                boundary.update(lab_pad[r : r + T, c : c + T], pred_pad[r : r + T, c : c + T])
    iou, f1, oa = brute(pairs, [0, 1, 2])
    assert report["metrics"]["mIoU"] == pytest.approx(np.mean(list(iou.values())))
    assert report["metrics"]["mF1"] == pytest.approx(np.mean(list(f1.values())))
    assert report["metrics"]["OA"] == pytest.approx(oa)
    biou = boundary.iou()
    assert report["metrics"]["mBIoU"] == pytest.approx(np.nanmean(biou))
    for row in report["classes"]:
        assert row["iou"] == pytest.approx(iou[row["id"]])
    labelled = sum(int(np.sum(lab != 255)) for lab, _ in pairs)
    assert matrix.sum() == labelled == report["evaluated_pixels"]
    assert report["samples"] == 3 * 2 + 1 and report["boundary"]["dilation_px"] == 2
    assert report["precision"] == "fp32" and report["precision_reason"].startswith("auto: ")
    assert "precision fp32 (auto: " in stdout
    # the report is not overwritten without --overwrite
    code, _, stderr = run_cli(["eval", "--dataset", "tiles", "--root", str(root), "--weights", str(ckpt),
                               "--device", "cpu", "--workers", "0", "--out-dir", str(out)], capsys)
    assert code == 1 and "report.json: exists (pass --overwrite" in stderr and len(stderr.strip().splitlines()) == 1


def test_eval_flairhub_engine_per_patch(tmp_path):
    """2 x 2 patches of 32 px: one prediction file per patch; the FLAIR protocol over 19 classes."""
    p, gsd = 32, 0.2
    rng = np.random.default_rng(1)
    labels = {}
    for r in range(2):
        for c in range(2):
            t = from_origin(650_000 + c * p * gsd, 6_860_000 - r * p * gsd, gsd, gsd)
            stem = f"AA-S1-V18_{r}-{c}"
            lab = np.kron(rng.integers(0, 19, (4, 4)), np.ones((8, 8), int)).astype(np.uint8)
            write_geotiff(tmp_path / "D024047-2021_AERIAL_RGBI" / "AA-S1-V18" / f"D024047-2021_AERIAL_RGBI_{stem}.tif",
                          rng.integers(0, 256, (4, p, p), dtype=np.uint8), crs=CRS.from_epsg(2154), transform=t)
            write_geotiff(
                tmp_path / "D024047-2021_AERIAL_LABEL-COSIA" / "AA-S1-V18" / f"D024047-2021_AERIAL_LABEL-COSIA_{stem}.tif",
                lab[None], crs=CRS.from_epsg(2154), transform=t)
            labels[f"D024047-2021_AA-S1-V18_{r}-{c}"] = (lab, t)
    ckpt = checkpoint(tmp_path / "nano.safetensors", 19, flairhub_classes(), p)
    res = evaluate(EvalConfig("flairhub", tmp_path, ckpt, split="all", device="cpu", workers=0, batch_size=3,
                              out_dir=tmp_path / "out", save_predictions=tmp_path / "preds", progress=False))
    pairs = []
    for pid, (lab, t) in labels.items():
        with rasterio.open(tmp_path / "preds" / f"{pid}.tif") as src:
            assert src.transform == t and src.crs == CRS.from_epsg(2154)
            pairs.append((lab, src.read(1)))
    iou, f1, oa = brute(pairs, list(range(15)))
    assert res.protocol == "flairhub" and len(res.per_class) == 15
    assert res.metrics["mIoU"] == pytest.approx(sum(iou.values()) / 15)  # absent classes count as 0
    assert res.metrics["mF1"] == pytest.approx(sum(f1.values()) / 15)
    assert res.metrics["OA"] == pytest.approx(oa)
    assert res.confusion.shape == (19, 19)


def test_eval_urur_saves_one_raster_per_image(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "test" / "image").mkdir(parents=True)
    (tmp_path / "test" / "label").mkdir(parents=True)
    lab = np.kron(rng.integers(0, 8, (6, 5)), np.ones((16, 16), int)).astype(np.uint8)  # 96 x 80
    Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(tmp_path / "test" / "image" / "a.png")
    Image.fromarray(lab, mode="L").save(tmp_path / "test" / "label" / "a.png")
    ckpt = checkpoint(tmp_path / "nano.safetensors", 8, urur_classes(), 32)
    res = evaluate(EvalConfig("urur", tmp_path, ckpt, device="cpu", workers=0, out_dir=tmp_path / "out",
                              save_predictions=tmp_path / "preds", progress=False))
    with rasterio.open(tmp_path / "preds" / "a.tif") as src:
        assert (src.width, src.height) == (80, 96)
        pred = src.read(1)
    iou, _, oa = brute([(lab, pred)], list(range(8)))
    assert res.metrics["mIoU"] == pytest.approx(np.mean(list(iou.values())))
    assert res.metrics["OA"] == pytest.approx(oa)
    assert res.report["samples"] == 3 * 3


def test_pred_ref_hand_computed(tmp_path, capsys):
    """6 x 6, d = 1: the class-1 block is predicted one column to the right (see test_metrics)."""
    ref = np.zeros((1, 6, 6), np.uint8)
    pred = np.zeros((1, 6, 6), np.uint8)
    ref[0, 2:4, 2:4] = 1
    pred[0, 2:4, 3:5] = 1
    crs, t = CRS.from_epsg(2154), from_origin(650_000, 6_860_000, 0.2, 0.2)
    write_geotiff(tmp_path / "ref.tif", ref, crs=crs, transform=t)
    write_geotiff(tmp_path / "pred.tif", pred, crs=crs, transform=t)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [{"id": 0, "name": "ground", "color": [0, 0, 0]},
                                                                   {"id": 1, "name": "roof", "color": [255, 0, 0]}]}))
    res = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif", classes=tmp_path / "classes.json", tile_size=6)
    # class 1: TP 2, FP 2, FN 2 -> IoU 2/6, F1 4/8; class 0: TP 30, FP 2, FN 2 -> IoU 30/34, F1 60/64
    assert res.per_class[1]["iou"] == pytest.approx(2 / 6) and res.per_class[0]["iou"] == pytest.approx(30 / 34)
    assert res.metrics["mF1"] == pytest.approx((0.5 + 60 / 64) / 2)
    assert res.metrics["OA"] == pytest.approx(32 / 36)
    assert res.metrics["mBIoU"] == pytest.approx((26 / 34 + 2 / 6) / 2)
    np.testing.assert_array_equal(res.confusion, [[30, 2], [2, 2]])
    code, stdout, _ = run_cli(["eval", "--pred", str(tmp_path / "pred.tif"), "--ref", str(tmp_path / "ref.tif"),
                               "--classes", str(tmp_path / "classes.json"), "--tile-size", "6",
                               "--out-dir", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 0 and "roof" in stdout and "33.33" in stdout
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]["OA"] == pytest.approx(32 / 36)


def test_pred_ref_without_classes_and_with_nodata(tmp_path):
    """No class table: the ids found; reference nodata (0 here) is ignored; pred 255 is 'unpredicted'."""
    crs, t = CRS.from_epsg(32631), from_origin(500_000, 5_000_000, 1, 1)
    ref = np.array([[[0, 1, 2, 2], [3, 3, 1, 1]]], np.uint8)  # 0 = nodata
    pred = np.array([[[2, 1, 2, 1], [3, 255, 1, 1]]], np.uint8)
    write_geotiff(tmp_path / "ref.tif", ref, crs=crs, transform=t, nodata=0)
    write_geotiff(tmp_path / "pred.tif", pred, crs=crs, transform=t, nodata=255)
    with pytest.raises(InputError, match=r"pred.tif: 1 of the 7 pixels the reference labels have no prediction"):
        evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif")  # a gap is an error by default
    res = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif", allow_gaps=True)
    assert res.confusion.shape == (4, 4) and res.report["unpredicted_pixels"] == 1
    assert res.report["coverage"] == pytest.approx(6 / 7)
    assert [r["id"] for r in res.per_class] == [0, 1, 2, 3]
    assert res.per_class[0]["iou"] is None  # class 0 never seen: skipped
    # by hand: class 3 has 2 reference pixels, one predicted 3, one left empty: IoU 1 / 2
    assert res.per_class[1]["iou"] == pytest.approx(3 / 4) and res.per_class[3]["iou"] == pytest.approx(1 / 2)
    assert res.per_class[3]["recall"] == pytest.approx(1 / 2) and res.per_class[3]["precision"] == 1.0
    assert res.metrics["OA"] == pytest.approx(5 / 7)  # 5 right of the 7 labelled pixels


@pytest.mark.parametrize(
    "change, message",
    [
        ("size", "pred.tif: 5x4 px, but the reference"),
        ("transform", "pred.tif: geotransform differs from the reference"),
        ("crs", "pred.tif: CRS EPSG:32631 differs"),
        ("bands", "pred.tif: a class raster has 1 band, found 2"),
        ("value", "pred.tif: value 7 on 1 px is not a class of --classes (ids 0..1, 255 = no data)"),
        ("missing", "pred.tif: prediction raster not found"),
        ("garbage", "pred.tif: not a readable raster"),
    ],
)
def test_pred_ref_errors_are_one_line(tmp_path, capsys, change, message):
    crs, t = CRS.from_epsg(2154), from_origin(650_000, 6_860_000, 0.2, 0.2)
    write_geotiff(tmp_path / "ref.tif", np.zeros((1, 4, 4), np.uint8), crs=crs, transform=t)
    data, pcrs, pt = np.zeros((1, 4, 4), np.uint8), crs, t
    if change == "size":
        data = np.zeros((1, 4, 5), np.uint8)
    elif change == "transform":
        pt = from_origin(650_000.2, 6_860_000, 0.2, 0.2)
    elif change == "crs":
        pcrs = CRS.from_epsg(32631)
    elif change == "bands":
        data = np.zeros((2, 4, 4), np.uint8)
    elif change == "value":
        data[0, 1, 1] = 7
    write_geotiff(tmp_path / "pred.tif", data, crs=pcrs, transform=pt)
    if change == "missing":
        (tmp_path / "pred.tif").unlink()
    elif change == "garbage":
        (tmp_path / "pred.tif").write_bytes(b"\x00" * 64)
    (tmp_path / "c.json").write_text(json.dumps({"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]},
                                                             {"id": 1, "name": "b", "color": [1, 1, 1]}]}))
    code, _, stderr = run_cli(["eval", "--pred", str(tmp_path / "pred.tif"), "--ref", str(tmp_path / "ref.tif"),
                               "--classes", str(tmp_path / "c.json"), "--no-progress"], capsys)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caswit-geo: error:") and message in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "tiles"], "--dataset and --root are required"),
        (["--dataset", "nope", "--root", "{root}", "--weights", "{ckpt}"], "unknown dataset 'nope'"),
        (["--dataset", "tiles", "--root", "{root}/missing", "--weights", "{ckpt}"], "missing: dataset folder not found"),
        (["--dataset", "tiles", "--root", "{root}", "--weights", "{root}/none.safetensors"], "none.safetensors"),
        (["--dataset", "urur", "--root", "{root}", "--weights", "{ckpt}"], "no URUR test images"),
        (["--pred", "{root}/x.tif"], "--pred and --ref go together"),
    ],
)
def test_eval_cli_bad_inputs(tiles_root, tmp_path, capsys, args, message):
    root, ckpt = tiles_root
    args = [a.format(root=root, ckpt=ckpt) for a in args]
    code, _, stderr = run_cli(["eval", *args, "--device", "cpu", "--workers", "0", "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
