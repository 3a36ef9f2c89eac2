"""A minimal WMS on 127.0.0.1 for the tests: GetMap renders PNG images from a local raster.

Requests on the raster's pixel grid (what GDAL's WMS client asks for a
service description whose data window is the raster's) get the raster's
own pixels, unresampled; others are read resampled (nearest). The server
counts requests and the most it served at once.
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


class WmsServer:
    """``with WmsServer(raster) as server:`` serves ``server.url``; ``delay``: seconds each GetMap takes."""

    def __init__(self, raster: Path, delay: float = 0.0) -> None:
        self.raster, self.delay = Path(raster), delay
        with rasterio.open(self.raster) as src:
            self.data = src.read()
            self.transform, self.crs = src.transform, src.crs
        self.requests = 0
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
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    query = {k.upper(): v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                    if query.get("REQUEST", "").lower() != "getmap":
                        self.send_error(400, "only GetMap")
                        return
                    if server.delay:
                        time.sleep(server.delay)
                    bbox = tuple(float(v) for v in query["BBOX"].split(","))
                    body = server.render(bbox, int(query["WIDTH"]), int(query["HEIGHT"]))
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler

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
