"""GDAL in forked processes (predict's readers, training's DataLoader workers).

GDAL keeps one global pool of worker threads: it reads a VRT's sources on it
(VRT_NUM_THREADS, all CPUs by default since GDAL 3.10) and decodes blocks on
it with GDAL_NUM_THREADS. A forked child inherits the pool but not its
threads, so its first read that hands work to the pool waits forever. The
pool exists as soon as this process has read a window across two files of a
mosaic: a second predict in one process, or a dry run's calibration before
its reading estimate, then hung in every reader. Children therefore read on
their own thread; they are several processes already.

A thread of ours that read or wrote with GDAL is not gone when join()
returns: its thread-local destructors still run, GDAL's among them, which
closes the thread's PROJ context and finalizes its statements on the PROJ
database connection every thread shares, holding that connection's lock. A
fork at that moment copies the lock held, and the child's first CRS lookup
waits forever: a reader opening a chunk file right after the pre-pass of a
web map service hung so (the web map tests, twice in 72 runs), and so do
about 2 % of children forked right after three threads looked CRSs up.
Forks therefore wait until the threads we started and that have finished
are gone from the system (:func:`track`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from pathlib import Path

SINGLE_THREADED = {"VRT_NUM_THREADS": "1", "GDAL_NUM_THREADS": "1"}
EXIT_WAIT_S = 10.0  # at most this long for finished threads to be gone (their destructors take milliseconds)
_REGISTERED: list[bool] = []
_TRACKED: dict[int, weakref.ref] = {}  # native thread id -> the thread, of threads started by us
_TRACKED_LOCK = threading.Lock()


def single_threaded_children() -> None:
    """From now on, every forked child of this process reads with GDAL on its own thread (idempotent)."""
    if _REGISTERED or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(before=settle_finished_threads, after_in_child=_in_child)
    _REGISTERED.append(True)


def track(thread: threading.Thread) -> None:
    """Forks wait for ``thread`` (started) to be gone from the system once it has finished."""
    if thread.native_id is None:
        return
    with _TRACKED_LOCK:
        for tid in [t for t in _TRACKED if not _thread_exists(t)]:
            del _TRACKED[tid]  # gone already: a long job without forks starts many threads
        _TRACKED[thread.native_id] = weakref.ref(thread)


def settle_finished_threads(timeout: float = EXIT_WAIT_S) -> None:
    """Return once every tracked thread that has finished is gone from the system (or after ``timeout``).

    Runs before every fork of this process (:func:`single_threaded_children`). Threads still running are
    left alone: forks happen before the threads that read with GDAL start (predict's readers), or after
    they finish.
    """
    end = time.monotonic() + timeout
    with _TRACKED_LOCK:
        tracked = list(_TRACKED.items())
    for tid, ref in tracked:
        thread = ref()
        if thread is not None and thread.is_alive():
            continue
        while _thread_exists(tid) and time.monotonic() < end:
            time.sleep(0.001)
        if not _thread_exists(tid):
            with _TRACKED_LOCK:
                _TRACKED.pop(tid, None)


def _thread_exists(tid: int) -> bool:
    # Linux lists a thread until it has exited, its thread-local destructors included; elsewhere readers are
    # spawned, not forked, and there is nothing to wait for
    return Path(f"/proc/self/task/{tid}").exists()


def _in_child() -> None:
    global _TRACKED_LOCK
    _TRACKED_LOCK = threading.Lock()  # another thread may have held it at the fork
    _TRACKED.clear()  # the parent's threads
    if "rasterio" not in sys.modules:  # GDAL not loaded by the parent: no pool to avoid (and none imported here)
        return
    from rasterio.env import set_gdal_config

    for key, value in SINGLE_THREADED.items():
        set_gdal_config(key, value)
