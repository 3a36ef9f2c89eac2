"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module: fastest for miniature models, and immune to busy
    neighbours on a 2-core runner. Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
