"""Which process owns what: process tokens and folder locks.

Every temporary file or folder caswit-geo creates carries its owner's
process token in its hidden name (``files.py``). While it has temporary
files in a folder, the process holds an exclusive ``flock`` on
``.caswit-<token>.lock`` there. The kernel drops that lock when the process
ends, however it ends (kill -9 and power loss included), so a later process
that can take the lock has *proved* the owner dead (``sweep.py`` then
removes what it left). Lock files exist only while work is under way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

MARK = ".caswit-"  # every hidden name caswit-geo creates contains it
_TOKEN_RE = re.compile(r"\.caswit-([A-Za-z0-9-]+-\d+-[0-9a-f]{6})(?:\.|$)")

_state_lock = threading.RLock()
_held: dict[Path, list] = {}  # folder -> [fd, refcount, pid] of this process's lock file there
_token: tuple[int, str] | None = None


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


def lock_folder(folder: Path) -> bool:
    """Take (or re-enter) this process's lock in ``folder``; True when it was taken anew.

    Raises ``OSError`` when the folder is not writable.
    """
    with _state_lock:
        entry = _held.get(folder)
        if entry is not None and entry[2] == os.getpid():
            entry[1] += 1
            return False
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
        return True


def holds(folder: Path) -> bool:
    """True when this process holds its lock in ``folder``."""
    with _state_lock:
        entry = _held.get(folder)
        return entry is not None and entry[2] == os.getpid()


def unlock_folder(folder: str | Path) -> None:
    """Drop one hold on ``folder``'s lock; the last one removes the lock file."""
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


def other_locks(folder: Path) -> list[tuple[Path, str]]:
    """(lock file, token) of every liveness lock in ``folder`` but this process's own."""
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return []
    tokens = [(n, n[len(MARK) : -len(".lock")]) for n in names if n.startswith(MARK) and n.endswith(".lock")]
    return [(folder / n, t) for n, t in tokens if t != process_token()]


def live_owners(folder: str | Path) -> list[str]:
    """Tokens of the other processes that hold their liveness lock in ``folder`` now."""
    return sorted(t for _, t in other_locks(Path(folder)) if owner_alive(folder, t))


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
