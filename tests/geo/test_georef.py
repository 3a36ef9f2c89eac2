"""Rasters without georeferencing: reported once in our words, never by rasterio's raw warning."""

import threading
import warnings

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from caswit_geo.geo import ignore_not_georeferenced


def test_opening_a_plain_image_from_many_threads_never_warns(tmp_path):
    # Per-call warnings.catch_warnings() is not thread-safe: one thread's exit
    # restores filters while another is inside its open. The LR pre-pass opens
    # sources from several threads, and rasterio's warning leaked into predict's output.
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.png")
    errors = []

    def open_many():
        try:
            for _ in range(50):
                with rasterio.open(tmp_path / "photo.png") as src:
                    assert src.crs is None
        except Exception as e:  # noqa: BLE001  (surfaced by the assertion below)
            errors.append(e)

    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # neither pytest's filters nor any left by other tests
        ignore_not_georeferenced()  # as at import
        threads = [threading.Thread(target=open_many) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert not [w for w in seen if issubclass(w.category, NotGeoreferencedWarning)]
