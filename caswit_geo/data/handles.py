"""Per-process pool of open rasterio datasets.

A dataset object is pickled into every DataLoader worker; rasterio handles
must not travel with it (a GDAL handle shared across processes reads
garbage or crashes). The pool therefore opens files lazily, remembers the
process that opened them and starts empty in any other process. At most
``max_open`` files stay open (least recently used closed first), so
mosaics of thousands of files do not exhaust file descriptors.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from ..errors import DatasetError


def open_raster(path: str | Path) -> rasterio.io.DatasetReader:
    """Open ``path`` for reading; a missing or unreadable file is a DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # PNG datasets (URUR) carry no georeferencing; that is expected.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise DatasetError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None


class RasterHandles:
    """``pool.get(path)`` -> open dataset, reopened lazily in each process."""

    def __init__(self, max_open: int = 32) -> None:
        self.max_open = max_open
        self._pid = os.getpid()
        self._open: OrderedDict[str, rasterio.io.DatasetReader] = OrderedDict()

    def get(self, path: str | Path) -> rasterio.io.DatasetReader:
        if os.getpid() != self._pid:  # forked into a worker: the parent's handles are not ours
            self._open = OrderedDict()
            self._pid = os.getpid()
        key = str(path)
        src = self._open.get(key)
        if src is not None:
            self._open.move_to_end(key)
            return src
        src = open_raster(path)
        self._open[key] = src
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return src

    def close(self) -> None:
        if os.getpid() == self._pid:
            for src in self._open.values():
                src.close()
        self._open = OrderedDict()

    def __getstate__(self) -> dict:
        # Pickled for spawn-started workers: send no handles.
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])
