"""The preview's legend shows the summary's shares: counted on every pixel, not on the overview drawn."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from tests.helpers import PREDICT_CLASSES, rgb_image, run_predict, save_nano_checkpoint, write_on_grid


def test_preview_legend_shares_equal_the_summary(tmp_path, monkeypatch):
    labels: list[str] = []
    real_legend = Figure.legend

    def record(self, *args, handles=None, **kw):
        labels.extend(h.get_label() for h in handles)
        return real_legend(self, *args, handles=handles, **kw)

    monkeypatch.setattr(Figure, "legend", record)
    image = rgb_image(300, 300)
    image[:, :150] //= 4  # a dark half and a bright half: classes of unequal shares
    write_on_grid(tmp_path / "ortho.tif", image)
    weights = save_nano_checkpoint(tmp_path / "nano.safetensors", PREDICT_CLASSES)
    # max_side 720 > 300 would draw every pixel: a tiny preview makes the overview's counts differ
    import caswit_geo.geo.preview as preview

    monkeypatch.setattr(preview, "_decimated_shape", lambda w, h, m: (7, 7))
    res = run_predict(weights, [tmp_path / "ortho.tif"], tmp_path / "map.tif", preview=str(tmp_path / "p.png"))
    total = sum(res.class_pixels.values())
    expected = [f"{name} ({100 * res.class_pixels[name] / total:.1f} %)" for name in PREDICT_CLASSES.names]
    assert labels == expected
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert np.count_nonzero(list(res.class_pixels.values())) >= 1
    assert total == 300 * 300 - res.nodata_pixels
    assert pytest.approx(sum(100 * v / total for v in res.class_pixels.values())) == 100
