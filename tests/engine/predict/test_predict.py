"""``predict`` end to end with a real (random-weight) caswit-nano checkpoint on small GeoTIFFs."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

import caswit_geo
from caswit_geo.core.spec import InputSpec
from caswit_geo.engine.predict import predict_probabilities
from caswit_geo.engine.predict import units as predict_module
from caswit_geo.engine.predict.source import LRSlice, PredictTiles, model_inputs
from caswit_geo.geo.class_raster import read_pam_categories
from caswit_geo.geo.grid import TileGrid, context_window
from caswit_geo.geo.lowres import build_lowres
from tests.helpers import GSD, PREDICT_CLASSES, interrupt_forward_pass, rgb_image, run_cli, run_predict, write_on_grid

T = 128  # caswit-nano tile size


def read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile, src


# -- output raster ---------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["nodata", "alpha", "internal"])
def test_output_raster_matches_input_grid_and_mask(tmp_path, weights, mask_kind):
    h, w = 300, 260  # not a multiple of the tile
    data = rgb_image(h, w)
    invalid = np.zeros((h, w), bool)
    invalid[:50, :70] = True
    invalid[200:, 250:] = True  # reaches the raster edge
    if mask_kind == "nodata":
        data[:, invalid] = 0
        write_on_grid(tmp_path / "in.tif", data, nodata=0)
    elif mask_kind == "alpha":
        alpha = np.where(invalid, 0, 255).astype(np.uint8)[None]
        write_on_grid(tmp_path / "in.tif", np.concatenate([data, alpha]), alpha=True)
    else:
        write_on_grid(tmp_path / "in.tif", data, mask=~invalid)
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif", confidence=tmp_path / "conf.tif")
    with rasterio.open(tmp_path / "in.tif") as src:
        in_mask = src.dataset_mask() > 0
        in_crs, in_transform = src.crs, src.transform
    with rasterio.open(tmp_path / "out.tif") as out:
        cls = out.read(1)
        assert out.crs == in_crs and out.transform == in_transform
        assert (out.height, out.width, out.count, out.dtypes[0], out.nodata) == (h, w, 1, "uint8", 255)
        assert out.profile["tiled"] and out.compression is not None and out.overviews(1) == [2, 4]
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # the default layout
        cmap = out.colormap(1)
        assert all(cmap[c.id][:3] == c.color for c in PREDICT_CLASSES.classes)
        assert "2 forest" in out.descriptions[0]
        tags = out.tags()
        assert tags["CASWIT_MODEL"] == "caswit-nano" and tags["CASWIT_CHECKPOINT"] == "nano.safetensors"
        assert '"source": "test fixture"' in tags["CASWIT_METADATA"]
        assert tags["CASWIT_PRECISION"] == "fp32"  # auto: caswit-nano is too narrow for bf16 to pay
    assert res.precision.startswith("fp32 (auto: ")
    assert read_pam_categories(tmp_path / "out.tif") == PREDICT_CLASSES.names
    np.testing.assert_array_equal(cls == 255, ~in_mask)  # nodata exactly where the input is nodata
    assert cls[in_mask].max() < len(PREDICT_CLASSES)
    conf = read(tmp_path / "conf.tif")[0]
    np.testing.assert_array_equal(conf == 255, ~in_mask)
    assert conf[in_mask].min() >= 25 and conf[in_mask].max() <= 100  # percent, >= 1/K
    assert res.tiles == 9 and res.context == "prepass"
    assert sum(res.class_pixels.values()) == in_mask.sum() and res.nodata_pixels == (~in_mask).sum()
    assert sum(res.class_areas_m2.values()) == pytest.approx(in_mask.sum() * GSD * GSD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.qml", "conf.tif", "in.tif", "out.qml", "out.tif",
                                                          "out.tif.aux.xml"]


def test_all_nodata_tiles_are_skipped(tmp_path, weights):
    data = rgb_image(256, 384)
    data[:, :, :256] = 0  # the two left tile columns are empty
    write_on_grid(tmp_path / "in.tif", data, nodata=0)
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif")
    assert (res.tiles, res.tiles_run) == (6, 2)
    cls = read(tmp_path / "out.tif")[0]
    assert (cls[:, :256] == 255).all() and (cls[:, 256:] < 4).all()


def test_small_and_one_pixel_rasters(tmp_path, weights):
    for h, w in [(1, 1), (1, 200), (90, 1)]:
        write_on_grid(tmp_path / f"in{h}x{w}.tif", rgb_image(h, w))
        res = run_predict(weights, [tmp_path / f"in{h}x{w}.tif"], tmp_path / f"out{h}x{w}.tif")
        cls, profile, _ = read(tmp_path / f"out{h}x{w}.tif")
        assert cls.shape == (h, w) and (cls < 4).all() and res.tiles == max(1, -(-w // T)) * max(1, -(-h // T))


# -- context locality ------------------------------------------------------------------------


def test_tile_depends_on_its_context_window_only(tmp_path, weights):
    h = w = 3 * T
    base = rgb_image(h, w, seed=1)
    tile = Window(T, T, T, T)  # the centre tile
    ctx = context_window(tile, 2)  # (64, 64) .. (320, 320)
    outside = base.copy()
    outside[:, :60, :] = 255 - outside[:, :60, :]  # rows above the context window
    outside[:, 330:, 330:] = 7  # bottom-right corner, past the context window
    inside = base.copy()
    inside[:, 70:110, 70:110] = 255 - inside[:, 70:110, 70:110]  # in the context, outside the tile
    paths = {n: write_on_grid(tmp_path / f"{n}.tif", a)
             for n, a in (("base", base), ("outside", outside), ("inside", inside))}

    model, meta = caswit_geo.load_checkpoint(weights)

    def tile_probs(name):
        grid = TileGrid(w, h, T)
        with rasterio.open(paths[name]) as src:
            lowres = build_lowres(src, meta.input_spec.bands, grid, 2, tmp_path / f"{name}_lr")
        ds = PredictTiles(str(paths[name]), [tile], meta.input_spec, "prepass", lowres)
        hr, lr = model_inputs(ds.collate([ds[0]]), meta.input_spec, torch.device("cpu"))
        ds.close()
        return predict_probabilities(model, hr, lr)[0]

    p_base, p_out, p_in = tile_probs("base"), tile_probs("outside"), tile_probs("inside")
    assert torch.equal(p_base, p_out)  # pixels outside the context window do not matter
    assert (p_base - p_in).abs().max() > 1e-4  # pixels of the context window do
    assert int(ctx.col_off) == 64 and int(ctx.width) == 256

    # end to end: the centre tile's output is identical when only outside pixels change
    outs = {}
    for name in ("base", "outside"):
        run_predict(weights, [paths[name]], tmp_path / f"{name}_cls.tif", confidence=tmp_path / f"{name}_conf.tif")
        outs[name] = (read(tmp_path / f"{name}_cls.tif")[0], read(tmp_path / f"{name}_conf.tif")[0])
    sl = (slice(T, 2 * T), slice(T, 2 * T))
    for a, b in zip(outs["base"], outs["outside"]):
        np.testing.assert_array_equal(a[sl], b[sl])


def test_prepass_and_per_tile_context_give_the_same_map(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(200, 330, seed=4), nodata=0)
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "a.tif", confidence=tmp_path / "ac.tif")
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "b.tif", confidence=tmp_path / "bc.tif",
                      lr_prepass=False)
    assert res.context == "direct"
    np.testing.assert_array_equal(read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0])
    np.testing.assert_array_equal(read(tmp_path / "ac.tif")[0], read(tmp_path / "bc.tif")[0])


# -- mosaics ---------------------------------------------------------------------------------


def test_mosaic_of_files_equals_the_single_raster(tmp_path, weights):
    """The LR context crosses file borders: a 2 x 2 split predicts exactly like the whole."""
    h, w = 300, 270
    data = rgb_image(h, w, seed=2)
    data[:, :20, :30] = 0
    write_on_grid(tmp_path / "whole.tif", data, nodata=0)
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    splits = [(0, 0, 140, 100), (0, 100, 140, 170), (140, 0, 160, 100), (140, 100, 160, 170)]  # row, col, h, w
    for r, c, th, tw in splits:
        write_on_grid(tiles_dir / f"t_{r}_{c}.tif", data[:, r : r + th, c : c + tw], nodata=0, col=c, row=r)
    run_predict(weights, [tmp_path / "whole.tif"], tmp_path / "whole_cls.tif")
    whole = read(tmp_path / "whole_cls.tif")[0]

    res = run_predict(weights, [tiles_dir], tmp_path / "mosaic_cls.tif", workers=1)  # also the DataLoader-worker path
    assert res.context == "prepass"
    np.testing.assert_array_equal(read(tmp_path / "mosaic_cls.tif")[0], whole)
    # three readers taking runs of batches by block rows (batches.py), back in plan order for the model
    run_predict(weights, [tiles_dir], tmp_path / "three_cls.tif", workers=3, batch_size=1)
    np.testing.assert_array_equal(read(tmp_path / "three_cls.tif")[0], whole)

    out_dir = tmp_path / "per_file"
    out_dir.mkdir()
    res = run_predict(weights, [tiles_dir / "t_*.tif"], out_dir, confidence=out_dir)
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted([f"t_{r}_{c}_{kind}.{ext}" for r, c, _, _ in splits for kind in ("landcover", "confidence")
                            for ext in ("tif", "qml")]
                           + [f"t_{r}_{c}_landcover.tif.aux.xml" for r, c, _, _ in splits])
    for r, c, th, tw in splits:
        with rasterio.open(out_dir / f"t_{r}_{c}_landcover.tif") as out, rasterio.open(
                tiles_dir / f"t_{r}_{c}.tif") as src:
            assert out.transform == src.transform and out.shape == src.shape and out.crs == src.crs
            np.testing.assert_array_equal(out.read(1), whole[r : r + th, c : c + tw])
            assert out.colormap(1)[1][:3] == (21, 83, 174)


def test_resampled_mosaic_of_files_equals_the_single_raster(tmp_path, weights):
    """--resample: file edges that fall between pixels of the model's grid leave no trace in the map."""
    h, w = 150, 140
    data = rgb_image(h, w, seed=4)
    data[:, :12, :20] = 0
    write_on_grid(tmp_path / "whole.tif", data, nodata=0, res=0.25)
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    splits = [(0, 0, 71, 61), (0, 61, 71, 79), (71, 0, 79, 61), (71, 61, 79, 79)]  # 61 x 0.25 / 0.2 = 76.25 px
    for r, c, th, tw in splits:
        write_on_grid(tiles_dir / f"t_{r}_{c}.tif", data[:, r : r + th, c : c + tw], nodata=0, col=c, row=r, res=0.25)
    run_predict(weights, [tmp_path / "whole.tif"], tmp_path / "whole_cls.tif", resample=True,
                confidence=tmp_path / "whole_conf.tif")
    whole = read(tmp_path / "whole_cls.tif")[0]
    assert whole.shape == (188, 175)
    for workers in (0, 2):
        out = tmp_path / f"mosaic_{workers}.tif"
        res = run_predict(weights, [tiles_dir], out, resample=True, workers=workers, confidence=tmp_path / "conf.tif",
                          overwrite=True)
        assert res.context == "prepass"
        np.testing.assert_array_equal(read(out)[0], whole)
        np.testing.assert_array_equal(read(tmp_path / "conf.tif")[0], read(tmp_path / "whole_conf.tif")[0])


def test_mosaic_inputs_must_agree(tmp_path, weights):
    write_on_grid(tmp_path / "a.tif", rgb_image(64, 64))
    write_on_grid(tmp_path / "b.tif", rgb_image(64, 64), col=64, res=0.4)
    with pytest.raises(caswit_geo.core.errors.InputError, match="differ in pixel size"):
        run_predict(weights, [tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "out.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


# -- overlap -------------------------------------------------------------------------------------


def test_overlap_blending_is_independent_of_strip_width(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(250, 300, seed=5), nodata=0)
    a = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "a.tif", overlap=64, confidence=tmp_path / "ac.tif")
    b = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "b.tif", overlap=64, confidence=tmp_path / "bc.tif",
                    strip_width=128)  # three strips: tiles on strip borders are predicted twice
    assert b.tiles > a.tiles
    np.testing.assert_array_equal(read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0])
    np.testing.assert_array_equal(read(tmp_path / "ac.tif")[0], read(tmp_path / "bc.tif")[0])
    cls = read(tmp_path / "a.tif")[0]
    assert (cls < 4).all()
    with pytest.raises(caswit_geo.core.errors.ConfigError, match="--overlap"):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "c.tif", overlap=T)


# -- pixel size and CRS ----------------------------------------------------------------------------


def test_pixel_size_warning_and_resample(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(100, 150), res=0.4)
    with pytest.warns(UserWarning, match="differs from the model's 0.2 m"):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "a.tif")
    assert read(tmp_path / "a.tif")[0].shape == (100, 150)
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "b.tif", resample=True)
    with rasterio.open(tmp_path / "b.tif") as out, rasterio.open(tmp_path / "in.tif") as src:
        assert (out.width, out.height) == (300, 200)
        assert out.transform.a == pytest.approx(0.2) and out.bounds == pytest.approx(src.bounds)
        assert out.crs == src.crs
        assert (out.read(1) < 4).all()
    assert res.width == 300


def test_raster_without_crs_works_with_a_warning(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(100, 100), crs=None)
    with pytest.warns(UserWarning, match="no CRS"):
        res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs is None and out.shape == (100, 100)
    assert res.class_areas_m2 is None


def test_vector_output_with_the_raster(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(200, 200, seed=6))
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif", vector=tmp_path / "v.gpkg")
    import geopandas as gpd

    gdf = gpd.read_file(tmp_path / "v.gpkg", layer="v")
    assert len(gdf) == res.vector_features > 0
    for name, px in res.class_pixels.items():
        assert gdf.loc[gdf.class_name == name, "area_m2"].sum() == pytest.approx(px * GSD * GSD)


# -- command line errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    "missing_input", "not_a_raster", "too_few_bands", "float_dtype", "out_folder_missing", "out_parent_is_file",
    "missing_weights", "invalid_weights", "no_default_weights", "exists",
])
def test_bad_inputs_give_one_line_and_no_file(tmp_path, weights, capsys, monkeypatch, case):
    monkeypatch.setenv("CASWIT_GEO_WEIGHTS_DIR", str(tmp_path / "none"))
    good = write_on_grid(tmp_path / "good.tif", rgb_image(40, 40))
    inp, out, w = str(good), str(tmp_path / "out.tif"), ["--weights", str(weights)]
    expected = {
        "missing_input": "missing.tif: no such file",
        "not_a_raster": "not a raster GDAL can read",
        "too_few_bands": "has 2 band(s) but the checkpoint reads bands 1,2,3",
        "float_dtype": "data type float32 is not supported",
        "out_folder_missing": "folder",
        "out_parent_is_file": "is not a folder",
        "missing_weights": "--weights",
        "invalid_weights": "not a valid safetensors checkpoint",
        "no_default_weights": "no default weights: pass --weights PATH",
        "exists": "exists (pass --overwrite",
    }[case]
    if case == "missing_input":
        inp = str(tmp_path / "missing.tif")
    elif case == "not_a_raster":
        inp = str(tmp_path / "notes.tif")
        (tmp_path / "notes.tif").write_text("hello")
    elif case == "too_few_bands":
        inp = str(write_on_grid(tmp_path / "two.tif", rgb_image(40, 40)[:2]))
    elif case == "float_dtype":
        inp = str(write_on_grid(tmp_path / "f.tif", rgb_image(40, 40).astype(np.float32)))
    elif case == "out_folder_missing":
        out = str(tmp_path / "nowhere" / "out.tif")
    elif case == "out_parent_is_file":
        out = str(good) + "/out.tif"
    elif case == "missing_weights":
        w = ["--weights", str(tmp_path / "missing.safetensors")]
    elif case == "invalid_weights":
        (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
        w = ["--weights", str(tmp_path / "bad.safetensors")]
    elif case == "no_default_weights":
        w = []
    elif case == "exists":
        (tmp_path / "out.tif").write_bytes(b"old")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(["predict", inp, "--out", out, *w, "--quiet"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caswit-geo: error:") and expected in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left
    if case == "exists":
        assert (tmp_path / "out.tif").read_bytes() == b"old"


def test_default_weights_from_registry(tmp_path, weights, monkeypatch):
    from caswit_geo.model.weights import resolve_weights, sha256

    reg = tmp_path / "weights" / "registry.json"
    reg.parent.mkdir()
    registered = reg.parent / "nano.safetensors"  # registry entries name files inside its folder
    registered.write_bytes(weights.read_bytes())
    monkeypatch.setenv("CASWIT_GEO_WEIGHTS_DIR", str(reg.parent))
    reg.write_text('{"default": "nano", "models": {"nano": {"file": "nano.safetensors", "sha256": "%s"}}}'
                   % sha256(weights))
    assert resolve_weights(None) == registered
    assert resolve_weights("nano") == registered  # a registry name works as --weights too
    assert resolve_weights(str(weights)) == weights
    reg.write_text('{"default": "nano", "models": {"nano": {"file": "nano.safetensors", "sha256": "%s"}}}' % ("0" * 64))
    with pytest.raises(caswit_geo.core.errors.CheckpointError, match="checksum"):
        resolve_weights(None)


# -- interruption and overwrite ----------------------------------------------------------------------


def test_interrupted_run_leaves_destination_untouched(tmp_path, weights, monkeypatch):
    write_on_grid(tmp_path / "in.tif", rgb_image(300, 300))
    (tmp_path / "out.tif").write_bytes(b"old")
    calls, real = interrupt_forward_pass(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif", batch_size=2, overwrite=True,
                    confidence=tmp_path / "conf.tif", vector=tmp_path / "v.gpkg")
    assert calls["n"] == 2
    assert (tmp_path / "out.tif").read_bytes() == b"old"
    # no output, no temporary, no lock: the job folder and its claims on the destinations stay
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".conf.tif.caswit-claim", ".out.tif.caswit-claim", ".out.tif.caswit-job", ".v.gpkg.caswit-claim",
        "in.tif", "out.tif"]
    assert not [p for p in (tmp_path / ".out.tif.caswit-job").rglob("*") if ".part" in p.name or p.suffix == ".lock"]
    monkeypatch.setattr(predict_module, "predict_probabilities", real)
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif", batch_size=2, overwrite=True, resume=True,
                confidence=tmp_path / "conf.tif", vector=tmp_path / "v.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.qml", "conf.tif", "in.tif", "out.qml", "out.tif",
                                                          "out.tif.aux.xml", "v.gpkg"]


def test_overwrite_replaces_only_when_asked(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(64, 64))
    (tmp_path / "out.tif").write_bytes(b"old")
    (tmp_path / "out.tif.aux.xml").write_text("<PAMDataset/>")
    with pytest.raises(caswit_geo.core.errors.OutputError, match="exists"):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif")
    assert (tmp_path / "out.tif").read_bytes() == b"old"
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif", overwrite=True)
    assert read(tmp_path / "out.tif")[0].shape == (64, 64)
    assert read_pam_categories(tmp_path / "out.tif") == PREDICT_CLASSES.names


@pytest.mark.slow
def test_sigterm_midway_leaves_no_output(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(2048, 2048))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from caswit_geo.cli import main; main()", "predict", str(tmp_path / "in.tif"),
         "--out", str(tmp_path / "out.tif"), "--weights", str(weights), "--batch-size", "1", "--workers", "1"],
        stderr=subprocess.PIPE, text=True,
    )
    buf = ""
    deadline = time.time() + 120
    while "/256 [" not in buf and proc.poll() is None and time.time() < deadline:  # the progress bar runs
        buf += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, buf + err  # 128 + SIGTERM, as shells report it
    assert "interrupted, no output written" in err and "--resume to continue" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["in.tif"]
    job = tmp_path / ".out.tif.caswit-job"  # the finished units are kept, without temporaries or locks
    assert job.is_dir() and not [p for p in job.rglob("*") if ".part" in p.name or p.suffix == ".lock"]


# -- other model kinds, per-file resampled outputs, batched reads, quick look ----------------------------


def test_single_stream_model_reads_no_context(tmp_path):
    model = caswit_geo.build_model("swin-nano-upernet", num_classes=len(PREDICT_CLASSES))
    ckpt = caswit_geo.save_checkpoint(model, tmp_path / "single.safetensors", classes=PREDICT_CLASSES,
                                      input_spec=InputSpec(tile_size=T, gsd=GSD))
    write_on_grid(tmp_path / "in.tif", rgb_image(100, 150))
    res = run_predict(ckpt, [tmp_path / "in.tif"], tmp_path / "out.tif")
    assert res.context == "none" and (read(tmp_path / "out.tif")[0] < 4).all()


def test_per_file_outputs_of_a_resampled_mosaic(tmp_path, weights):
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    data = rgb_image(60, 100, seed=8)
    write_on_grid(tiles_dir / "a.tif", data[:, :, :50], res=0.4)
    write_on_grid(tiles_dir / "b.tif", data[:, :, 50:], res=0.4, col=50)
    out = tmp_path / "out"
    out.mkdir()
    run_predict(weights, [tiles_dir], out, resample=True)
    for name in ("a", "b"):
        with rasterio.open(out / f"{name}_landcover.tif") as o, rasterio.open(tiles_dir / f"{name}.tif") as src:
            assert (o.width, o.height) == (100, 120)  # the file's extent at the model's 0.2 m
            assert o.transform.a == pytest.approx(0.2)
            assert o.bounds == pytest.approx(src.bounds)
            assert (o.read(1) < 4).all()


def test_batched_reads_equal_tile_reads(tmp_path):
    """Adjacent tiles of a row are read as one window: same tensors as tile by tile."""
    data = rgb_image(300, 520, seed=9)
    data[:, :, 300:] = 0
    write_on_grid(tmp_path / "in.tif", data, nodata=0)
    spec = InputSpec(tile_size=T, gsd=GSD)
    for overlap in (0, 32):
        grid = TileGrid(520, 300, T, overlap)
        windows = [w for _, _, w in grid.windows()]
        with rasterio.open(tmp_path / "in.tif") as src:
            lowres = build_lowres(src, spec.bands, grid, 2, tmp_path / f"lr{overlap}")
        ds = PredictTiles(str(tmp_path / "in.tif"), windows, spec, "prepass", lowres)
        indices = list(range(len(windows)))
        assert len(ds._runs(indices)) == grid.shape[0]  # one run per tile row
        batched = ds.__getitems__(indices)
        for got, i in zip(batched, indices):
            want = ds[i]
            assert got[0] == want[0] == i
            if isinstance(got[2], LRSlice):  # a window of its run's strip, shared with the run's other tiles
                got = (*got[:2], got[2].strip[:, :, got[2].col : got[2].col + T], got[3])
            for a, b in zip(got[1:], want[1:]):
                assert (a is None and b is None) or torch.equal(a, b)
        # collated, each run's strip once: the same model inputs as the tiles collated one by one
        together = ds.collate(batched)
        assert together.lr.shape[2] < sum(it[1] is not None for it in batched) * T  # less than a window a tile
        for a, b in zip(model_inputs(together, spec, torch.device("cpu")),
                        model_inputs(ds.collate([ds[i] for i in indices]), spec, torch.device("cpu"))):
            assert torch.equal(a, b)
        ds.close()


def test_preview_png(tmp_path, weights):
    import matplotlib.image as mpimg

    from caswit_geo.geo.preview import _decimated_shape

    write_on_grid(tmp_path / "in.tif", rgb_image(100, 300))
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "out.tif", preview=tmp_path / "look.png")
    assert res.preview == tmp_path / "look.png"
    pic = mpimg.imread(res.preview)
    assert pic.shape[1] > pic.shape[0] > 100 and pic[..., :3].std() > 0.05  # screen-sized, not blank
    assert _decimated_shape(30000, 10000, 720) == (240, 720)  # a large mosaic is read decimated
