"""Layout -> RGB orthophoto: class textures, roofs, shadows, then a simple sensor.

Reflectances are floats in [0, 1]. Whole-frame texture fields are drawn
first, in a fixed order and without reading the layout, so the value at a
pixel depends on the layout only through the class of that pixel (and, after
the lens blur, of its 8 neighbours). Park and meadow pixels both take the
``grass`` field: nothing in a grass pixel tells the two apart.

Sensor: per-mosaic colour balance (gain per band +-4 %, brightness +-8 %),
slow illumination falloff (+-5 %), a [1, 2, 1] lens blur, Gaussian noise,
rounding to 8 bits.
"""

from __future__ import annotations

import numpy as np

from caswit_geo.synthetic.classes import BUILDING, CROPLAND, MEADOW, PARK, PAVED, ROAD, TREES, WATER
from caswit_geo.synthetic.layout import Layout, Roof
from caswit_geo.synthetic.textures import binomial_blur, child_rngs, smoothstep, tree_crowns, value_noise

ROOF_PALETTE = np.array(
    [
        [0.66, 0.32, 0.24],  # terracotta tiles
        [0.55, 0.27, 0.20],  # older tiles
        [0.42, 0.43, 0.47],  # slate
        [0.30, 0.30, 0.32],  # dark sheet metal
        [0.72, 0.71, 0.68],  # light concrete
        [0.52, 0.50, 0.46],  # gravel roof
    ],
    np.float32,
)
CROP_PALETTE = np.array(
    [
        [0.78, 0.69, 0.42],  # ripe cereal
        [0.50, 0.39, 0.28],  # ploughed soil
        [0.33, 0.46, 0.22],  # young crop: grass green, told apart by its furrows
        [0.62, 0.60, 0.32],  # rapeseed stubble
        [0.42, 0.50, 0.26],  # maize rows
    ],
    np.float32,
)
GRASS_GREEN = np.array([0.30, 0.45, 0.21], np.float32)
GRASS_DRY = np.array([0.47, 0.47, 0.28], np.float32)
PAVED_GREY = np.array([0.57, 0.55, 0.51], np.float32)
ASPHALT = np.array([0.28, 0.28, 0.30], np.float32)
PAINT = np.array([0.86, 0.86, 0.83], np.float32)
WATER_DEEP = np.array([0.09, 0.16, 0.20], np.float32)
LEAF = np.array([0.15, 0.29, 0.12], np.float32)


def grass_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) grass: green with drier patches tens of metres across, tufts, grain."""
    dry = smoothstep(value_noise(shape, 48, rng), -0.3, 0.7) * 0.6
    tufts = 0.09 * value_noise(shape, 6, rng) + 0.06 * value_noise(shape, 2, rng)
    grain = 0.05 * rng.standard_normal(shape, dtype=np.float32)
    colour = GRASS_GREEN[:, None, None] * (1 - dry) + GRASS_DRY[:, None, None] * dry
    return colour * (1 + tufts + grain)


def paved_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    stains = 0.07 * value_noise(shape, 20, rng)
    grain = 0.04 * rng.standard_normal(shape, dtype=np.float32)
    return PAVED_GREY[:, None, None] * (1 + stains + grain)


def asphalt_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    wear = 0.05 * value_noise(shape, 5, rng)
    grain = 0.06 * rng.standard_normal(shape, dtype=np.float32)
    return ASPHALT[:, None, None] * (1 + wear + grain)


def water_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    depth = 0.12 * value_noise(shape, 64, rng)
    ripples = 0.05 * value_noise(shape, 3, rng)
    glint = np.clip(value_noise(shape, 2, rng) - 1.2, 0, None) * 0.25  # sparse sun glints
    return WATER_DEEP[:, None, None] * (1 + depth + ripples) + glint


def canopy_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) closed canopy: lit crowns, dark gaps between them."""
    cover, shade = tree_crowns(shape, 10, rng)
    tone = 0.12 * value_noise(shape, 30, rng)  # species / vigour patches
    light = 0.3 + 0.95 * np.sqrt(cover) * shade * (1 + tone)
    grain = 0.06 * rng.standard_normal(shape, dtype=np.float32)
    return LEAF[:, None, None] * light * (1 + grain)


def draw_roof(img: np.ndarray, roof: Roof, rng: np.random.Generator) -> None:
    """Paint one roof into (3, H, W) ``img``: sloped halves and ridge, or flat with parapet."""
    r = roof.rect
    h, w = r.height, r.width
    colour = ROOF_PALETTE[roof.colour] * rng.uniform(0.9, 1.1)
    tone = np.ones((h, w), np.float32)
    if roof.gable:
        along_cols = w >= h  # the ridge runs along the long side
        n = h if along_cols else w
        half = np.where(np.arange(n) < n / 2, 1.12, 0.82).astype(np.float32)  # sun from the north-west
        ridge = np.abs(np.arange(n) + 0.5 - n / 2) < 1.0
        half[ridge] = 1.25
        pos = np.arange(w if along_cols else h)
        courses = 1 + 0.05 * ((pos // 3) % 2)  # tile courses across the slope
        tone = half[:, None] * courses[None, :] if along_cols else courses[:, None] * half[None, :]
    else:
        tone[:2, :] = tone[-2:, :] = tone[:, :2] = tone[:, -2:] = 0.75  # parapet
        if h > 16 and w > 16:
            for _ in range(int(rng.integers(0, 3))):  # rooftop units
                y, x = int(rng.integers(4, h - 10)), int(rng.integers(4, w - 10))
                tone[y : y + 5, x : x + 6] = 1.2
    grain = 1 + 0.03 * rng.standard_normal((h, w), dtype=np.float32)
    img[(slice(None), *r.slices)] = colour[:, None, None] * (tone * grain)[None]


def draw_fields(img: np.ndarray, layout: Layout, rng: np.random.Generator) -> None:
    """Furrowed fields: each crop parcel gets its colour, furrow direction and spacing."""
    for f in layout.fields:
        rows, cols = f.rect.slices
        mask = layout.labels[rows, cols] == CROPLAND
        if not mask.any():
            continue
        y = np.arange(f.rect.r0, f.rect.r1, dtype=np.float32)[:, None]
        x = np.arange(f.rect.c0, f.rect.c1, dtype=np.float32)[None, :]
        u = x * np.cos(f.angle) + y * np.sin(f.angle)
        furrows = 0.14 * np.sin(2 * np.pi * u / f.period + f.phase)
        patchy = 0.05 * value_noise((f.rect.height, f.rect.width), 24, rng)
        grain = 0.05 * rng.standard_normal((f.rect.height, f.rect.width), dtype=np.float32)
        tex = CROP_PALETTE[f.colour][:, None, None] * (1 + furrows + patchy + grain)
        view = img[:, rows, cols]
        view[:, mask] = tex[:, mask]


def cast_shadows(img: np.ndarray, labels: np.ndarray, offset: int) -> None:
    """Darken paved ground and roads south-east of buildings (sun from the north-west)."""
    building = labels == BUILDING
    shadow = np.zeros_like(building)
    for d in range(1, offset + 1):  # the swept footprint, not just its shifted copy
        shadow[d:, d:] |= building[:-d, :-d]
    shadow &= (labels == PAVED) | (labels == ROAD)
    img[:, shadow] *= 0.5


def render(layout: Layout, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) uint8 orthophoto of ``layout``; ``noise`` is the sensor noise std on [0, 1]."""
    labels = layout.labels
    shape = labels.shape
    # Whole-frame fields, one generator each, drawn before the layout is read.
    g_grass, g_paved, g_asphalt, g_water, g_canopy, g_objects, g_sensor = child_rngs(rng, 7)
    textures = (
        ((PARK, MEADOW), grass_field, g_grass),  # one grass process for both: the label is not in the pixels
        ((PAVED,), paved_field, g_paved),
        ((ROAD,), asphalt_field, g_asphalt),
        ((WATER,), water_field, g_water),
        ((TREES,), canopy_field, g_canopy),
    )
    img = np.zeros((3, *shape), np.float32)
    for classes, make_field, gen in textures:  # one field in memory at a time
        field = make_field(shape, gen)
        mask = np.isin(labels, classes)
        img[:, mask] = field[:, mask]
        del field
    paint = layout.markings & (labels == ROAD)
    img[:, paint] = PAINT[:, None] * (1 + 0.05 * g_objects.standard_normal(int(paint.sum()), dtype=np.float32))
    draw_fields(img, layout, g_objects)
    for roof in layout.roofs:
        draw_roof(img, roof, g_objects)
    cast_shadows(img, labels, int(g_objects.integers(4, 9)))

    gain = g_sensor.uniform(0.96, 1.04, size=3).astype(np.float32) * g_sensor.uniform(0.92, 1.08)
    falloff = 1 + 0.05 * value_noise(shape, max(shape) / 2, g_sensor)
    img = binomial_blur(img * gain[:, None, None] * falloff[None])
    img += noise * g_sensor.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
