"""The one way caswit-geo reads JSON it did not just write: bounded in size and nesting depth.

Every JSON file (checkpoint headers, ``config.json``, ``preprocessor_config.json``,
``classes.json``, ``plan.json``, ``registry.json``) is untrusted: a file can be
any size, any depth (Python's parser recurses, so deep nesting is a
``RecursionError``), or not text at all (``/dev/zero``, a FIFO). The size is
checked before the file is read (and the read itself stops one byte past the
limit, for files that grow or do not say their size), the depth before it is
parsed. Every failure is one line naming the file, of the error class the
caller asks for.
"""

from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

from caswit_geo.core.errors import CaswitError, InputError

# a JSON string literal (escapes included): brackets inside strings do not nest
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = str.maketrans({"[": "(", "{": "(", "]": ")", "}": ")"})


def size_text(size: int) -> str:
    """``size`` bytes in the largest unit that keeps it at 1 or more: ``"50.0 MiB"``, ``"812 bytes"``."""
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON ``text`` (0 for a scalar), without parsing it."""
    brackets = [c for c in _STRING.sub("", text) if c in "[]{}"]
    steps = (1 if c in "[{" else -1 for c in brackets)
    return max(accumulate(steps), default=0)


def parse_json(
    text: str | bytes,
    *,
    source: str | Path,
    what: str,
    max_bytes: int,
    max_depth: int,
    error: type[CaswitError] = InputError,
) -> Any:
    """The value of JSON ``text`` read from ``source`` (a file, or a file's field), bounded like :func:`load_json`."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > max_bytes:
        raise error(f"{source}: {what} is {size_text(size)}, more than the {size_text(max_bytes)} caswit-geo reads")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{source}: {what} is not UTF-8 text (not a JSON file)") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise error(f"{source}: {what} nests deeper than {max_depth} levels (not a file caswit-geo writes)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source}: {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (RecursionError, ValueError) as e:  # a depth the scan missed in invalid text; numbers too long
        raise error(f"{source}: {what} is not valid JSON ({type(e).__name__})") from None


def read_bounded(path: str | Path, *, what: str, max_bytes: int, error: type[CaswitError] = InputError) -> bytes:
    """The bytes of the regular file ``path``, refused when larger than ``max_bytes`` (one line naming it)."""
    path = Path(path)
    try:
        # non-blocking: opening a FIFO must not wait for a writer (it is refused just below)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise error(f"{path}: {what} is not a regular file")
            if info.st_size > max_bytes:
                raise error(f"{path}: {what} is {size_text(info.st_size)}, more than the "
                            f"{size_text(max_bytes)} caswit-geo reads")
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected {what}") from None
    except OSError as e:
        raise error(f"{path}: {what} cannot be read ({e.strerror or e})") from None
    if len(raw) > max_bytes:  # a file that grew while read
        raise error(f"{path}: {what} is more than the {size_text(max_bytes)} caswit-geo reads")
    return raw


def load_text(path: str | Path, *, what: str, max_bytes: int, error: type[CaswitError] = InputError) -> str:
    """The UTF-8 text of ``path``, bounded like :func:`read_bounded` (TOML settings files)."""
    try:
        return read_bounded(path, what=what, max_bytes=max_bytes, error=error).decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: {what} is not UTF-8 text") from None


def load_json(
    path: str | Path,
    *,
    what: str,
    max_bytes: int,
    max_depth: int,
    error: type[CaswitError] = InputError,
) -> Any:
    """The parsed content of the JSON file ``path``, read within ``max_bytes`` and ``max_depth``.

    Args:
        path: the file.
        what: what the file is, for messages (``"the job plan"``, ``"classes.json"``).
        max_bytes: the largest file read, in bytes.
        max_depth: the deepest nesting of arrays and objects accepted (1 for ``{"a": 1}``).
        error: the ``CaswitError`` subclass raised, with one line naming ``path``.
    """
    raw = read_bounded(path, what=what, max_bytes=max_bytes, error=error)
    return parse_json(raw, source=Path(path), what=what, max_bytes=max_bytes, max_depth=max_depth, error=error)
