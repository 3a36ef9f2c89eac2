"""Remote inputs: names, masking, identity probes, against a server on 127.0.0.1."""

import os
import time

import numpy as np
import pytest
import rasterio

from caswit_geo.core.errors import InputError
from caswit_geo.geo.mosaic import describe_raster, expand_inputs, open_mosaic
from caswit_geo.geo.remote import (
    drop_connections,
    gdal_name,
    gdal_remote_options,
    input_name,
    input_stem,
    is_remote,
    mask,
    mask_text,
    probe,
    remote_identity,
    split_connection_string,
)
from caswit_geo.geo.sources import read_error, source_files
from tests.helpers import rgb_image, write_on_grid
from tests.http_server import ServedFolder, file_etag

SECRET = "tok3n-s3cret"
PASSWORD = "pa55-w0rd"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")


def test_names_masked_of_query_and_credentials():
    url = f"https://user:{PASSWORD}@example.org/a/b/ortho%20x.tif?X-Amz-Signature={SECRET}&x=1#frag"
    assert mask(url) == "https://example.org/a/b/ortho%20x.tif"
    assert mask("/vsicurl/" + url) == "/vsicurl/https://example.org/a/b/ortho%20x.tif"
    assert mask(f"/vsis3/bucket/key.tif?{SECRET}") == "/vsis3/bucket/key.tif"
    assert mask("/data/a?b.tif") == "/data/a?b.tif"  # a local path is a path
    text = f"CURL error on '/vsicurl/{url}': 404 (and http://u:{PASSWORD}@h:81/x?t={SECRET})"
    masked = mask_text(text)
    assert SECRET not in masked and PASSWORD not in masked and "user" not in masked
    assert "https://example.org/a/b/ortho%20x.tif" in masked and "http://h:81/x" in masked
    assert input_name(url) == "ortho x.tif" and input_stem("/vsicurl/" + url) == "ortho x"
    assert input_name("/vsis3/bucket/dir/key.tif") == "key.tif"


def test_wmts_connection_strings_masked_with_their_options_kept():
    name = f'wmts:"https://user:{PASSWORD}@h/wmts?a=1,b",layer=ortho.hr,style=default'
    assert split_connection_string(name) == (f"https://user:{PASSWORD}@h/wmts?a=1,b",
                                             ["layer=ortho.hr", "style=default"])
    assert is_remote(name) and gdal_name(name) == name  # GDAL opens it as it is
    assert mask(name) == 'WMTS:https://h/wmts,layer=ortho.hr,style=default' and input_name(name) == "ortho.hr"
    assert input_name("WMTS:https://h/caps/WMTSCapabilities.xml?token=t") == "WMTSCapabilities.xml"
    # the identity: the masked URL with the options: a fresh token is the same service, another layer is not
    fresh = remote_identity(f"WMTS:https://h/wmts?token={SECRET},layer=ortho.hr")
    assert fresh == remote_identity("WMTS:https://h/wmts?token=other,layer=ortho.hr")
    assert fresh["path"] != remote_identity("WMTS:https://h/wmts?token=other,layer=irc")["path"]
    assert SECRET not in str(fresh) and source_files(name) == []


def test_gdal_names_of_urls_and_buckets():
    assert gdal_name("https://h/a.tif?s=1") == "/vsicurl/https://h/a.tif?s=1"
    assert gdal_name("s3://bucket/a.tif") == "/vsis3/bucket/a.tif"
    assert gdal_name("/vsiaz/c/a.tif") == "/vsiaz/c/a.tif"
    assert all(map(is_remote, ["http://h/a.tif", "/vsigs/b/a.tif", "/vsicurl/https://h/a"]))
    assert not is_remote("/tmp/http:/a.tif") and not is_remote("ortho.tif")
    assert source_files("https://h/a.tif") == []  # nothing local to protect


def test_expand_inputs_keeps_urls_beside_local_files(tmp_path):
    write_on_grid(tmp_path / "a.tif", rgb_image(8, 8))
    url = "https://h.example/x//a.tif?sig=1"
    assert expand_inputs([tmp_path / "a.tif", url, url]) == [tmp_path / "a.tif", "/vsicurl/" + url]


def test_remote_options_bounded_and_only_for_remote_inputs(monkeypatch):
    assert gdal_remote_options(["/data/a.tif"]) == {}
    monkeypatch.delenv("GDAL_HTTP_MAX_RETRY")
    options = gdal_remote_options(["http://h/a.tif"], 32)
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert int(options["CPL_VSIL_CURL_CACHE_SIZE"]) == 128 << 20
    assert int(options["VSI_CACHE_SIZE"]) * 32 <= 128 << 20  # a per-file cache, if turned on, shares it
    assert options["GDAL_HTTP_MAX_RETRY"] == "3" and float(options["GDAL_HTTP_TIMEOUT"]) > 0
    assert "GDAL_HTTP_RETRY_DELAY" not in options  # the user's own setting wins
    mixed = gdal_remote_options(["http://h/a.tif", "/data/b.tif"])
    assert mixed["GDAL_DISABLE_READDIR_ON_OPEN"] == "TRUE"  # local sidecars still found


def test_identity_is_the_url_without_query_size_and_etag(tmp_path):
    write_on_grid(tmp_path / "a.tif", rgb_image(16, 16))
    with ServedFolder(tmp_path, token=SECRET) as server:
        first = remote_identity(gdal_name(server.url("a.tif", token=SECRET)))
        assert first == {"path": f"/vsicurl/{server.url('a.tif')}", "size": (tmp_path / "a.tif").stat().st_size,
                         "mtime_ns": int((tmp_path / "a.tif").stat().st_mtime) * 10**9,
                         "etag": file_etag(tmp_path / "a.tif")}
        server.token = "another"  # a fresh token: the same input
        assert remote_identity(server.url("a.tif", token="another")) == first
        assert [r.method for r in server.requests] == ["GET", "GET"]  # one byte each, no HEAD
        assert {r.sent for r in server.requests} == {1}
        later = time.time() + 5
        os.utime(tmp_path / "a.tif", (later, later))  # replaced on the server: another input
        assert remote_identity(server.url("a.tif", token="another"))["etag"] != first["etag"]


def test_permanent_failures_are_one_line_naming_the_masked_url(tmp_path):
    with ServedFolder(tmp_path, token=SECRET) as server:
        with pytest.raises(InputError, match=r"^http://127\.0\.0\.1:\d+/gone\.tif: not found \(HTTP 404\)$"):
            probe(server.url("gone.tif", token=SECRET))
        with pytest.raises(InputError, match="access refused") as refused:
            probe(server.url("gone.tif", token="old-t0ken"))
        assert "old-t0ken" not in str(refused.value)
        assert len(server.requests) == 2  # permanent: not retried
    with pytest.raises(InputError, match="does not resolve"):
        probe(f"http://user:{PASSWORD}@no-such-host.invalid/a.tif")


def test_basic_auth_from_the_url(tmp_path):
    write_on_grid(tmp_path / "a.tif", rgb_image(16, 16))
    with ServedFolder(tmp_path, auth=("user", PASSWORD)) as server:
        assert probe(server.url("a.tif", user=("user", PASSWORD)))[0] == (tmp_path / "a.tif").stat().st_size
        with pytest.raises(InputError, match="needs credentials") as e:
            probe(server.url("a.tif", user=("user", "wrong")))
        assert "wrong" not in str(e.value)
        info = describe_raster(gdal_name(server.url("a.tif", user=("user", PASSWORD))))  # GDAL (curl) too
        assert (info.width, info.name, PASSWORD in info.label) == (16, "a.tif", False)


def test_dead_server_is_retried_then_named(tmp_path):
    with ServedFolder(tmp_path) as server:
        server.dead = True
        with pytest.raises(InputError, match=r"^http://127\.0\.0\.1:\d+/a\.tif: no answer from the server"):
            probe(server.url("a.tif", token=SECRET))
        assert len(server.requests) == 2  # GDAL_HTTP_MAX_RETRY=1: one retry


def test_served_cog_reads_the_same_pixels_by_ranges(tmp_path):
    data = rgb_image(1024, 1024, seed=2)
    write_on_grid(tmp_path / "a.tif", data, tiled=True, blockxsize=256, blockysize=256)
    with ServedFolder(tmp_path, token=SECRET) as server:
        mosaic = open_mosaic([gdal_name(server.url("a.tif", token=SECRET))], (1, 2, 3))
        assert mosaic.files[0].name == "a.tif"
        server.reset_counts()
        with rasterio.Env(**gdal_remote_options([mosaic.source])), mosaic.open() as src:
            window = ((512, 768), (256, 512))
            np.testing.assert_array_equal(src.read(window=window), data[:, 512:768, 256:512])
        assert server.bytes_sent < (tmp_path / "a.tif").stat().st_size / 2  # ranges, not the file
        assert all(r.range for r in server.requests if r.method == "GET")


def test_read_errors_are_masked(tmp_path):
    from rasterio.errors import RasterioIOError

    url = f"/vsicurl/http://u:{PASSWORD}@h/a.tif?t={SECRET}"
    try:
        raise RasterioIOError(f"{url}: HTTP response code: 404")
    except RasterioIOError as exc:
        error = read_error(exc, [url])
    assert str(error) == "/vsicurl/http://h/a.tif: cannot read its pixels (/vsicurl/http://h/a.tif: HTTP response code: 404)"


def test_transient_failures_are_retried_and_a_stalled_server_times_out(tmp_path, monkeypatch):
    write_on_grid(tmp_path / "a.tif", rgb_image(16, 16))
    with ServedFolder(tmp_path) as server:
        server.flaky = 1  # every request a 503 ...
        with pytest.raises(InputError, match=r"/a\.tif: the server answers HTTP 503$"):
            probe(server.url("a.tif"))
        assert len(server.requests) == 2  # ... retried once (GDAL_HTTP_MAX_RETRY=1), then given up
        server.flaky = 2  # every other one: the retry succeeds
        server.reset_counts()
        assert probe(server.url("a.tif"))[0] == (tmp_path / "a.tif").stat().st_size
        assert [r.status for r in server.requests] in ([503, 206], [206])
        server.flaky, server.stalled = 0, True
        monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "0.5")
        start = time.monotonic()
        with pytest.raises(InputError, match="no answer from the server .*2 tries"):
            probe(server.url("a.tif"))
        assert time.monotonic() - start < 30  # bounded: no hang
        server.stalled = False


def test_gdal_log_records_are_masked_once_remote_inputs_are_read(caplog):
    import logging

    gdal_remote_options(["http://h/a.tif"])  # what every remote read sets up
    with caplog.at_level(logging.INFO, logger="rasterio._env"):
        logging.getLogger("rasterio._env").warning("HTTP error code: 503 - %s. Retrying again in 1 secs",
                                                   f"http://u:{PASSWORD}@h/a.tif?token={SECRET}")
    assert caplog.messages == ["HTTP error code: 503 - http://h/a.tif. Retrying again in 1 secs"]


def test_connections_are_dropped_before_readers_are_forked(tmp_path):
    """A forked reader must not inherit this thread's keep-alive socket (see drop_connections)."""
    data = rgb_image(512, 512, seed=1)
    write_on_grid(tmp_path / "a.tif", data, tiled=True, blockxsize=128, blockysize=128)
    with ServedFolder(tmp_path) as server:
        name = gdal_name(server.url("a.tif"))

        def read(window):
            with rasterio.Env(**gdal_remote_options([name])), rasterio.open(name) as src:
                return src.read(window=window)

        read(((0, 128), (0, 128)))
        before = {r.client for r in server.requests}
        read(((0, 128), (0, 128)))
        assert {r.client for r in server.requests} == before  # kept alive: one connection
        server.reset_counts()
        drop_connections()
        np.testing.assert_array_equal(read(((384, 512), (384, 512))), data[:, 384:, 384:])
        assert server.requests and not {r.client for r in server.requests} & before  # a new connection
