"""STAC documents -> rasters: asset choice, relative hrefs, odd items named, bounded JSON."""

import json
from pathlib import Path

import pytest

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.geo.inputs import resolve_inputs
from caswit_geo.geo.stac import is_stac_document, stac_rasters
from tests.helpers import GEOTIFF, rgb_image, stac_collection, stac_item, write_on_grid
from tests.http_server import ServedFolder

SECRET = "st4c-t0ken"


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_default_asset_is_visual_else_data_geotiff(tmp_path):
    a = stac_item("a", {"thumb": ("a.png", "image/png", ["thumbnail"]), "rgb": ("tiles/a.tif", GEOTIFF, ["visual"]),
                        "dem": ("a_dem.tif", GEOTIFF, ["data"])})
    b = stac_item("b", {"jp2": ("b.jp2", "image/jp2", ["visual"]), "img": ("/abs/b.tif", GEOTIFF, ["data"])})
    (tmp_path / "cat").mkdir()
    doc = write_json(tmp_path / "cat" / "search.json", stac_collection(a, b))
    rasters, note = stac_rasters(doc)
    assert rasters == [tmp_path / "cat" / "tiles" / "a.tif", Path("/abs/b.tif")]  # relative to the document
    assert note == f"{doc}: 2 STAC items, asset 'rgb' x 1, 'img' x 1 (by role: visual, else data)"


def test_asset_option_and_odd_items_named(tmp_path):
    a = stac_item("a", {"rgb": ("a.tif", GEOTIFF, ["visual"]), "meta": ("a.xml", "application/xml", ["metadata"])})
    b = stac_item("b-odd", {"other": ("b.tif", GEOTIFF, ["overview"])})
    doc = write_json(tmp_path / "s.json", stac_collection(a, b))
    with pytest.raises(InputError, match=r"item 'b-odd' has no GeoTIFF asset with role visual or data \(its assets: other\)"):
        stac_rasters(doc)
    with pytest.raises(InputError, match=r"item 'b-odd' has no asset 'rgb' \(its assets: other\)"):
        stac_rasters(doc, "rgb")
    with pytest.raises(InputError, match="asset 'meta' of item 'a' is application/xml, not a raster"):
        stac_rasters(write_json(tmp_path / "a.json", a), "meta")
    rasters, note = stac_rasters(write_json(tmp_path / "a.json", a), "rgb")
    assert rasters == [tmp_path / "a.tif"] and note.endswith("1 STAC item, asset 'rgb'")


def test_item_in_another_crs_is_named(tmp_path):
    items = [stac_item(f"i{k}", {"rgb": (f"{k}.tif", GEOTIFF, ["visual"])}) for k in range(3)]
    items.append(stac_item("utm", {"rgb": ("u.tif", GEOTIFF, ["visual"])}, epsg=32632))
    with pytest.raises(InputError, match=r"item 'utm' is in EPSG:32632, the other items in EPSG:2154"):
        stac_rasters(write_json(tmp_path / "s.json", stac_collection(*items)))


def test_not_stac_and_bounds(tmp_path):
    with pytest.raises(InputError, match="a STAC Catalog lists no imagery itself"):
        stac_rasters(write_json(tmp_path / "c.json", {"type": "Catalog", "id": "c", "links": []}))
    with pytest.raises(InputError, match="not a STAC Item or ItemCollection"):
        stac_rasters(write_json(tmp_path / "x.json", [1, 2]))
    with pytest.raises(InputError, match="nests deeper"):
        deep: list = [1]
        for _ in range(40):
            deep = [deep]
        stac_rasters(write_json(tmp_path / "deep.json", {"type": "Feature", "x": deep}))
    with pytest.raises(InputError, match="not a valid STAC document"):
        stac_rasters(write_json(tmp_path / "bad.json", {"type": "Feature", "id": "x"}))
    with pytest.raises(InputError, match="holds no STAC item"):
        stac_rasters(write_json(tmp_path / "empty.json", stac_collection()))
    with pytest.raises(ConfigError, match="--asset rgb: picks the asset of STAC items"):
        write_on_grid(tmp_path / "a.tif", rgb_image(8, 8))
        resolve_inputs([tmp_path / "a.tif"], "rgb")
    assert is_stac_document("https://h/search.geojson?token=1") and not is_stac_document("a.tif")


def test_served_document_hrefs_resolved_against_its_url(tmp_path):
    (tmp_path / "items").mkdir()
    item = stac_item("a", {"rgb": ("../cog/a.tif", GEOTIFF, ["visual"]),
                           "s3": ("s3://bucket/a.tif", GEOTIFF, ["data"])})
    write_json(tmp_path / "items" / "a.json", item)
    with ServedFolder(tmp_path, token=SECRET) as server:
        rasters, note = stac_rasters(server.url("items/a.json", token=SECRET))
        assert rasters == [f"/vsicurl/http://127.0.0.1:{server.port}/cog/a.tif"]
        assert note == f"http://127.0.0.1:{server.port}/items/a.json: 1 STAC item, asset 'rgb' (by role: visual, else data)"
        assert stac_rasters(server.url("items/a.json", token=SECRET), "s3")[0] == ["/vsis3/bucket/a.tif"]
        with pytest.raises(InputError, match=r"^http://127\.0\.0\.1:\d+/items/b\.json: not found \(HTTP 404\)$"):
            stac_rasters(server.url("items/b.json", token=SECRET))
