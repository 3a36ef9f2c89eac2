"""Per-process pool of open rasterio datasets.

Datasets and tile sources are pickled into DataLoader workers (or inherited
by fork); rasterio handles must not travel with them (a GDAL handle shared
across processes reads garbage or crashes). The pool therefore opens files
lazily, remembers the process that opened them and starts empty in any other
process. At most ``max_open`` files stay open (least recently used closed
first), so mosaics of thousands of files do not exhaust file descriptors.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import rasterio


class RasterHandles:
    """``pool.get(path)`` -> open dataset, opened with ``opener`` at most once per process."""

    def __init__(self, max_open: int = 32, opener: Callable[[str | Path], rasterio.io.DatasetReader] = rasterio.open):
        self.max_open = max_open
        self.opener = opener  # a module-level function, so the pool pickles
        self._pid = os.getpid()
        self._open: OrderedDict[str, rasterio.io.DatasetReader] = OrderedDict()

    def get(self, path: str | Path) -> rasterio.io.DatasetReader:
        if os.getpid() != self._pid:  # forked into a worker: the parent's handles are not ours
            self._open, self._pid = OrderedDict(), os.getpid()
        key = str(path)
        src = self._open.get(key)
        if src is not None:
            self._open.move_to_end(key)
            return src
        src = self.opener(path)
        self._open[key] = src
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return src

    def close(self) -> None:
        if os.getpid() == self._pid:
            for src in self._open.values():
                src.close()
        self._open = OrderedDict()

    def __getstate__(self) -> dict:
        # pickled for spawn-started workers: send no handles
        return {"max_open": self.max_open, "opener": self.opener}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"], state["opener"])
