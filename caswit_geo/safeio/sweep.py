"""Removing what dead owners left, and holding a folder while working in it.

An owner is dead when its lock file can be locked (``liveness.py``). Before
this process takes its own lock in a folder, it removes every dead owner's
temporaries and claims there, and puts back an output that a killed commit
had moved aside. A live run's files are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from caswit_geo.safeio.claims import remove_claims_of
from caswit_geo.safeio.files import backup_destination, remove_path
from caswit_geo.safeio.liveness import MARK, holds, lock_folder, other_locks, unlock_folder


def hold_folder(folder: str | Path) -> Path:
    """Take (or re-enter) this process's liveness lock in ``folder``; sweep dead owners first.

    Pair every call with :func:`release_folder`. Raises ``OSError`` when the
    folder is not writable.
    """
    folder = Path(os.path.abspath(folder))
    if not holds(folder):
        sweep_stale(folder)
    lock_folder(folder)
    return folder


def release_folder(folder: str | Path) -> None:
    """Drop one hold on ``folder``'s lock; the last one removes the lock file."""
    unlock_folder(Path(os.path.abspath(folder)))


@contextlib.contextmanager
def holding(folder: str | Path) -> Iterator[Path]:
    held = hold_folder(folder)
    try:
        yield held
    finally:
        release_folder(held)


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary files, folders and claims of every dead owner in ``folder``.

    An owner is dead when its lock file can be locked (its process is gone).
    Returns what was removed. Never raises for files that vanish meanwhile.
    """
    folder = Path(folder)
    removed: list[Path] = []
    for lock, token in other_locks(folder):
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
