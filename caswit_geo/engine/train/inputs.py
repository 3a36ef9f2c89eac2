"""The InputSpec of a training run: from the data, then the flags.

Bands and value scale come from the data (``classes.json`` of a tiles
folder; RGB 8-bit for FLAIR-HUB and URUR; the images' data type otherwise),
flags override them; mean/std default to ImageNet's (what Swin was
pretrained with). Tile size and context factor are the run's; the ground
sampling distance is read from the first sample's georeferencing when the
CRS is projected (None otherwise, e.g. URUR's PNGs).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec, scale_warning
from caswit_geo.data.open_raster import open_raster
from caswit_geo.engine.train.config import RunConfig

RGB = (1, 2, 3)


def scale_for(image: str | Path, dtype: str | None = None) -> float:
    """255 for 8-bit imagery; other data types need an explicit scale. ``dtype``: the image's, when known
    (``image`` then only names it)."""
    if dtype is None:
        with open_raster(image) as src:
            dtype = src.dtypes[0]
    if dtype == "uint8":
        return 255.0
    raise ConfigError(
        f"{image}: {dtype} imagery; give --scale, the value that maps to 1 (e.g. 65535, or 4095 for 12-bit data)"
    )


def run_input_spec(
    config: RunConfig,
    tile_size: int,
    bands: tuple[int, ...] | None = None,
    scale: float | None = None,
    bands_source: str | Path | None = None,
) -> InputSpec:
    """``bands``/``scale``: what the data says (None = RGB / unknown); flags win.

    ``bands_source``: the file the data's ``bands`` were read from, named when they need more flags.
    """
    where = f"{bands_source}: " if bands and not config.bands and bands_source else ""
    bands = tuple(config.bands or bands or RGB)
    scale = config.scale or scale
    if scale is None:
        raise ConfigError("--scale is needed: the value scale of the imagery is unknown")
    mean, std = config.mean, config.std
    if mean is None or std is None:
        if len(bands) != 3:
            raise ConfigError(
                f"{where}bands {list(bands)}: give --mean and --std (one value per band, on values divided by --scale); "
                "the ImageNet defaults are for RGB"
            )
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    return InputSpec(
        bands=bands, scale=float(scale), mean=mean, std=std, tile_size=tile_size,
        context_factor=config.context_factor, gsd=None,
    )


def with_gsd(spec: InputSpec, dataset) -> InputSpec:
    """``spec`` with the ground sampling distance of the dataset's first sample, when known."""
    try:
        geo = dataset.georef(0)
    except (AttributeError, NotImplementedError, IndexError):
        return spec
    t, crs = geo.transform, geo.crs
    if crs is None or t.b != 0 or t.d != 0 or not math.isclose(abs(t.a), abs(t.e), rel_tol=1e-6):
        return spec
    try:
        metric = crs.is_projected or (crs.linear_units or "").lower() in ("metre", "meter", "m")
    except Exception:  # an odd local CRS; better unknown than wrong
        metric = False
    return dataclasses.replace(spec, gsd=float(abs(t.a))) if metric else spec


def check_samples(dataset, spec: InputSpec, what: str) -> None:
    """Fail early, naming the data, when a sample does not have the spec's shape."""
    if len(dataset) == 0:
        raise ConfigError(f"{what}: no sample")
    sample = dataset[0]
    expected = (spec.in_chans, spec.tile_size, spec.tile_size)
    if tuple(sample["hr"].shape) != expected or tuple(sample["lr"].shape) != expected:
        raise ConfigError(f"{what}: samples are {tuple(sample['hr'].shape)}, expected {expected}")


def check_dtypes(images, spec: InputSpec, what: str) -> None:
    """One data type across the images, one that ``spec.scale`` fits.

    ``images``: the datasets' ``ImagePair`` rows (train and validation
    together). 8- and 16-bit images mixed under one scale would be
    normalised differently, silently: refused, naming one file of each.
    A scale that does not fit the one data type is a warning, as in predict
    (:func:`~caswit_geo.core.spec.scale_warning`), naming one of the images.
    """
    first: dict[str, Path] = {}
    for pair in images:
        first.setdefault(pair.dtype, pair.image)
    if len(first) > 1:
        (a, path_a), (b, path_b) = list(first.items())[:2]
        raise ConfigError(
            f"{what}: {path_a} is {a} but {path_b} is {b}; one --scale cannot fit both "
            "(convert the images to one data type)"
        )
    if not first:
        return
    dtype, path = next(iter(first.items()))
    warning = scale_warning(dtype, spec.scale)
    if warning:
        warnings.warn(f"{what}, e.g. {path}: {warning}; give --scale", stacklevel=3)
