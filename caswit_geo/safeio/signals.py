"""Stopping on a signal without losing anything.

Two behaviours, one per kind of work:

- :func:`signals_interrupt` (every command, installed by the CLI): a
  scheduler's SIGTERM unwinds like Ctrl-C (:class:`Terminated`, a
  ``KeyboardInterrupt``), so every ``finally`` runs and output sets remove
  their temporary files; the CLI says which signal stopped it and exits
  with 143 (SIGTERM) or 130 (SIGINT).
- :class:`GracefulStop` (the epoch loop of ``train`` and ``pretrain``): the
  first SIGTERM or SIGINT only sets a flag; the loop finishes the current
  step, saves a resumable state and returns. A second signal interrupts at
  once (the last saved state stays consistent).

Handlers can only be installed from the main thread; elsewhere (a library
caller's worker thread) signals are left alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, what shells report


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was when it arrived."""


_raised: list[str] = []  # signals turned into interrupts since signals_interrupt() began


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int) -> None:
    _raised.append(signal.Signals(signum).name)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def interrupted_by() -> str | None:
    """The signal that interrupted the command (``"SIGTERM"``/``"SIGINT"``), None if none did."""
    return _raised[-1] if _raised else None


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` (instead of ending the process at once)
    and SIGINT ``KeyboardInterrupt``; :func:`interrupted_by` tells which one did."""
    _raised.clear()
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: _interrupt(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class GracefulStop:
    """``with GracefulStop() as stop:`` ... ``if stop.requested:`` save and return.

    ``requested`` is the name of the first signal received (``"SIGTERM"`` or
    ``"SIGINT"``), None before. Under DDP every rank must agree on when to
    stop (see ``loop.py``: the flag is summed over the ranks after each step).
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # a second signal: stop now
            _interrupt(signum)
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "GracefulStop":
        if _main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
