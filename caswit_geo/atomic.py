"""Whole-or-nothing file writes, and the litter a killed process leaves behind.

Every temporary file or folder caswit-geo creates sits beside its destination
(same file system: the final rename is atomic) under a hidden name carrying
the owner's process token::

    .<name>.caswit-<token>.part<suffix>

While it has temporary files in a folder, the process holds an exclusive
``flock`` on ``.caswit-<token>.lock`` there. The kernel drops that lock when
the process ends, however it ends (kill -9 and power loss included), so a
later process that can take the lock has *proved* the owner dead: it then
removes everything carrying the owner's token (:func:`sweep_stale`). A live
run's files are never touched. Lock files exist only while work is under way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import disk_full_guard

MARK = ".caswit-"  # every hidden name this module creates contains it
_TOKEN_RE = re.compile(r"\.caswit-([A-Za-z0-9-]+-\d+-[0-9a-f]{6})(?:\.|$)")

_state_lock = threading.RLock()
_held: dict[Path, list] = {}  # folder -> [fd, refcount] of this process's lock file there
_token: tuple[int, str] | None = None
_counter = itertools.count()


def _forget_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the lock files inherited from the parent.

    A lock belongs to the open file, which a fork shares: a child still
    holding it would keep a killed parent looking alive (and its litter
    and claims untouchable) until the child noticed and exited. Closing the
    child's copy leaves the parent's lock in place.
    """
    global _state_lock
    _state_lock = threading.RLock()  # another thread may have held it at the fork
    for entry in list(_held.values()):
        with contextlib.suppress(OSError):
            os.close(entry[0])
    _held.clear()


os.register_at_fork(after_in_child=_forget_inherited_locks)


def process_token() -> str:
    """``<host>-<pid>-<random>``: names this process's temporary files and lock files."""
    global _token
    if _token is None or _token[0] != os.getpid():  # a forked child is another owner
        host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
        _token = (os.getpid(), f"{host}-{os.getpid()}-{secrets.token_hex(3)}")
    return _token[1]


def lock_name(token: str) -> str:
    return f"{MARK}{token}.lock"


# ---------------------------------------------------------------------------
# Liveness locks
# ---------------------------------------------------------------------------


def hold_folder(folder: str | Path) -> Path:
    """Take (or re-enter) this process's liveness lock in ``folder``; sweep dead owners first.

    Pair every call with :func:`release_folder`. Raises ``OSError`` when the
    folder is not writable.
    """
    folder = Path(os.path.abspath(folder))
    with _state_lock:
        entry = _held.get(folder)
        if entry is not None and entry[2] == os.getpid():
            entry[1] += 1
            return folder
        sweep_stale(folder)
        path = folder / lock_name(process_token())
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                    "command": " ".join(sys.argv[:1] + sys.argv[1:])[:500]}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        _held[folder] = [fd, 1, os.getpid()]
        return folder


def release_folder(folder: str | Path) -> None:
    """Drop one hold on ``folder``'s lock; the last one removes the lock file."""
    folder = Path(os.path.abspath(folder))
    with _state_lock:
        entry = _held.get(folder)
        if entry is None or entry[2] != os.getpid():
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[folder]
        with contextlib.suppress(OSError):
            (folder / lock_name(process_token())).unlink()
        os.close(entry[0])


@contextlib.contextmanager
def holding(folder: str | Path) -> Iterator[Path]:
    held = hold_folder(folder)
    try:
        yield held
    finally:
        release_folder(held)


def owner_alive(folder: str | Path, token: str) -> bool:
    """True when the process of ``token`` still holds its lock in ``folder``."""
    if token == process_token():
        return True
    path = Path(folder) / lock_name(token)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _other_locks(folder: Path) -> list[tuple[Path, str]]:
    """(lock file, token) of every liveness lock in ``folder`` but this process's own."""
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return []
    tokens = [(n, n[len(MARK) : -len(".lock")]) for n in names if n.startswith(MARK) and n.endswith(".lock")]
    return [(folder / n, t) for n, t in tokens if t != process_token()]


def live_owners(folder: str | Path) -> list[str]:
    """Tokens of the other processes that hold their liveness lock in ``folder`` now."""
    return sorted(t for _, t in _other_locks(Path(folder)) if owner_alive(folder, t))


def owner_info(folder: str | Path, token: str) -> dict:
    """What the owner of ``token`` wrote in its lock file (pid, host, started, command), or {}."""
    try:
        data = json.loads((Path(folder) / lock_name(token)).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_owner(folder: str | Path, token: str) -> str:
    info = owner_info(folder, token)
    if not info:
        return "another caswit-geo process"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(info.get("started", 0))))
    return f"caswit-geo pid {info.get('pid')} on {info.get('host')} since {since}"


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary files, folders and claims of every dead owner in ``folder``.

    An owner is dead when its lock file can be locked (its process is gone).
    Returns what was removed. Never raises for files that vanish meanwhile.
    """
    folder = Path(folder)
    removed: list[Path] = []
    for lock, token in _other_locks(folder):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive
            removed += _remove_owned(folder, token)
            with contextlib.suppress(OSError):
                lock.unlink()
                removed.append(lock)
        finally:
            os.close(fd)
    return removed


def _remove_owned(folder: Path, token: str) -> list[Path]:
    from .claims import remove_claims_of  # claims name their owner's token inside the file

    removed = []
    for p in folder.iterdir():
        if p.name.endswith(".lock") or f"{MARK}{token}" not in p.name:
            continue
        dest = backup_destination(p.name, token)
        if dest is not None and not os.path.lexists(folder / dest):
            # killed between moving a replaced output aside and renaming its successor in:
            # the old output goes back where it was
            with contextlib.suppress(OSError):
                os.rename(p, folder / dest)
                continue
        remove_path(p)
        removed.append(p)
    return removed + remove_claims_of(folder, token)


BACKUP_SUFFIX = ".old"  # outputs.OutputSet moves a replaced output aside under temp_path(dest, ".old")


def backup_destination(name: str, token: str) -> str | None:
    """The destination a moved-aside output of ``token`` came from, if ``name`` is such a backup."""
    tail = f"{MARK}{token}."
    if not (name.startswith(".") and name.endswith(".part" + BACKUP_SUFFIX) and tail in name):
        return None
    return name[1 : name.rindex(tail)] or None


def token_of(name: str) -> str | None:
    """The owner token inside a temporary name, if any."""
    m = _TOKEN_RE.search(name)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------
# Temporary names and renames
# ---------------------------------------------------------------------------


def temp_path(dest: str | Path, suffix: str | None = None) -> Path:
    """A unique hidden temporary name beside ``dest`` owned by this process (nothing is created).

    The caller must hold the folder (:func:`hold_folder`) while the temporary exists.
    """
    dest = Path(dest)
    suffix = dest.suffix if suffix is None else suffix
    return dest.with_name(f".{dest.name}{MARK}{process_token()}.{next(_counter)}.part{suffix}")


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


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it onto ``path`` on success.

    ``replace=False`` refuses (``FileExistsError``) when ``path`` appeared meanwhile.
    """
    path = Path(path)
    with holding(path.parent if str(path.parent) else "."):
        tmp = temp_path(path)
        try:
            with disk_full_guard(path.parent):  # judged while the partial file still takes its space
                yield tmp
                if replace:
                    os.replace(tmp, path)
                else:
                    rename_noreplace(tmp, path)
        finally:
            remove_path(tmp)


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


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig, path: str | Path, dpi: int = 100, metadata: dict[str, str] | None = None) -> Path:
    """A matplotlib figure as PNG (or the suffix's format); ``metadata``: text chunks of a PNG."""
    extra = {"metadata": metadata} if metadata and Path(path).suffix.lower() == ".png" else {}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".").lower() or "png", **extra)
    return Path(path)
