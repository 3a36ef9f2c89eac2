"""Fixtures shared by several test modules, and the suite's watchdog."""

import faulthandler
import os
import signal
import threading
from pathlib import Path

import pytest

CHILDREN_DUMP = signal.SIGUSR2  # a forked child (a reader, a DataLoader worker) prints its stacks on this


def pytest_configure(config):
    # installed before any fork, so every forked child inherits it; fd 2 is still the terminal here
    faulthandler.register(CHILDREN_DUMP, file=os.dup(2), all_threads=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Shortly before pytest's own dump (pyproject's faulthandler_timeout: a test running that long is stuck,
    and pytest then prints every thread's stack and exits), the stacks of this process's children: a stuck
    test is often a parent waiting on a child."""
    limit = float(item.config.getini("faulthandler_timeout") or 0)
    if limit <= 0:
        return (yield)
    timer = threading.Timer(max(1.0, limit - 10), _dump_children)
    timer.daemon = True
    timer.start()
    try:
        return (yield)
    finally:
        timer.cancel()


def _dump_children() -> None:
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, CHILDREN_DUMP)
        except OSError:
            pass


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module: fastest for miniature models, and immune to busy
    neighbours on a 2-core runner. Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
