"""Names read from split files, kept inside the data root.

A split list is untrusted input: an entry such as ``../../x`` or ``/etc/x``
must not make a reader open a file outside the data set. Entries are
resolved lexically (``..`` collapsed, symlinks *not* followed), so a data
root whose ``images/`` is a symlink to another disk stays usable while a
name that climbs out of the root is refused, naming the split file, the
line and the entry.
"""

from __future__ import annotations

import os
from pathlib import Path

from caswit_geo.core.errors import DatasetError


def inside(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` is ``root`` or below it, compared lexically (symlinks not followed)."""
    path, root = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_entry(entry: str, base: str | Path, root: str | Path, split_file: str | Path, line: int | None = None) -> Path:
    """The path ``entry`` names relative to ``base``, refused unless it stays inside ``root``.

    Args:
        entry: the text of the split file: a name, a relative path (``/`` or ``\\``
            separators) or an absolute path (inside ``root`` too).
        base: the folder the entry is relative to (e.g. ``<root>/images``, or the CSV's folder).
        root: the data root no entry may leave.
        split_file: the file the entry comes from (for the message).
        line: 1-based line of the entry (for the message).

    Returns:
        ``base / entry`` with ``.`` and ``..`` collapsed (not resolved through symlinks).
    """
    where = f"{split_file}" + (f", line {line}" if line is not None else "")
    text = entry.replace("\\", "/")
    if not text or "\x00" in text:
        raise DatasetError(f"{where}: empty or invalid entry {entry!r}")
    path = os.path.normpath(os.path.join(os.path.abspath(base), text))
    if not inside(path, root):
        raise DatasetError(f"{where}: entry {entry!r} points outside the data root {root}")
    return Path(path)
