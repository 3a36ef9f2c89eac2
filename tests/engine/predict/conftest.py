"""Fixtures of the predict tests."""

import pytest

from tests.helpers import PREDICT_CLASSES, save_nano_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An untrained caswit-nano checkpoint of PREDICT_CLASSES (0.2 m, 128 px tiles), built once per module."""
    path = tmp_path_factory.mktemp("ckpt") / "nano.safetensors"
    return save_nano_checkpoint(path, PREDICT_CLASSES, source="test fixture")
