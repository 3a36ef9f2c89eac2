"""predict from where the imagery lives: served COGs and STAC items, equal to the same pixels read locally.

The server is ours, on 127.0.0.1 (``tests/http_server.py``): it serves by
ranges, asks for a token or a password when told, and can die mid-run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from caswit_geo.core.errors import InputError
from caswit_geo.engine.predict import units as units_module
from tests.helpers import GEOTIFF, rgb_image, run_cli, run_predict, stac_collection, stac_item, write_on_grid
from tests.http_server import ServedFolder

pytestmark = pytest.mark.usefixtures("single_thread")

SECRET = "s1gned-t0ken-A"
FRESH = "s1gned-t0ken-B"
PASSWORD = "hunter2-pw"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def imagery(folder: Path) -> Path:
    """Two 256 x 384 px COG-like halves of one mosaic (tiled, with overviews), side by side."""
    folder.mkdir(exist_ok=True)
    data = rgb_image(256, 768, seed=7)
    for i, name in enumerate(("west.tif", "east.tif")):
        path = write_on_grid(folder / name, data[:, :, 384 * i : 384 * (i + 1)], col=384 * i, tiled=True,
                             blockxsize=128, blockysize=128)
        with rasterio.open(path, "r+") as dst:
            dst.build_overviews([2, 4])
    return folder


def test_served_cogs_stac_items_and_mixed_lists_map_as_local_files(tmp_path, weights):
    src = imagery(tmp_path / "src")
    ref = run_predict(weights, [src / "west.tif", src / "east.tif"], tmp_path / "ref.tif", confidence=tmp_path / "ref_c.tif")
    (src / "items").mkdir()
    items = [stac_item(n, {"rgb": (f"../{n}.tif", GEOTIFF, ["visual"]), "thumb": (f"{n}.png", "image/png", ["thumbnail"])})
             for n in ("west", "east")]
    (src / "items" / "search.json").write_text(json.dumps(stac_collection(*items)))
    with ServedFolder(src) as server:  # tokens: see the tests below (a catalogue's token does not sign its assets)
        cases = {
            "urls": [server.url("west.tif"), server.url("east.tif")],
            "mixed": [src / "west.tif", "/vsicurl/" + server.url("east.tif")],
            "stac_url": [server.url("items/search.json")],
            "stac_file": [src / "items" / "search.json"],
        }
        for name, inputs in cases.items():
            server.reset_counts()
            result = run_predict(weights, inputs, tmp_path / f"{name}.tif", confidence=tmp_path / f"{name}_c.tif")
            np.testing.assert_array_equal(read(tmp_path / f"{name}.tif"), read(tmp_path / "ref.tif"), err_msg=name)
            np.testing.assert_array_equal(read(tmp_path / f"{name}_c.tif"), read(tmp_path / "ref_c.tif"), err_msg=name)
            assert result.class_pixels == ref.class_pixels
            if name != "stac_file":  # the pixels came over the network, by ranges
                assert server.requests and all(r.range for r in server.requests if r.path.endswith(".tif")
                                               and r.method == "GET")
        assert result.input_notes == [f"{src / 'items' / 'search.json'}: 2 STAC items, asset 'rgb' "
                                      "(by role: visual, else data)"]
        with rasterio.open(tmp_path / "urls.tif") as out:
            assert json.loads(out.tags()["CASWIT_SOURCES"]) == ["west.tif", "east.tif"]


def test_per_file_outputs_named_after_the_url(tmp_path, weights):
    src = imagery(tmp_path / "src")
    (tmp_path / "out").mkdir()
    with ServedFolder(src, token=SECRET) as server:
        run_predict(weights, [server.url("west.tif", token=SECRET)], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["west_landcover.qml", "west_landcover.tif",
                                                                   "west_landcover.tif.aux.xml"]


def test_missing_url_is_one_line_and_leaves_nothing(tmp_path, weights, capsys):
    src = imagery(tmp_path / "src")
    with ServedFolder(src, token=SECRET) as server:
        code, out, err = run_cli(["predict", src / "west.tif", server.url("gone.tif", token=SECRET),
                                  "--out", tmp_path / "map.tif", "--weights", weights, "--quiet"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"caswit-geo: error: http://127.0.0.1:{server.port}/gone.tif: not found (HTTP 404)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_server_dying_mid_run_is_named_and_keeps_the_done_units(tmp_path, weights, monkeypatch):
    src = imagery(tmp_path / "src")
    real, calls = units_module.predict_probabilities, {"n": 0}
    with ServedFolder(src, token=SECRET) as server:
        def dies_after_two(*a, **kw):
            calls["n"] += 1
            if calls["n"] == 3:
                server.dead = True  # from now on, every request gets a closed connection
            return real(*a, **kw)

        monkeypatch.setattr(units_module, "predict_probabilities", dies_after_two)
        inputs = [server.url("west.tif", token=SECRET), server.url("east.tif", token=SECRET)]
        with pytest.raises(InputError) as failure:  # direct LR context: every unit reads its own pixels
            run_predict(weights, inputs, tmp_path / "map.tif", unit_size=128, batch_size=1, lr_prepass=False,
                        gdal_cache_mb=1)
        message = str(failure.value)
        assert "\n" not in message and SECRET not in message
        assert f"http://127.0.0.1:{server.port}/" in message and "cannot read its pixels" in message
        assert "units are done and kept in" in message and "--resume" in message
        job = tmp_path / ".map.tif.caswit-job"
        done = sorted(p.name for p in (job / "units").glob("u*.tif") if not p.name.endswith(".ovr.tif"))
        assert 2 <= len(done) < 12 and not (tmp_path / "map.tif").exists()
        # back up, with a fresh token: the job goes on and ends as a whole run would
        server.dead, server.token = False, FRESH
        monkeypatch.setattr(units_module, "predict_probabilities", real)
        resumed = run_predict(weights, [server.url("west.tif", token=FRESH), server.url("east.tif", token=FRESH)],
                              tmp_path / "map.tif", unit_size=128, batch_size=1, lr_prepass=False, resume=True)
    assert resumed.units_before == len(done) and resumed.units_run == resumed.units - len(done)
    whole = run_predict(weights, [src / "west.tif", src / "east.tif"], tmp_path / "whole.tif", unit_size=128,
                        batch_size=1, lr_prepass=False)
    assert whole.units == resumed.units
    np.testing.assert_array_equal(read(tmp_path / "map.tif"), read(tmp_path / "whole.tif"))


def test_credentials_never_appear_and_a_fresh_token_resumes(tmp_path, weights, capsys):
    """A job started with one signed URL (and a password) and ended with another: no secret in any output,
    log, plan.json, tag, stdout or stderr, and the pixels of one whole local run."""
    src = imagery(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    with ServedFolder(src, token=SECRET, auth=("reader", PASSWORD)) as server:
        def argv(token: str, *extra) -> list:
            urls = [server.url(n, token=token, user=("reader", PASSWORD)) for n in ("west.tif", "east.tif")]
            return ["predict", *urls, "--out", out / "map.tif", "--confidence", out / "conf.tif",
                    "--vector", out / "map.gpkg", "--preview", out / "map.png", "--weights", weights,
                    "--unit-size", 128, "--workers", 0, *extra]

        code, stdout, stderr = run_cli(argv(SECRET, "--shard", "0/2", "--quiet"), capsys)
        assert code == 0, stderr
        job = out / ".map.tif.caswit-job"
        plan = json.loads((job / "plan.json").read_text())
        assert [r["path"] for r in plan["inputs"]] == [f"/vsicurl/http://127.0.0.1:{server.port}/{n}.tif"
                                                       for n in ("west", "east")]
        assert all(r["size"] > 0 and r["etag"] for r in plan["inputs"])
        seen.append(stdout + stderr + _folder_text(job))
        code, _, stderr = run_cli(argv("bad-token", "--resume"), capsys)  # refused by the server: named, masked
        assert code == 1 and "access refused (HTTP 403)" in stderr and "bad-token" not in stderr
        server.token = FRESH  # the old token expired; the job resumes with a fresh one
        code, stdout, stderr = run_cli(argv(FRESH, "--resume"), capsys)
        assert code == 0, stderr
        assert "units" in stdout + stderr
        seen.append(stdout + stderr)
        code, stdout, stderr = run_cli(argv(FRESH, "--dry-run", "--overwrite"), capsys)
        assert code == 0, stderr
        size = sum((src / n).stat().st_size for n in ("west.tif", "east.tif")) / 2**20
        assert f"inputs: 2 file(s), {size:,.1f} MiB" in stdout  # the sizes the server gave
        seen.append(stdout + stderr)
    seen.append(_folder_text(out))
    for text in seen:
        for secret in (SECRET, FRESH, PASSWORD, "reader:"):
            assert secret not in text
    run_predict(weights, [src / "west.tif", src / "east.tif"], tmp_path / "ref.tif", unit_size=128)
    np.testing.assert_array_equal(read(out / "map.tif"), read(tmp_path / "ref.tif"))


def _folder_text(folder: Path) -> str:
    """Every file under ``folder`` as text (binary files too: TIFF tags and GeoPackage rows are bytes)."""
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_changed_remote_file_is_refused_on_resume(tmp_path, weights):
    src = imagery(tmp_path / "src")
    with ServedFolder(src) as server:
        inputs = [server.url("west.tif"), server.url("east.tif")]
        run_predict(weights, inputs, tmp_path / "map.tif", unit_size=128, shard=(0, 2))
        later = os.stat(src / "east.tif").st_mtime + 10
        os.utime(src / "east.tif", (later, later))  # a new ETag and Last-Modified
        with pytest.raises(Exception, match=r"input /vsicurl/http://127\.0\.0\.1:\d+/east\.tif changed since the job"):
            run_predict(weights, inputs, tmp_path / "map.tif", unit_size=128, resume=True)


@pytest.mark.slow
def test_torchrun_over_served_cogs_equals_one_local_process(tmp_path, weights):
    src = imagery(tmp_path / "src")
    run_predict(weights, [src / "west.tif", src / "east.tif"], tmp_path / "ref.tif", unit_size=128)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with ServedFolder(src, token=SECRET) as server:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "caswit_geo", "predict", server.url("west.tif", token=SECRET), server.url("east.tif", token=SECRET),
               "--out", str(tmp_path / "ddp.tif"), "--weights", str(weights), "--unit-size", "128", "--workers", "0",
               "--quiet"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert SECRET not in res.stdout + res.stderr
    np.testing.assert_array_equal(read(tmp_path / "ddp.tif"), read(tmp_path / "ref.tif"))


def test_stac_asset_named_in_the_dry_run_and_odd_item_in_one_line(tmp_path, weights, capsys):
    src = imagery(tmp_path / "src")
    items = [stac_item(n, {"rgb": (f"{n}.tif", GEOTIFF, ["overview"]), "meta": (f"{n}.xml", "text/xml", ["metadata"])})
             for n in ("west", "east")]
    doc = src / "search.json"
    doc.write_text(json.dumps(stac_collection(*items)))
    code, out, err = run_cli(["predict", doc, "--out", tmp_path / "map.tif", "--weights", weights], capsys)
    assert code == 1 and err.strip().splitlines() == [
        f"caswit-geo: error: {doc}: item 'west' has no GeoTIFF asset with role visual or data (its assets: rgb, meta); "
        "pick one with --asset KEY"]
    code, out, err = run_cli(["predict", doc, "--asset", "rgb", "--out", tmp_path / "map.tif", "--weights", weights,
                              "--dry-run"], capsys)
    assert code == 0, err
    assert f"inputs: {doc}: 2 STAC items, asset 'rgb'\n" in out
    assert not (tmp_path / "map.tif").exists()


def test_flaky_server_is_retried_by_the_readers(tmp_path, weights):
    src = imagery(tmp_path / "src")
    run_predict(weights, [src / "west.tif"], tmp_path / "ref.tif")
    with ServedFolder(src) as server:
        server.flaky = 3  # every third request: HTTP 503
        run_predict(weights, [server.url("west.tif")], tmp_path / "map.tif")
        statuses = [r.status for r in server.requests]
    assert 503 in statuses and statuses[-1] != 503
    np.testing.assert_array_equal(read(tmp_path / "map.tif"), read(tmp_path / "ref.tif"))


def test_forked_readers_do_not_share_the_parent_connection(tmp_path, weights):
    """Reader processes forked after the plan read the URL: each opens its own connection (shared
    keep-alive sockets interleave answers, and a tile fails to decode)."""
    write_on_grid(tmp_path / "in.tif", rgb_image(1024, 1024, seed=3), tiled=True, blockxsize=256, blockysize=256)
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "ref.tif", unit_size=256)
    with ServedFolder(tmp_path) as server:
        run_predict(weights, [server.url("in.tif")], tmp_path / "map.tif", unit_size=256, workers=2, gdal_cache_mb=1)
    np.testing.assert_array_equal(read(tmp_path / "map.tif"), read(tmp_path / "ref.tif"))


def test_object_store_names_read_with_gdals_own_variables(tmp_path, weights, monkeypatch):
    """``s3://`` and ``/vsis3/`` through GDAL's AWS_* variables, our server standing in for the store."""
    (tmp_path / "store").mkdir()
    src = imagery(tmp_path / "store" / "bucket")
    run_predict(weights, [src / "west.tif", src / "east.tif"], tmp_path / "ref.tif")
    with ServedFolder(tmp_path / "store") as server:
        for key, value in dict(AWS_S3_ENDPOINT=f"127.0.0.1:{server.port}", AWS_NO_SIGN_REQUEST="YES", AWS_HTTPS="NO",
                               AWS_VIRTUAL_HOSTING="FALSE").items():
            monkeypatch.setenv(key, value)
        run_predict(weights, ["s3://bucket/west.tif", "/vsis3/bucket/east.tif"], tmp_path / "map.tif", unit_size=128,
                    shard=(0, 2))
        plan = json.loads((tmp_path / ".map.tif.caswit-job" / "plan.json").read_text())
        assert [r["path"] for r in plan["inputs"]] == ["/vsis3/bucket/west.tif", "/vsis3/bucket/east.tif"]
        run_predict(weights, ["/vsis3/bucket/west.tif", "s3://bucket/east.tif"], tmp_path / "map.tif", unit_size=128,
                    resume=True)
        assert {r.path for r in server.requests} == {"/bucket/west.tif", "/bucket/east.tif"}  # no listing, no sidecar
    np.testing.assert_array_equal(read(tmp_path / "map.tif"), read(tmp_path / "ref.tif"))
