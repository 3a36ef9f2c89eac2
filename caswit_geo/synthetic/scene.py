"""One synthetic mosaic: layout, then rendering, each from its own random stream."""

from __future__ import annotations

import numpy as np

from caswit_geo.synthetic.layout import Layout, make_layout
from caswit_geo.synthetic.render import render
from caswit_geo.synthetic.settings import SPLITS, SyntheticConfig
from caswit_geo.synthetic.textures import child_rngs


def scene_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator of mosaic ``index`` of ``split``: depends on (seed, split, index) only."""
    return np.random.default_rng([config.seed, SPLITS.index(split), index])


def generate_layout_and_image(config: SyntheticConfig, rng: np.random.Generator) -> tuple[Layout, np.ndarray]:
    layout_rng, render_rng = child_rngs(rng, 2)
    layout = make_layout(config, layout_rng)
    return layout, render(layout, config.noise, render_rng)


def generate_scene(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image (3, H, W) uint8 RGB, labels (H, W) uint8 class ids) of one ``config.size`` mosaic.

    Pure: the result depends only on ``config`` and the state of ``rng``.
    """
    layout, image = generate_layout_and_image(config, rng)
    return image, layout.labels
