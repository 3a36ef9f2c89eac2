"""User-facing errors.

Every error a user can cause (bad file, bad option, bad checkpoint) is raised as
a subclass of :class:`CaswitError` with a one-line message that names the file
or option and the problem. The CLI prints that line and exits non-zero; only
``--debug`` shows a traceback.

Two translations live here because every command needs them and they must
not depend on torch or GDAL: :func:`user_message` recovers the original
message of an error raised in a DataLoader worker, and :func:`no_space_error`
recognises a full disk whatever layer reported it (Python, GDAL, SQLite).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Iterator


class CaswitError(Exception):
    """Base class of the errors the CLI reports as one line."""


class InputError(CaswitError):
    """An input raster, vector or data set cannot be used."""


class OutputError(CaswitError):
    """An output cannot be written (exists, folder missing, not writable)."""


class DiskFullError(OutputError):
    """The file system of an output filled up while writing."""


class CheckpointError(CaswitError):
    """A checkpoint or weights file is missing, corrupt or does not fit."""


class ConfigError(CaswitError):
    """A model name, option or config file is invalid."""


class DatasetError(CaswitError):
    """A data set tree, split file or label raster is invalid."""


# ---------------------------------------------------------------------------
# Errors raised in DataLoader workers
# ---------------------------------------------------------------------------

# torch re-raises a worker's exception as the same type with the text
# "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...": the
# original exception is the last "<module.Type>: <message>" after the frames.
_WORKER_WRAPPER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")
_FINAL_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+)(?:: (.*))?$", re.S)


def unwrap_worker_error(text: str) -> tuple[str, str] | None:
    """``(type name, message)`` of the original exception in a worker wrapper text, else None."""
    if not _WORKER_WRAPPER.match(text):
        return None
    lines = text.rstrip("\n").split("\n")
    # the original exception follows the last indented line (a frame or its source line)
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=0)
    final = "\n".join(lines[last_frame + 1 :]).strip()
    match = _FINAL_LINE.match(final)
    if match is None:
        return None
    return match.group(1), match.group(2) or ""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def user_message(exc: BaseException) -> tuple[str, str]:
    """``(type name, one-line message)`` to show for ``exc``, unwrapped from a DataLoader worker."""
    name, text = type(exc).__name__, str(exc)
    original = unwrap_worker_error(text)
    if original is not None:
        name, text = original
    return name, one_line(text)


# ---------------------------------------------------------------------------
# Full disks
# ---------------------------------------------------------------------------

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = (
    "no space left on device",  # strerror(ENOSPC), also in GDAL and worker messages
    "disk quota exceeded",
    "database or disk is full",  # SQLite (GeoPackage)
    "free disk space available is",  # GDAL's GTiff pre-flight check
)
# GDAL and SQLite do not always say why a write failed (rasterio: "Write failed"; a GeoPackage:
# "no such table"): a failed write that leaves less than this free is taken for a full disk
LOW_SPACE_BYTES = 1 << 20


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, outward to inward (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def says_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it chains reports a full disk (errno or message)."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(e).lower()
        if any(marker in text for marker in _DISK_FULL_TEXT):
            return True
    return False


# libraries whose write failures may hide the reason (besides OSError)
_IO_MODULES = ("rasterio", "pyogrio", "fiona", "sqlite3", "_sqlite3")


def _from_io(exc: BaseException) -> bool:
    """True when ``exc`` is (or chains) a failure of the file system or of a file format library."""
    if isinstance(exc, CaswitError):
        return False
    return any(isinstance(e, OSError) or type(e).__module__.split(".")[0] in _IO_MODULES for e in exception_chain(exc))


def free_bytes(folder: str | Path) -> int | None:
    """Bytes this process may still write in ``folder`` (None when unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return blocks * st.f_frsize


def no_space_error(exc: BaseException, folder: str | Path) -> DiskFullError | None:
    """``DiskFullError("no space left on <folder>")`` when ``exc`` comes from a full disk, else None.

    Call it where the failure happened, before temporary files are removed:
    a write that failed without a reason counts as disk full only while
    ``folder`` has (almost) no free space left.
    """
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return None
    full = says_disk_full(exc)
    if not full and _from_io(exc):
        free = free_bytes(folder)
        full = free is not None and free < LOW_SPACE_BYTES
    if not full:
        return None
    error = DiskFullError(f"no space left on {os.path.abspath(folder)}")
    error.__cause__ = exc  # --debug shows what failed
    return error


@contextlib.contextmanager
def disk_full_guard(folder: str | Path) -> Iterator[None]:
    """Re-raise a full-disk failure in the block as ``DiskFullError`` naming ``folder``."""
    try:
        yield
    except Exception as exc:
        full = no_space_error(exc, folder)
        if full is None or full is exc:
            raise
        raise full from exc
