"""Settings of the synthetic data set: one dataclass, validated on creation.

Lengths are pixels of the mosaic; at the default 0.5 m ground sampling
distance 1 px = 0.5 m, so a 128 px tile is 64 m and a parcel of 140-300 px
is 70-150 m.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rasterio.crs import CRS
from rasterio.errors import CRSError

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.limits import bounded, check_settings

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

    seed: int = bounded(0, ge=0, le=2**32 - 1)
    size: int = bounded(1024, ge=256, le=16384)  # a mosaic is generated in memory
    train: int = bounded(8, ge=0)
    val: int = bounded(4, ge=0)
    test: int = bounded(4, ge=0)
    gsd: float = bounded(0.5, gt=0)
    crs: str = "EPSG:2154"
    origin: tuple[float, float] = bounded((650000.0, 6860000.0), flag="origin")
    parcel_min: int = bounded(140, ge=32, flag="parcel_min")
    parcel_max: int = bounded(300, ge=64, flag="parcel_max")
    park_max_width: int = bounded(210, ge=1, flag="park_max_width")
    urban_share: float = bounded(0.45, ge=0, le=1, flag="urban_share")
    park_share: float = bounded(0.8, ge=0, le=1, flag="park_share")
    meadow_share: float = bounded(0.5, ge=0, le=1, flag="meadow_share")
    rule_distance: int = bounded(48, ge=1, flag="rule_distance")
    rule_min_building_fraction: float = bounded(0.08, ge=0, le=1, flag="rule_min_building_fraction")
    noise: float = bounded(0.02, ge=0, flag="noise")

    def __post_init__(self) -> None:
        self.origin = (float(self.origin[0]), float(self.origin[1]))
        check_settings(self)
        if self.parcel_max < 2 * self.parcel_min:
            raise ConfigError(
                f"parcel sizes need parcel_min >= 32 and parcel_max >= 2 * parcel_min, "
                f"got {self.parcel_min} and {self.parcel_max}"
            )
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
