"""Whole-or-nothing writes of one file: a temporary beside it, renamed into place on success."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from caswit_geo.core.errors import disk_full_guard
from caswit_geo.safeio.files import fsync_file, remove_path, rename_noreplace, temp_path
from caswit_geo.safeio.sweep import holding


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace: bool = True, fsync: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it onto ``path`` on success.

    ``replace=False`` refuses (``FileExistsError``) when ``path`` appeared meanwhile.
    ``fsync``: flush the file before the rename publishes it, for files that
    later steps trust by their name alone (a job's parts and chunks).
    """
    path = Path(path)
    with holding(path.parent if str(path.parent) else "."):
        tmp = temp_path(path)
        try:
            with disk_full_guard(path.parent):  # judged while the partial file still takes its space
                yield tmp
                if fsync:
                    fsync_file(tmp)
                if replace:
                    os.replace(tmp, path)
                else:
                    rename_noreplace(tmp, path)
        finally:
            remove_path(tmp)


class AtomicWrite:
    """:func:`atomic_path` for a file written over many calls: ``tmp`` now, :meth:`commit` or :meth:`abort` later.

    For a writer that keeps its file open between calls (a part filled block
    by block), where one ``with`` block cannot span the writes.
    """

    def __init__(self, path: str | Path, *, replace: bool = True, fsync: bool = False) -> None:
        self.path = Path(path)
        self._open = contextlib.ExitStack()
        self.tmp = self._open.enter_context(atomic_path(path, replace=replace, fsync=fsync))

    def commit(self) -> Path:
        """Flush (with ``fsync``) and rename the temporary onto ``path``."""
        self._open.close()
        return self.path

    def abort(self) -> None:
        """Remove the temporary, rename nothing; never raises, and does nothing after a commit."""
        try:
            with self._open:  # leaving by an exception is atomic_path's failure path
                raise _Abandoned
        except Exception:  # _Abandoned, or the DiskFullError atomic_path makes of it during a full-disk failure
            pass


class _Abandoned(Exception):
    """Raised into an :class:`AtomicWrite` to leave it without a rename."""


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
