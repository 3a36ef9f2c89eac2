"""Rasters behind URLs: GDAL names, masked names, identity, and the GDAL options to read them.

An input ``https://host/ortho.tif`` is read through GDAL's ``/vsicurl/``
(ranged requests: only the blocks a tile needs travel, never the whole
file); GDAL's own virtual names (``/vsicurl/``, ``/vsis3/``, ``/vsigs/``,
``/vsiaz/``, ...) are taken as they are, credentials coming from GDAL's
usual variables (``AWS_*``, ``GS_*``, ``AZURE_*``). A remote name stays a
string: a ``Path`` would fold its ``//``.

Secrets ride in URLs: a signed URL's query (``?X-Amz-Signature=...``,
``?token=...``) and ``user:password@``. :func:`mask` (one name) and
:func:`mask_text` (any message) drop both; every name shown or stored
(messages, logs, ``plan.json``, output tags) goes through them.

The identity of a remote input for ``--resume`` (:func:`remote_identity`)
is its URL without the query, with the size and the ETag or Last-Modified
the server gives: a signed URL with a fresh token is the same input, a
file replaced on the server is not. It is learnt with one request of a
single byte (servers that sign GET only refuse HEAD), retried when the
failure is transient; a permanent one (404, 403, a host that does not
resolve) is one line naming the masked URL.

No GDAL import here: the CLI masks its messages with this module before
anything heavy is loaded.
"""

from __future__ import annotations

import base64
import ctypes
import email.utils
import functools
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from caswit_geo.core.errors import InputError

URL_SCHEMES = ("http://", "https://")
# GDAL's network file systems (the ones that read objects by name, with credentials from the environment)
VSI_NETWORK = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/", "/vsiwebhdfs/")
# object store URLs some catalogues give (STAC assets on S3 or GCS): the GDAL name of each
_BUCKET_SCHEMES = {"s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/"}
# GDAL's WMTS connection string, WMTS:URL[,key=value]... (geo/webmap.py): a service read over the network
CONNECTION_PREFIX = "WMTS:"
# a URL inside any text (a GDAL message, a command line): scheme, then up to a space or a quote
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")

HTTP_TIMEOUT = 60  # seconds a request may wait for the server (GDAL_HTTP_TIMEOUT unless set)
CONNECT_TIMEOUT = 20  # seconds to connect (GDAL_HTTP_CONNECTTIMEOUT unless set)
MAX_RETRY = 3  # transient failures retried (GDAL_HTTP_MAX_RETRY unless set)
RETRY_DELAY = 1.0  # seconds before the first retry, doubled at each (GDAL_HTTP_RETRY_DELAY unless set)
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
PROBE_THREADS = 8  # inputs probed at once (a list of hundreds of tiles)
# GDAL's /vsicurl/ cache of downloaded ranges (per process). The readers and the LR pre-pass read the
# same blocks at different times: at 32 MB a 4096 px COG travelled 1.5 times, at 128 MB 0.8 times (only
# what is read). GDAL sizes it once, when a process first reads a URL: one value for every caller.
CURL_CACHE_BYTES = 128 << 20
# GDAL's disk cache of web map tiles (~/.cache/gdalwmscache, kept 7 days; a WMTS connection string uses it):
# off unless the user's environment sets GDAL_ENABLE_WMS_CACHE (geo/webmap.py: service_options)
TILE_CACHE_OFF = {"GDAL_ENABLE_WMS_CACHE": "NO"}
MAX_KNOWN_SIZES = 1 << 16  # sizes of probed files remembered for reports (known_size)
_SIZES: dict[str, int] = {}


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def is_url(name: str | Path) -> bool:
    return str(name).lower().startswith(URL_SCHEMES)


def is_remote(name: str | Path) -> bool:
    """A URL or a GDAL network name (read over the network, never a local path)."""
    s = str(name)
    return (is_url(s) or s.startswith(VSI_NETWORK) or s.lower().startswith(tuple(_BUCKET_SCHEMES))
            or is_connection_string(s))


def is_connection_string(name: str | Path) -> bool:
    """A GDAL ``WMTS:`` connection string (GDAL takes the prefix in any case)."""
    return str(name)[: len(CONNECTION_PREFIX)].upper() == CONNECTION_PREFIX


def split_connection_string(name: str | Path) -> tuple[str, list[str]]:
    """(the GetCapabilities URL, the ``key=value`` options) of a ``WMTS:`` connection string.

    Split on commas as GDAL splits it: the URL first, a part in double
    quotes (a URL holding commas) kept whole, without its quotes.
    """
    parts, part, quoted = [], [], False
    for c in str(name)[len(CONNECTION_PREFIX):]:
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            parts.append("".join(part))
            part = []
        else:
            part.append(c)
    parts.append("".join(part))
    return parts[0].strip(), [p.strip() for p in parts[1:]]


def gdal_name(name: str) -> str:
    """The name GDAL opens: ``/vsicurl/`` before an http(s) URL, ``/vsis3/`` for ``s3://``; others as given."""
    if is_url(name):
        return "/vsicurl/" + name
    for scheme, vsi in _BUCKET_SCHEMES.items():
        if name.lower().startswith(scheme):
            return vsi + name[len(scheme):]
    return name


def http_url(name: str | Path) -> str | None:
    """The http(s) URL behind ``name`` (a URL or a ``/vsicurl/`` name), None for other names."""
    s = str(name)
    if s.startswith("/vsicurl/"):
        s = s[len("/vsicurl/"):]
    return s if is_url(s) else None


def _mask_url(url: str) -> str:
    """``url`` without ``user:password@``, query and fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable: keep only what is before any query or userinfo
        return url.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def mask(name: str | Path) -> str:
    """``name`` as it may be shown or stored: a URL without credentials nor query (local paths as they are)."""
    s = str(name)
    if not is_remote(s):
        return s
    if is_connection_string(s):  # the URL masked, the options (layer, style...) kept: they say which imagery
        url, options = split_connection_string(s)
        url = mask(url)
        return CONNECTION_PREFIX + ",".join([f'"{url}"' if "," in url else url, *options])
    if s.startswith("/vsi") and not http_url(s):  # /vsis3/bucket/key: no secret in the name, but a query may be
        return s.split("?", 1)[0]
    return mask_text(s)


def mask_text(text: str) -> str:
    """``text`` with every URL in it masked (:func:`mask`): for messages that may quote a URL."""
    if "://" not in text:
        return text

    def masked(match: re.Match) -> str:
        url = match.group(0)
        trail = len(url) - len(url.rstrip(".,;:)]"))  # the sentence's punctuation, not the URL's
        return _mask_url(url[: len(url) - trail]) + url[len(url) - trail:]

    return _URL_IN_TEXT.sub(masked, text)


def input_name(name: str | Path) -> str:
    """The file name of an input, for messages and tags: ``ortho.tif`` for ``https://h/a/ortho.tif?sig=...``."""
    s = str(name)
    if not is_remote(s):
        return Path(s).name
    if is_connection_string(s):  # a service: its layer's name, else its GetCapabilities document's
        url, options = split_connection_string(s)
        layers = [o.split("=", 1)[1] for o in options if o.lower().startswith("layer=")]
        return layers[-1] if layers and layers[-1] else input_name(url)
    path = urlsplit(http_url(s)).path if http_url(s) else mask(s)
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or mask(s)


def input_stem(name: str | Path) -> str:
    """:func:`input_name` without its suffix (per-file outputs are named after it)."""
    return Path(input_name(name)).stem


# ---------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------


def remote_identity(name: str) -> dict:
    """``{"path", "size", "mtime_ns"[, "etag"]}`` of a remote input, for ``plan.json``.

    ``path`` is the masked name. For http(s) the size and ETag or
    Last-Modified come from the server (one request, :func:`probe`); for
    object stores (``/vsis3/``, ...) the name alone is the identity.
    """
    name = gdal_name(name)  # "https://..." and "/vsicurl/https://..." are one input
    url = http_url(name)
    if url is None:
        return {"path": mask(name), "size": 0, "mtime_ns": 0}
    size, etag, modified = probe(url)
    if len(_SIZES) > MAX_KNOWN_SIZES:
        _SIZES.clear()
    _SIZES[name] = size
    record = {"path": mask(name), "size": size, "mtime_ns": modified}
    if etag:
        record["etag"] = etag[:256]
    return record


def known_size(name: str) -> int:
    """The size of remote file ``name`` as last probed in this process (0 if never): for reports only,
    never for identity (a file replaced since is probed again)."""
    return _SIZES.get(gdal_name(str(name)), 0)


def remote_identities(names: Sequence[str | Path]) -> dict[str, dict]:
    """:func:`remote_identity` of every remote name in ``names``, probed a few at once."""
    remote = [str(n) for n in names if is_remote(n)]
    if not remote:
        return {}
    with ThreadPoolExecutor(min(PROBE_THREADS, len(remote))) as pool:
        return dict(zip(remote, pool.map(remote_identity, remote)))


def probe(url: str) -> tuple[int, str | None, int]:
    """(size, ETag or None, Last-Modified in ns or 0) of ``url``; InputError naming it (masked) when it
    cannot be read. Transient failures are retried, up to GDAL_HTTP_MAX_RETRY times."""
    def read(answer, label: str) -> tuple[int, str | None, int]:
        size = _size(answer.headers, answer.status)
        if size is None:
            raise InputError(f"{label}: the server gives no size for it (no Content-Range or "
                             "Content-Length): GDAL cannot read it by ranges")
        return size, answer.headers.get("ETag"), _modified_ns(answer.headers.get("Last-Modified"))

    return _with_retries(url, {"Range": "bytes=0-0"}, read)


def fetch_bounded(url: str, max_bytes: int, what: str) -> bytes:
    """The body of ``url`` (a STAC document), refused past ``max_bytes``; InputError naming it (masked)."""
    def read(answer, label: str) -> bytes:
        body = answer.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise InputError(f"{label}: {what} is more than the {max_bytes >> 20} MiB caswit-geo reads")
        return body

    return _with_retries(url, {}, read)


def _with_retries(url: str, headers: dict, read):
    """``read(answer, masked url)`` of a GET of ``url``, retried on transient failures (doubling delays)."""
    request, label = _request(url, headers)
    retries, delay = _retry_settings()
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            with urllib.request.urlopen(request, timeout=_setting("GDAL_HTTP_TIMEOUT", HTTP_TIMEOUT)) as answer:
                return read(answer, label)
        except urllib.error.HTTPError as e:
            if e.code not in TRANSIENT_STATUS or last:
                raise InputError(f"{label}: {_status_text(e.code)}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, socket.gaierror):
                raise InputError(f"{label}: host {urlsplit(url).hostname} does not resolve") from None
            if last:
                raise InputError(f"{label}: cannot connect ({mask_text(str(e.reason))[:200]})") from None
        except (OSError, ValueError) as e:  # reset, closed without a reply, timed out
            if last:
                raise InputError(f"{label}: no answer from the server ({mask_text(str(e))[:200] or type(e).__name__}, "
                                 f"{retries + 1} tries)") from None
        time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


def _request(url: str, headers: dict) -> tuple[urllib.request.Request, str]:
    """The request for ``url`` (``user:password@`` as Basic authentication, as curl does) and its masked name."""
    parts = urlsplit(url)
    headers = dict(headers)
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        token = base64.b64encode(unquote(userinfo).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        url = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    return urllib.request.Request(url, headers={"User-Agent": "caswit-geo", **headers}), mask(url)


def _status_text(code: int) -> str:
    known = {401: "needs credentials (HTTP 401): user:password@ in the URL, or GDAL_HTTP_USERPWD",
             403: "access refused (HTTP 403): an expired signed URL, or credentials missing",
             404: "not found (HTTP 404)", 410: "gone (HTTP 410)"}
    return known.get(code, f"the server answers HTTP {code}")


def _size(headers, status: int) -> int | None:
    content_range = headers.get("Content-Range", "")
    if status == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = headers.get("Content-Length", "")
    return int(length) if status == 200 and length.isdigit() else None


def _modified_ns(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) * 10**9
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0


def _setting(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 else default


def _retry_settings() -> tuple[int, float]:
    return int(_setting("GDAL_HTTP_MAX_RETRY", MAX_RETRY)), _setting("GDAL_HTTP_RETRY_DELAY", RETRY_DELAY)


# ---------------------------------------------------------------------------
# GDAL options
# ---------------------------------------------------------------------------


def gdal_remote_options(names: Sequence[str | Path], open_files: int = 32) -> dict[str, str]:
    """GDAL configuration for reading ``names`` when some are remote ({} when none is).

    Bounded retries of transient failures and bounded waits (a server that
    stops answering is an error, not a hang); merged ranges; no listing of
    a URL's "folder" (no sidecar files are looked for when every input is
    remote); the ``/vsicurl/`` cache bounded (``CURL_CACHE_BYTES``), and a
    per-file cache, if the user turns one on (``VSI_CACHE``), a share of it
    for each of ``open_files``; no disk cache of web map tiles
    (``TILE_CACHE_OFF``). The GDAL block cache is the run's own
    (``GDAL_CACHEMAX``, set by the caller from its budget). A variable the
    user set in the environment wins.
    """
    if not any(is_remote(n) for n in names):
        return {}
    mask_gdal_logs()
    all_remote = all(is_remote(n) for n in names)
    options = {
        "GDAL_HTTP_MAX_RETRY": str(MAX_RETRY),
        "GDAL_HTTP_RETRY_DELAY": str(RETRY_DELAY),
        "GDAL_HTTP_TIMEOUT": str(HTTP_TIMEOUT),
        "GDAL_HTTP_CONNECTTIMEOUT": str(CONNECT_TIMEOUT),
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        # local files beside remote ones keep their sidecars (.msk, .ovr): only skip the listing then
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR" if all_remote else "TRUE",
        "CPL_VSIL_CURL_CACHE_SIZE": str(CURL_CACHE_BYTES),
        "VSI_CACHE_SIZE": str(max(CURL_CACHE_BYTES // max(open_files, 1), 1 << 20)),
        **TILE_CACHE_OFF,
    }
    return unless_set(options)


def unless_set(options: dict[str, str]) -> dict[str, str]:
    """``options`` less the variables the user set in the environment: theirs win."""
    return {k: v for k, v in options.items() if k not in os.environ}


def drop_connections() -> None:
    """Close this thread's cached HTTP connections (GDAL's ``/vsicurl/``); run before every fork.

    A forked reader inherits the forking thread's keep-alive sockets: two
    readers sending requests on one socket read each other's answers (a
    tile then fails to decode). Without them, each reader opens its own.
    A no-op where GDAL's library is not found (processes are then spawned,
    not forked: macOS, Windows).
    """
    library = _gdal_library()
    if library is not None:
        library.VSICurlClearCache()


def clear_connections_at_forks(names: Sequence[str | Path]) -> None:
    """From now on, :func:`drop_connections` before every fork of this process (idempotent).

    Predict's readers and a training DataLoader's workers (forked at every
    epoch, while this process reads the same URLs between epochs) then
    open connections of their own. A no-op when no input is remote or
    GDAL's library is not found.
    """
    if _AT_FORK or not any(is_remote(n) for n in names):
        return
    library = _gdal_library()
    if library is not None and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=drop_connections)
        _AT_FORK.append(library)


_AT_FORK: list = []  # the library whose connections are closed before forks, once registered


@functools.lru_cache(maxsize=1)
def _gdal_library():
    """rasterio's GDAL, as loaded in this process (ctypes), or None."""
    try:
        with open("/proc/self/maps") as f:
            loaded = sorted({line.split()[-1] for line in f if "libgdal" in line and "/" in line})
    except OSError:
        return None
    ours = [p for p in loaded if "rasterio" in p] or loaded  # pyogrio may load a GDAL of its own
    try:
        return ctypes.CDLL(ours[0]) if ours else None
    except OSError:
        return None


class _MaskedRecords(logging.Filter):
    """Masks the URLs in a log record: GDAL's warnings (a retried request) quote the URL, token included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_MASKED = _MaskedRecords()
# rasterio's loggers that pass on GDAL's messages (a filter applies to its own logger's records only)
GDAL_LOGGERS = ("rasterio", "rasterio._env", "rasterio._err", "rasterio._base", "rasterio._io", "rasterio.env")


def mask_gdal_logs() -> None:
    """Mask URLs in the log records of GDAL's messages (idempotent)."""
    for name in GDAL_LOGGERS:
        logger = logging.getLogger(name)
        if _MASKED not in logger.filters:
            logger.addFilter(_MASKED)


__all__ = [
    "TILE_CACHE_OFF", "clear_connections_at_forks", "drop_connections", "fetch_bounded", "gdal_name",
    "gdal_remote_options", "http_url", "input_name", "input_stem", "is_connection_string", "is_remote", "is_url",
    "known_size", "mask", "mask_gdal_logs", "mask_text", "probe", "remote_identities", "remote_identity",
    "split_connection_string", "unless_set",
]
