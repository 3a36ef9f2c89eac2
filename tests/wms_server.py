"""A minimal WMS and WMTS on 127.0.0.1 for the tests: GetMap and tiles render PNG images from a local raster.

Requests on the raster's pixel grid (what GDAL's WMS client asks for a
service description whose data window is the raster's) get the raster's
own pixels, unresampled; others are read resampled (nearest). The WMTS has
one layer and one tile matrix, the raster's grid (RESTful tile URLs). The
server counts requests, keeps their paths and the most it served at once.
"""

from __future__ import annotations

import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from caswit_geo.geo.forks import track

TILE = 256  # WMTS tile side, px


class WmsServer:
    """``with WmsServer(raster) as server:`` serves ``server.url``; ``delay``: seconds each GetMap takes."""

    def __init__(self, raster: Path, delay: float = 0.0) -> None:
        self.raster, self.delay = Path(raster), delay
        with rasterio.open(self.raster) as src:
            self.data = src.read()
            self.transform, self.crs = src.transform, src.crs
        self.requests = 0
        self.paths: list[str] = []  # every request's path and query, as the client sent it
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/wms?"

    def __enter__(self) -> "WmsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def render(self, bbox: tuple[float, float, float, float], width: int, height: int) -> bytes:
        """The PNG of ``bbox`` at ``width`` x ``height`` (nearest pixel centres; 0 outside the raster)."""
        left, bottom, right, top = bbox
        inv = ~self.transform
        cols = (np.arange(width) + 0.5) * (right - left) / width + left
        rows = top - (np.arange(height) + 0.5) * (top - bottom) / height
        c = np.floor((inv * (cols, np.full_like(cols, top)))[0]).astype(int)
        r = np.floor((inv * (np.full_like(rows, left), rows))[1]).astype(int)
        bands, h, w = self.data.shape
        inside = ((r >= 0) & (r < h))[:, None] & ((c >= 0) & (c < w))[None, :]
        image = np.where(inside, self.data[:, r.clip(0, h - 1)][:, :, c.clip(0, w - 1)], 0).astype(self.data.dtype)
        with MemoryFile() as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a PNG of a GetMap has no georeferencing
            with mem.open(driver="PNG", width=width, height=height, count=bands, dtype=image.dtype) as dst:
                dst.write(image)
            return mem.read()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                # it renders with GDAL: a fork of the process under test waits until it is gone (geo/forks.py)
                track(threading.current_thread())
                # in flight: from the request to its answer's last byte but one; the client cannot send its
                # next request before that byte, so requests counted together were truly concurrent
                with server.lock:
                    server.requests += 1
                    server.paths.append(self.path)
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    status, kind, body = self._answer(urlparse(self.path))
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:-1])
                    self.wfile.flush()
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self.wfile.write(body[-1:])

            def _answer(self, url) -> tuple[int, str, bytes]:
                if url.path == "/wmts/caps.xml":
                    return 200, "application/xml", server.capabilities().encode()
                if server.delay:
                    time.sleep(server.delay)
                if url.path.startswith("/wmts/"):  # /wmts/{TileMatrix}/{TileRow}/{TileCol}.png: the raster's grid
                    try:
                        _, _, matrix, row, col = url.path.removesuffix(".png").split("/")
                        row, col = int(row), int(col)
                    except ValueError:
                        return 404, "text/plain", b"no such tile"
                    t, side = server.transform, TILE * server.transform.a
                    left, top = t.c + col * side, t.f - row * side
                    return 200, "image/png", server.render((left, top - side, left + side, top), TILE, TILE)
                query = {k.upper(): v[0] for k, v in parse_qs(url.query).items()}
                if query.get("REQUEST", "").lower() != "getmap":
                    return 400, "text/plain", b"only GetMap"
                bbox = tuple(float(v) for v in query["BBOX"].split(","))
                return 200, "image/png", server.render(bbox, int(query["WIDTH"]), int(query["HEIGHT"]))

        return Handler

    def capabilities(self) -> str:
        """A WMTS GetCapabilities document: one layer, one tile matrix on the raster's grid (RESTful tiles)."""
        _, h, w = self.data.shape
        t = self.transform
        base = self.url.removesuffix("/wms?")
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" version="1.0.0">
 <Contents>
  <Layer>
   <ows:Identifier>ortho</ows:Identifier>
   <Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
   <Format>image/png</Format>
   <TileMatrixSetLink><TileMatrixSet>grid</TileMatrixSet></TileMatrixSetLink>
   <ResourceURL format="image/png" resourceType="tile" template="{base}/wmts/{{TileMatrix}}/{{TileRow}}/{{TileCol}}.png"/>
  </Layer>
  <TileMatrixSet>
   <ows:Identifier>grid</ows:Identifier>
   <ows:SupportedCRS>urn:ogc:def:crs:EPSG::2154</ows:SupportedCRS>
   <TileMatrix>
    <ows:Identifier>0</ows:Identifier>
    <ScaleDenominator>{t.a / 0.00028!r}</ScaleDenominator>
    <TopLeftCorner>{t.c!r} {t.f!r}</TopLeftCorner>
    <TileWidth>{TILE}</TileWidth><TileHeight>{TILE}</TileHeight>
    <MatrixWidth>{-(-w // TILE)}</MatrixWidth><MatrixHeight>{-(-h // TILE)}</MatrixHeight>
   </TileMatrix>
  </TileMatrixSet>
 </Contents>
</Capabilities>
"""

    def wmts_xml(self, path: Path) -> Path:
        """A GDAL WMTS service description of this server's one layer."""
        base = self.url.removesuffix("/wms?")
        path.write_text(f"<GDAL_WMTS><GetCapabilitiesUrl>{base}/wmts/caps.xml</GetCapabilitiesUrl>"
                        "<Layer>ortho</Layer></GDAL_WMTS>\n")
        return path

    def service_xml(self, path: Path, epsg: int = 2154, block: int = 256) -> Path:
        """A GDAL WMS service description of this server whose data window is the raster's grid."""
        bands, h, w = self.data.shape
        t = self.transform
        path.write_text(
            "<GDAL_WMS>\n"
            f'  <Service name="WMS"><Version>1.1.1</Version><ServerUrl>{self.url}</ServerUrl>'
            f"<SRS>EPSG:{epsg}</SRS><ImageFormat>image/png</ImageFormat><Layers>ortho</Layers></Service>\n"
            f"  <DataWindow><UpperLeftX>{t.c!r}</UpperLeftX><UpperLeftY>{t.f!r}</UpperLeftY>"
            f"<LowerRightX>{t.c + w * t.a!r}</LowerRightX><LowerRightY>{t.f + h * t.e!r}</LowerRightY>"
            f"<SizeX>{w}</SizeX><SizeY>{h}</SizeY></DataWindow>\n"
            f"  <BandsCount>{bands}</BandsCount><BlockSizeX>{block}</BlockSizeX><BlockSizeY>{block}</BlockSizeY>\n"
            "  <MaxConnections>8</MaxConnections>\n"
            "</GDAL_WMS>\n"
        )
        return path


__all__ = ["WmsServer"]
