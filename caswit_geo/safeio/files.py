"""Temporary names beside their destination, and the renames that publish them.

A temporary sits beside its destination (same file system: the final rename
is atomic) under a hidden name carrying the owner's process token
(``liveness.py``)::

    .<name>.caswit-<token>.part<suffix>
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import shutil
import sys
from pathlib import Path

from caswit_geo.core.errors import OutputError
from caswit_geo.safeio.liveness import MARK, process_token

_counter = itertools.count()


def temp_path(dest: str | Path, suffix: str | None = None) -> Path:
    """A unique hidden temporary name beside ``dest`` owned by this process (nothing is created).

    The caller must hold the folder (:func:`hold_folder`) while the temporary exists.
    """
    dest = Path(dest)
    suffix = dest.suffix if suffix is None else suffix
    return dest.with_name(f".{dest.name}{MARK}{process_token()}.{next(_counter)}.part{suffix}")


# the longest name derived from an output's: its legend sidecar moved aside while replaced,
# ".<name>.aux.xml.caswit-<token>.<n>.part.old"; a few digits spare for the counter
_SIDECAR = ".aux.xml"
_COUNTER_SPARE = 6


def derived_name_overhead() -> int:
    """Bytes that caswit-geo's hidden temporary names add to an output's file name, at most."""
    sample = temp_path(Path("x" + _SIDECAR), BACKUP_SUFFIX).name
    return len(sample.encode()) - 1 + _COUNTER_SPARE


def check_name_length(dest: Path, option: str) -> None:
    """Refuse an output name too long for the temporaries written beside it (one line, before any write).

    The budget counts the output's legend sidecar, so a sidecar added after its output fits already.
    """
    if dest.name.endswith(_SIDECAR):
        return
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        name_max = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    size, overhead = len(dest.name.encode()), derived_name_overhead()
    if size + overhead > name_max:
        raise OutputError(
            f"{option} {dest}: a file name of {size} bytes is too long here; the hidden temporary names "
            f"written beside it add up to {overhead} bytes and the file system allows {name_max}: "
            f"use at most {name_max - overhead}"
        )


def remove_path(path: str | Path) -> None:
    """Remove a file, link or folder tree; missing is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = None


def rename_noreplace(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` to ``dst``, failing with ``FileExistsError`` if ``dst`` exists (files and folders).

    Uses ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system
    offer it; else a hard link (files) or an existence check (folders, a
    small race window on such file systems only).
    """
    global _libc
    src, dst = os.fspath(src), os.fspath(dst)
    if sys.platform.startswith("linux"):
        try:
            if _libc is None:
                _libc = ctypes.CDLL(None, use_errno=True)
            fn = _libc.renameat2
        except (OSError, AttributeError):
            fn = None
        if fn is not None:
            if fn(_AT_FDCWD, src.encode(), _AT_FDCWD, dst.encode(), _RENAME_NOREPLACE) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                raise OSError(err, os.strerror(err), dst)
    if os.path.isdir(src):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
        os.rename(src, dst)
        return
    os.link(src, dst)  # FileExistsError if dst exists
    os.unlink(src)


BACKUP_SUFFIX = ".old"  # outputs.OutputSet moves a replaced output aside under temp_path(dest, ".old")


def backup_destination(name: str, token: str) -> str | None:
    """The destination a moved-aside output of ``token`` came from, if ``name`` is such a backup."""
    tail = f"{MARK}{token}."
    if not (name.startswith(".") and name.endswith(".part" + BACKUP_SUFFIX) and tail in name):
        return None
    return name[1 : name.rindex(tail)] or None


def fsync_file(path: str | Path) -> None:
    """Flush a written file to disk (before a rename publishes it, so that a power loss cannot
    leave a complete name on incomplete data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def usual_permissions(path: str | Path) -> None:
    """Give ``path`` the mode a new file of the user's gets (some writers create 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
