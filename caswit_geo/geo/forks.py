"""GDAL in forked processes (predict's readers, training's DataLoader workers).

GDAL keeps one global pool of worker threads: it reads a VRT's sources on it
(VRT_NUM_THREADS, all CPUs by default since GDAL 3.10) and decodes blocks on
it with GDAL_NUM_THREADS. A forked child inherits the pool but not its
threads, so its first read that hands work to the pool waits forever. The
pool exists as soon as this process has read a window across two files of a
mosaic: a second predict in one process, or a dry run's calibration before
its reading estimate, then hung in every reader. Children therefore read on
their own thread; they are several processes already.
"""

from __future__ import annotations

import os
import sys

SINGLE_THREADED = {"VRT_NUM_THREADS": "1", "GDAL_NUM_THREADS": "1"}
_REGISTERED: list[bool] = []


def single_threaded_children() -> None:
    """From now on, every forked child of this process reads with GDAL on its own thread (idempotent)."""
    if _REGISTERED or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(after_in_child=_in_child)
    _REGISTERED.append(True)


def _in_child() -> None:
    if "rasterio" not in sys.modules:  # GDAL not loaded by the parent: no pool to avoid (and none imported here)
        return
    from rasterio.env import set_gdal_config

    for key, value in SINGLE_THREADED.items():
        set_gdal_config(key, value)
