"""Settings of the synthetic data set: one dataclass, validated on creation.

Lengths are pixels of the mosaic; at the default 0.5 m ground sampling
distance 1 px = 0.5 m, so a 128 px tile is 64 m and a parcel of 140-300 px
is 70-150 m.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rasterio.crs import CRS
from rasterio.errors import CRSError

from ..errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class SyntheticConfig:
    """What :func:`generate_dataset` makes.

    Args:
        seed: master seed; mosaic ``i`` of split ``s`` depends only on
            (seed, s, i) and the scene settings, so adding training mosaics
            leaves val/test unchanged.
        size: side of each square mosaic, px.
        train, val, test: number of mosaics per split.
        gsd: pixel size, CRS units (m).
        crs: a projected CRS (EPSG code, WKT or PROJ string).
        origin: upper-left corner (x, y) of the first mosaic, CRS units;
            mosaics are laid out on a grid 1 km apart so none overlap.
        parcel_min, parcel_max: side range of the land parcels, px.
        park_max_width: only town blocks whose short side is at most this
            many px become parks. Then the 256 px context window (k = 2,
            T = 128) of any tile lying inside a park reaches at least ~25 px
            into the built blocks across the street.
        urban_share: target share of parcels inside towns, per mosaic.
        park_share: chance that an eligible town block is a park.
        meadow_share: chance that a rural parcel away from towns is a meadow.
        rule_distance: width D of the ring around a grass patch read by the
            park/meadow rule, px.
        rule_min_building_fraction: building share of that ring from which
            a grass patch is a park.
        noise: sensor noise standard deviation, on [0, 1] reflectance.
    """

    seed: int = 0
    size: int = 1024
    train: int = 8
    val: int = 4
    test: int = 4
    gsd: float = 0.5
    crs: str = "EPSG:2154"
    origin: tuple[float, float] = (650000.0, 6860000.0)
    parcel_min: int = 140
    parcel_max: int = 300
    park_max_width: int = 210
    urban_share: float = 0.45
    park_share: float = 0.8
    meadow_share: float = 0.5
    rule_distance: int = 48
    rule_min_building_fraction: float = 0.08
    noise: float = 0.02

    def __post_init__(self) -> None:
        self.origin = (float(self.origin[0]), float(self.origin[1]))
        if self.size < 256:
            raise ConfigError(f"--size must be at least 256 px, got {self.size}")
        if self.size > 16384:
            raise ConfigError(f"--size must be at most 16384 px (a mosaic is generated in memory), got {self.size}")
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise ConfigError(f"--{split} must be >= 0, got {getattr(self, split)}")
        if self.gsd <= 0:
            raise ConfigError(f"--gsd must be positive, got {self.gsd}")
        if self.parcel_min < 32 or self.parcel_max < 2 * self.parcel_min:
            raise ConfigError(
                f"parcel sizes need parcel_min >= 32 and parcel_max >= 2 * parcel_min, "
                f"got {self.parcel_min} and {self.parcel_max}"
            )
        for name in ("urban_share", "park_share", "meadow_share", "rule_min_building_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.rule_distance < 1:
            raise ConfigError(f"rule_distance must be >= 1 px, got {self.rule_distance}")
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")
        self.projected_crs()  # fail now rather than after generating

    def projected_crs(self) -> CRS:
        try:
            crs = CRS.from_user_input(self.crs)
        except CRSError as e:
            raise ConfigError(f"--crs {self.crs!r} is not a CRS GDAL knows: {e}") from None
        if not crs.is_projected:
            raise ConfigError(f"--crs {self.crs!r} is not projected: the pixel size is in metres")
        return crs

    def count(self, split: str) -> int:
        return getattr(self, split)

    def to_dict(self) -> dict:
        return asdict(self)
