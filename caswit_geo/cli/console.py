"""What the CLI prints: untrusted text made harmless, consoles that never cut tables.

Names read from files (class names, checkpoint metadata, file names) may hold
terminal escape sequences or Rich markup. :func:`plain` makes any text
printable (control characters shown as ``\\xNN``, so an escape sequence is
visible and inert); :func:`safe` also escapes Rich markup, for text put into
a Rich string or table. Every print of such a name goes through one of them.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Iterator

from rich.console import Console
from rich.markup import escape

# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# a pipe or a file gets whole lines: tables are never cut to a terminal width there
PIPE_WIDTH = 10_000


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: object) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), on one line."""
    return _UNPRINTABLE.sub(_escaped, str(text))


def safe(text: object) -> str:
    """``text`` for a Rich markup string or table cell: :func:`plain`, Rich markup escaped."""
    return escape(plain(text))


def make_console(stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr): terminal width on a terminal, whole lines elsewhere."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


@contextlib.contextmanager
def after_outputs() -> Iterator[None]:
    """Wrap the summary printed once outputs are committed: a print failure is a warning, not an error.

    The outputs are complete at that point; failing the command would tell
    the user they were not.
    """
    try:
        yield
    except Exception as e:
        warnings.warn(f"the outputs are written, but the summary could not be printed ({type(e).__name__}: {e})")
