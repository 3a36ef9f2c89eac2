"""A forked child reads a mosaic after its parent has: GDAL's worker threads are not inherited."""

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from caswit_geo.geo.mosaic import open_mosaic
from tests.helpers import rgb_image, write_on_grid


def _read(source, window, queue):
    with rasterio.open(source) as src:
        queue.put(src.read(window=window).sum(dtype=np.int64))


def two_files(tmp_path):
    # large enough for GDAL to read the two sources of a window in parallel
    left = write_on_grid(tmp_path / "left.tif", rgb_image(1024, 1024, seed=1), tiled=True)
    right = write_on_grid(tmp_path / "right.tif", rgb_image(1024, 1024, seed=2), col=1024, tiled=True)
    return open_mosaic([left, right], (1, 2, 3))


def test_a_reader_forked_after_a_read_across_files_does_not_wait_forever(tmp_path):
    mosaic = two_files(tmp_path)
    across = Window(512, 0, 1024, 1024)  # half of each file: GDAL reads the two sources on its thread pool
    # two threads asked for whatever the machine's CPU count: the pool exists in this process from now on
    with rasterio.Env(VRT_NUM_THREADS="2"), rasterio.open(mosaic.source) as src:
        expected = src.read(window=across).sum(dtype=np.int64)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read, args=(mosaic.source, across, queue))
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "the forked reader waited on GDAL threads it does not have"
    assert queue.get(timeout=10) == expected


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="GDAL reads on its thread pool only with 2 CPUs or more")
def test_without_the_hook_the_same_child_hangs(tmp_path):
    """The hazard is real on this GDAL (else the test above would prove nothing): a fresh interpreter
    without caswit_geo's hook forks the same reader, which never returns."""
    mosaic = two_files(tmp_path)
    code = f"""
import os
os.environ["VRT_NUM_THREADS"] = "2"  # threads whatever the machine's CPU count, in the child too
import multiprocessing, rasterio, sys
from rasterio.windows import Window
source = {mosaic.source!r}
def read(q):
    with rasterio.open(source) as src:
        src.read(window=Window(512, 0, 1024, 1024))
    q.put(1)
with rasterio.open(source) as src:
    src.read(window=Window(512, 0, 1024, 1024))
ctx = multiprocessing.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=read, args=(q,))
p.start()
p.join(5)
print("hung" if p.is_alive() else "returned")
p.kill()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "hung"
