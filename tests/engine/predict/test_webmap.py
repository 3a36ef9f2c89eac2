"""predict from a web map service: a WMS (or WMTS) on 127.0.0.1 rendering a local raster gives the map of that raster.

The service (``tests/wms_server.py``) serves the raster's own pixels, so the
map of a region read through GDAL's WMS client must equal, pixel for pixel,
the map of the same region read from the file; and the server never sees
more requests at once than ``--workers``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.predict.config import PredictConfig
from caswit_geo.engine.predict.plan import plan_predict
from caswit_geo.geo.webmap import service_text
from tests.helpers import X0, Y0, rgb_image, run_cli, run_predict, write_on_grid
from tests.wms_server import WmsServer

pytestmark = pytest.mark.usefixtures("single_thread")
BOX = f"{X0 + 60.3},{Y0 - 150.7},{X0 + 110.1},{Y0 - 90.9}"


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wms")
    return write_on_grid(folder / "ortho.tif", rgb_image(900, 1000, seed=6), tiled=True, blockxsize=256,
                         blockysize=256)


@pytest.mark.parametrize("kind,workers", [("wms", 1), ("wms", 2), ("wmts", 1)])
def test_the_service_map_equals_the_local_map_and_requests_stay_within_workers(tmp_path, weights, ortho, kind,
                                                                               workers):
    run_predict(weights, [ortho], tmp_path / "local.tif", confidence=tmp_path / "local_c.tif", bbox=BOX,
                batch_size=1)
    with WmsServer(ortho, delay=0.02) as server:
        describe = server.service_xml if kind == "wms" else server.wmts_xml  # WMTS: tiles of 256 px
        xml = describe(tmp_path / f"ortho_{kind}.xml")
        res = run_predict(weights, [xml], tmp_path / "wms.tif", confidence=tmp_path / "wms_c.tif", bbox=BOX,
                          batch_size=1, workers=workers)
    assert server.requests > 4 and server.most_in_flight <= workers
    # said as what was read, not as a warning
    assert any("level 0 (0.2 m pixels), resampling none" in n for n in res.input_notes)
    assert not any("resampling" in w for w in res.warnings)
    for a, b in (("local.tif", "wms.tif"), ("local_c.tif", "wms_c.tif")):
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert x.transform == y.transform and x.crs == y.crs
            np.testing.assert_array_equal(x.read(), y.read())


def test_a_service_without_a_region_is_refused(tmp_path, weights, ortho, capsys):
    with WmsServer(ortho) as server:
        xml = server.service_xml(tmp_path / "ortho_wms.xml")
        code, _, err = run_cli(["predict", xml, "--out", tmp_path / "map.tif", "--weights", weights], capsys)
        assert code != 0 and "--roi PATH or --bbox" in err and len(err.strip().splitlines()) == 1
        code, _, err = run_cli(["predict", xml, ortho, "--out", tmp_path / "map.tif", "--weights", weights,
                                "--bbox", BOX], capsys)
        assert code != 0 and "read alone" in err
        code, _, err = run_cli(["predict", "WMTS:http://127.0.0.1:9/cap.xml?token=secret,layer=a", "--out",
                                tmp_path / "map.tif", "--weights", weights], capsys)
        assert code != 0 and "--roi PATH or --bbox" in err and "secret" not in err
        assert "WMTS:http://127.0.0.1:9/cap.xml,layer=a" in err and len(err.strip().splitlines()) == 1
        code, _, err = run_cli(["predict", "WMTS:http://127.0.0.1:9/cap.xml?token=secret,layers=a", "--out",
                                tmp_path / "map.tif", "--weights", weights, "--bbox", BOX], capsys)
        assert code != 0 and "'layers=a' is not an option" in err and "secret" not in err
        caps = server.capabilities()  # a second layer: the one to read must be named
        layer = caps[caps.index("<Layer>"):caps.index("</Layer>") + len("</Layer>")]
        two = tmp_path / "two_layers.xml"
        two.write_text(caps.replace("</Contents>", layer.replace(">ortho<", ">other<") + "</Contents>"))
        code, _, err = run_cli(["predict", f"WMTS:{two}", "--out", tmp_path / "map.tif", "--weights", weights,
                                "--bbox", BOX], capsys)
        assert code != 0 and "several layers" in err and len(err.strip().splitlines()) == 1
        two.unlink()
        code, _, err = run_cli(["predict", xml, "--out", tmp_path / "map.tif", "--weights", weights, "--bbox",
                                f"{X0 + 900},{Y0 - 900},{X0 + 950},{Y0 - 850}"], capsys)
        assert code != 0 and "outside the service's extent" in err and len(err.strip().splitlines()) == 1
        assert server.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho_wms.xml"]


def test_a_finer_service_is_read_at_the_model_gsd_from_the_right_level(tmp_path, weights):
    fine = write_on_grid(tmp_path / "fine.tif", rgb_image(2048, 2048, seed=1), res=0.05, tiled=True)
    with WmsServer(fine) as server:
        xml = server.service_xml(tmp_path / "fine_wms.xml")
        plan = plan_predict(PredictConfig(inputs=[str(xml)], out=str(tmp_path / "map.tif"), weights=str(weights),
                                          bbox=f"{X0 + 20},{Y0 - 60},{X0 + 60},{Y0 - 20}"))
        assert server.requests == 0  # planning reads no pixel
        with plan.mosaic.open() as src:
            got = src.read([1, 2, 3])
        # the level's own pixels, unchanged (a step of 1 px): as GDAL reads that window of the level
        with rasterio.open(service_text(xml), overview_level=1) as level:
            assert level.width == 2048 // 4  # the 0.2 m level of the 0.05 m raster
            c0, r0 = (round(v) for v in ~level.transform * (plan.mosaic.transform.c, plan.mosaic.transform.f))
            h, w = got.shape[1:]
            np.testing.assert_array_equal(got, level.read([1, 2, 3], window=Window(c0, r0, w, h)))
    # 0.05 m, 0.1, 0.2, 0.4...: the 0.2 m level is read (its second overview) as it is
    assert plan.mosaic.res == pytest.approx((0.2, 0.2))
    assert plan.mosaic.native_overview == 1 and plan.mosaic.native == service_text(xml)
    assert any("from the service's level 2 (0.2 m pixels), resampling none" in n for n in plan.input_notes)
    with pytest.raises(ConfigError, match="checkpoint records no ground sampling"):
        from tests.helpers import PREDICT_CLASSES, save_nano_checkpoint

        plain = save_nano_checkpoint(tmp_path / "nogsd.safetensors", PREDICT_CLASSES, gsd=None)
        plan_predict(PredictConfig(inputs=[str(xml)], out=str(tmp_path / "map.tif"), weights=str(plain),
                                   bbox=f"{X0 + 20},{Y0 - 60},{X0 + 60},{Y0 - 20}"))


def test_shards_of_a_service_equal_the_local_map(tmp_path, weights, ortho):
    run_predict(weights, [ortho], tmp_path / "local.tif", bbox=BOX, unit_size=128)
    with WmsServer(ortho) as server:
        xml = server.service_xml(tmp_path / "ortho_wms.xml")
        for shard in ((1, 2), (0, 2)):
            res = run_predict(weights, [xml], tmp_path / "wms.tif", bbox=BOX, unit_size=128, shard=shard)
        assert res.complete and res.units > 2
    with rasterio.open(tmp_path / "local.tif") as x, rasterio.open(tmp_path / "wms.tif") as y:
        assert x.transform == y.transform
        np.testing.assert_array_equal(x.read(), y.read())


SECRET, FRESH = "s1gned-t0ken-A", "s1gned-t0ken-B"


def test_a_wmts_connection_string_maps_as_the_local_file_and_keeps_its_token_secret(tmp_path, weights, ortho,
                                                                                    capsys, monkeypatch):
    """``WMTS:URL?token=...,layer=...``: the map of the local raster; the token reaches the server but no
    output; a resume with a fresh token is the same input. GDAL keeps no tile on disk (by default it would
    for a connection string, in ~/.cache/gdalwmscache)."""
    monkeypatch.setenv("GDAL_DEFAULT_WMS_CACHE_PATH", str(tmp_path / "tile_cache"))
    run_predict(weights, [ortho], tmp_path / "local.tif", confidence=tmp_path / "local_c.tif", bbox=BOX,
                batch_size=1)
    out = tmp_path / "out"
    out.mkdir()
    with WmsServer(ortho) as server:
        caps = server.url.removesuffix("/wms?") + "/wmts/caps.xml"

        def argv(token: str, *extra) -> list:
            return ["predict", f"WMTS:{caps}?token={token},layer=ortho,style=default", "--out", out / "map.tif",
                    "--confidence", out / "conf.tif", "--weights", weights, "--bbox", BOX, "--batch-size", 1,
                    "--unit-size", 128, *extra]

        code, stdout, stderr = run_cli(argv(SECRET, "--shard", "0/2"), capsys)
        assert code == 0, stderr
        job = out / ".map.tif.caswit-job"
        plan = json.loads((job / "plan.json").read_text())
        assert [r["path"] for r in plan["inputs"]] == [f"WMTS:{caps},layer=ortho,style=default"]
        seen = [stdout + stderr + _folder_text(job)]
        code, stdout, stderr = run_cli(argv(FRESH, "--resume"), capsys)
        assert code == 0, stderr
        note = f"inputs: WMTS:{caps},layer=ortho,style=default: read at 0.2 m from the service's level 0 (0.2 m"
        assert note in stdout + stderr  # the summary says it
        seen.append(stdout + stderr)
        code, stdout, stderr = run_cli(argv(FRESH, "--dry-run", "--overwrite"), capsys)
        assert code == 0, stderr
        assert note in stdout and "resampling none" in stdout
        assert "warning" not in stdout + stderr
        seen.append(stdout + stderr)
    # GDAL asked the server with the URL as given (the token is the user's to send), tiles from its template
    assert any(f"token={SECRET}" in p for p in server.paths) and any(f"token={FRESH}" in p for p in server.paths)
    assert sum(p.startswith("/wmts/0/") for p in server.paths) > 4
    seen.append(_folder_text(out))
    assert not any(secret in text for text in seen for secret in (SECRET, FRESH))
    assert not (tmp_path / "tile_cache").exists()
    for a, b in (("local.tif", "out/map.tif"), ("local_c.tif", "out/conf.tif")):
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert x.transform == y.transform and x.crs == y.crs
            np.testing.assert_array_equal(x.read(), y.read())


def _folder_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())
