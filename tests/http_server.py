"""A small HTTP server over a folder, on 127.0.0.1, for tests of inputs read over the network.

It answers GET and HEAD like a static file host (a COG bucket, a STAC
catalogue): single byte ranges (``Range: bytes=a-b``, ``206``), ``ETag``
and ``Last-Modified``, ``404`` for what it does not have. Optional rules
make it hostile the way real hosts are:

* ``token``: a query parameter ``token=<value>`` is required (a signed URL); else ``403``;
* ``auth``: ``(user, password)`` for HTTP Basic authentication; else ``401``;
* ``dead``: set it to True (from any thread) and every later request is
  answered by a closed connection, as from a server that died;
* ``stalled``: set it to True and every later request waits, unanswered;
* ``flaky = N``: every N-th request is answered ``503`` (a transient failure).

It counts what it served (``requests``, ``bytes_sent``), so that a test or
a benchmark can say how much was read and how. Routes (``routes``) answer
a path with a function of the request (a WMS endpoint, a generated page)
instead of a file.

    with ServedFolder(tmp_path) as server:
        url = server.url("ortho.tif")
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import multiprocessing
import queue
import re
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Request:
    method: str
    path: str  # the path, without the query
    query: str
    range: str | None
    client: int = 0  # the client's port: one per connection
    status: int = 0
    sent: int = 0  # body bytes


class ServedFolder:
    """An HTTP server on 127.0.0.1 serving ``root`` (see the module docstring), in a process of its own.

    Its own process: GDAL may hold this process's GIL while it waits for an
    answer (a server thread here would then never answer), and timings
    compare a server that is not competing with the client for it.
    ``routes`` values must be picklable (module-level functions).
    """

    def __init__(self, root: str | Path, *, token: str | None = None, auth: tuple[str, str] | None = None,
                 routes: dict[str, Callable[["Request"], tuple[int, dict, bytes]]] | None = None):
        ctx = multiprocessing.get_context("spawn")
        self.root = Path(root)
        self.auth = auth
        self.routes = dict(routes or {})
        self._state = ctx.Array("i", 3)  # dead (1) or stalled (2); flaky every N; requests so far
        self._token = ctx.Array("c", 1024)
        self.token = token
        self._log = ctx.Queue()
        self._ready = ctx.Queue()
        self._requests: list[Request] = []
        self._process = ctx.Process(target=_serve, args=(self.root, self.auth, self.routes, self._state, self._token,
                                                           self._log, self._ready), daemon=True)
        self.port = 0

    # -- life -------------------------------------------------------------------------------------

    def __enter__(self) -> "ServedFolder":
        self._process.start()
        self.port = self._ready.get(timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self._process.join(10)

    def url(self, path: str = "", *, token: str | None = None, user: tuple[str, str] | None = None) -> str:
        """``http://127.0.0.1:<port>/<path>``, with ``?token=`` and ``user:password@`` when given."""
        auth = f"{user[0]}:{user[1]}@" if user else ""
        query = f"?token={token}" if token is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}/{path.lstrip('/')}{query}"

    # -- rules that change while it runs ----------------------------------------------------------

    @property
    def dead(self) -> bool:
        return self._state[0] == 1

    @dead.setter
    def dead(self, value: bool) -> None:
        self._state[0] = 1 if value else 0

    @property
    def stalled(self) -> bool:
        return self._state[0] == 2

    @stalled.setter
    def stalled(self, value: bool) -> None:
        self._state[0] = 2 if value else 0

    @property
    def flaky(self) -> int:
        return self._state[1]

    @flaky.setter
    def flaky(self, every: int) -> None:
        self._state[1] = every

    @property
    def token(self) -> str | None:
        value = self._token.value.decode()
        return value[1:] if value else None

    @token.setter
    def token(self, value: str | None) -> None:
        self._token.value = b"" if value is None else ("=" + value).encode()

    # -- counts -----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """Every request answered so far (method, path, range, status, body bytes)."""
        while True:
            try:
                self._requests.append(self._log.get(timeout=0.2))
            except queue.Empty:
                return list(self._requests)

    @property
    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.requests)

    def reset_counts(self) -> None:
        self.requests
        self._requests.clear()


def _serve(root, auth, routes, state, token, log, ready) -> None:
    """The server process: answers until terminated."""
    rules = _Rules(root, auth, routes, state, token, log)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rules))
    server.daemon_threads = True
    ready.put(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


@dataclass
class _Rules:
    root: Path
    auth: tuple[str, str] | None
    routes: dict
    state: object
    _token: object
    log: object

    def mode(self) -> str:
        """How to answer the next request: "dead", "stalled", "flaky" (a 503) or "" (normally)."""
        with self.state.get_lock():
            self.state[2] += 1
            count, mode, every = self.state[2], self.state[0], self.state[1]
        return {1: "dead", 2: "stalled"}.get(mode) or ("flaky" if every and count % every == 0 else "")

    @property
    def token(self) -> str | None:
        value = self._token.value.decode()
        return value[1:] if value else None

    def _record(self, request: Request) -> None:
        self.log.put(request)


def file_etag(path: Path) -> str:
    st = path.stat()
    return '"' + hashlib.sha1(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()[:16] + '"'


def _handler(server: _Rules):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            parts = urlsplit(self.path)
            request = Request(self.command, unquote(parts.path), parts.query, self.headers.get("Range"),
                              self.client_address[1])
            try:
                self._route(request, parts, body)
            finally:
                server._record(request)

        def _route(self, request: Request, parts, body: bool) -> None:
            mode = server.mode()
            if mode == "dead":  # a dead server: the connection closes without a word
                self.close_connection = True
                return
            while mode == "stalled":  # a server that stopped answering (until it is terminated)
                time.sleep(0.05)
                mode = "stalled" if server.state[0] == 2 else ""
            if mode == "flaky":
                return self._status(request, 503)
            if server.auth is not None and not self._authorised():
                return self._status(request, 401, {"WWW-Authenticate": 'Basic realm="test"'})
            if server.token is not None and parse_qs(parts.query).get("token") != [server.token]:
                return self._status(request, 403)
            route = server.routes.get(request.path)
            if route is not None:
                status, headers, data = route(request)
                return self._send(request, status, headers, data if body else b"", len(data))
            path = (server.root / request.path.lstrip("/")).resolve()
            if server.root.resolve() not in path.parents or not path.is_file():
                return self._status(request, 404)
            self._file(request, path, body)

        def _authorised(self) -> bool:
            header = self.headers.get("Authorization", "")
            user, password = server.auth
            expected = base64.b64encode(f"{user}:{password}".encode()).decode()
            return header == f"Basic {expected}"

        def _file(self, request: Request, path: Path, body: bool) -> None:
            size = path.stat().st_size
            headers = {"ETag": file_etag(path), "Accept-Ranges": "bytes",
                       "Last-Modified": email.utils.formatdate(path.stat().st_mtime, usegmt=True),
                       "Content-Type": "application/octet-stream"}
            start, end = 0, size - 1
            status = 200
            match = _RANGE.match(request.range or "")
            if match and (match.group(1) or match.group(2)):  # a multi-range is answered whole, as HTTP allows
                a, b = match.groups()
                if a:
                    start, end = int(a), min(int(b) if b else size - 1, size - 1)
                else:  # the last N bytes
                    start, end = max(size - int(b), 0), size - 1
                if start >= size:
                    return self._status(request, 416, {"Content-Range": f"bytes */{size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            length = end - start + 1
            self._send(request, status, headers, b"", length)
            if body:  # by the kernel (sendfile): the server costs little beside the client it serves
                with open(path, "rb") as f:
                    request.sent = self.connection.sendfile(f, start, length)

        def _status(self, request: Request, status: int, headers: dict | None = None) -> None:
            self._send(request, status, headers or {}, b"", 0)

        def _send(self, request: Request, status: int, headers: dict, data: bytes, length: int) -> None:
            request.status, request.sent = status, len(data)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if data:
                self.wfile.write(data)

    return Handler


__all__ = ["Request", "ServedFolder", "file_etag"]
