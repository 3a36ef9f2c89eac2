"""Whole-or-nothing file writes: a temporary name beside the target, then a rename.

A reader (QGIS, an image viewer, a resumed run) never sees half a file, and a
killed process leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        fig.savefig(tmp, dpi=dpi, **extra)
    return Path(path)
