"""Creation options of the GeoTIFFs and COGs caswit-geo writes, in one place.

As in rasterio's ``rasterio/profiles.py``, a profile is the keyword
arguments of ``rasterio.open(path, "w", **profile)``: the defaults of one
kind of file, with the file's size and georeferencing, and then any keyword
arguments, laid over them. The outputs of ``predict`` are copies made by
GDAL (``rasterio.shutil.copy``); their options are GDAL's creation options.

Kinds of file, and who writes them:

- class raster (``class_raster.AtomicRasterWriter``): uint8, nodata 255,
  DEFLATE with a predictor, tiled;
- job part (``engine/predict/sink.py``, one per unit): as a class raster
  but ZSTD level 1 (fast: parts live only until the outputs are assembled),
  in the output's blocks (each output block then comes from one part);
- overview levels of a unit (``sink.py``): as a part, in strips;
- coarse overview level (``engine/predict/finalize.py``): uncompressed strips;
- LR pre-pass chunk (``lowres.py``): k x k sums, ZSTD level 1, sparse;
- sieve raster (``vectorize.py``): the classes with small regions merged;
- COG and GeoTIFF outputs (``assemble.py``);
- synthetic imagery and labels (``synthetic/dataset.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

from affine import Affine
from rasterio.crs import CRS

from caswit_geo.core.spec import IGNORE_INDEX

NODATA = IGNORE_INDEX  # nodata of every class / confidence raster

# DEFLATE level: 4 compresses a class map about 4x faster than GDAL's default 6 for files about
# 4 % larger (8192 px land-cover map: 0.36 s against 1.37 s); assembly is then a few % of a run
DEFLATE_LEVEL = 4

CLASS_RASTER = {"driver": "GTiff", "dtype": "uint8", "nodata": NODATA, "compress": "deflate", "predictor": 2,
                "BIGTIFF": "IF_SAFER"}
JOB_PART = {"driver": "GTiff", "dtype": "uint8", "nodata": NODATA, "compress": "zstd", "zstd_level": 1,
            "predictor": 2, "interleave": "band"}
OVERVIEW_LEVELS = JOB_PART  # read back whole, once: strips
COARSE_LEVEL = {"driver": "GTiff", "count": 1, "dtype": "uint8", "nodata": NODATA}
# no nodata: a sum of 0 is black, as outside the imagery; sparse: an all-black chunk takes no space
LOWRES_CHUNK = {"driver": "GTiff", "compress": "zstd", "zstd_level": 1, "predictor": 2, "sparse_ok": True}
SIEVE = {"driver": "GTiff", "count": 1, "dtype": "uint8", "compress": "deflate", "tiled": True,
         "blockxsize": 256, "blockysize": 256}
COG = {"driver": "COG", "COMPRESS": "DEFLATE", "PREDICTOR": "YES", "LEVEL": DEFLATE_LEVEL,
       "NUM_THREADS": "ALL_CPUS", "BIGTIFF": "IF_SAFER"}
SYNTHETIC = {"driver": "GTiff", "dtype": "uint8", "compress": "deflate"}
GTIFF = {"driver": "GTiff", "COMPRESS": "DEFLATE", "PREDICTOR": 2, "ZLEVEL": DEFLATE_LEVEL, "BIGTIFF": "IF_SAFER",
         "NUM_THREADS": "ALL_CPUS"}


def laid_over(*layers: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    """One profile: ``layers`` and then ``options``, each laid over what comes before it."""
    profile: dict[str, Any] = {}
    for layer in (*layers, options):
        profile.update(layer)
    return profile


def tiling(width: int, height: int, block: int, block_height: int | None = None) -> dict[str, Any]:
    """Blocks of ``block`` px (``block_height`` rows) when both sides are 16 px or more, else strips ({})."""
    if width < 16 or height < 16:
        return {}
    return {"tiled": True, "blockxsize": block, "blockysize": block if block_height is None else block_height}


def class_raster_profile(width: int, height: int, crs: CRS | None, transform: Affine, block: int, count: int = 1,
                         **options: Any) -> dict[str, Any]:
    """A class (or confidence) raster written block by block."""
    return laid_over(CLASS_RASTER, dict(width=width, height=height, count=count, crs=crs, transform=transform),
                     tiling(width, height, block), options)


def part_profile(width: int, height: int, crs: CRS | None, transform: Affine, block: int, count: int,
                 **options: Any) -> dict[str, Any]:
    """A unit's part file: classes, and confidence as band 2 when ``count`` is 2."""
    return laid_over(JOB_PART, dict(width=width, height=height, count=count, crs=crs, transform=transform),
                     tiling(width, height, block), options)


def overview_levels_profile(width: int, height: int, count: int, **options: Any) -> dict[str, Any]:
    """A unit's overview levels packed side by side (not georeferenced: the assembly places them)."""
    return laid_over(OVERVIEW_LEVELS, dict(width=width, height=height, count=count), options)


def coarse_level_profile(width: int, height: int, crs: CRS | None, transform: Affine,
                         **options: Any) -> dict[str, Any]:
    """One overview level coarser than a block, computed from the finer levels at assembly."""
    return laid_over(COARSE_LEVEL, dict(width=width, height=height, crs=crs, transform=transform), options)


def lowres_chunk_profile(width: int, height: int, count: int, dtype: str, crs: CRS | None, transform: Affine,
                         **options: Any) -> dict[str, Any]:
    """A chunk of the LR pre-pass raster: blocks of up to 256 px, whole multiples of 16 px."""
    return laid_over(LOWRES_CHUNK, dict(width=width, height=height, count=count, dtype=dtype, crs=crs,
                                        transform=transform),
                     tiling(width, height, min(256, _round16(width)), min(256, _round16(height))), options)


def sieve_profile(width: int, height: int, crs: CRS | None, transform: Affine, nodata: float | None,
                  **options: Any) -> dict[str, Any]:
    """The sieved copy of a class raster (``nodata``: the source's)."""
    return laid_over(SIEVE, dict(width=width, height=height, crs=crs, transform=transform, nodata=nodata), options)


def synthetic_profile(size: int, crs: CRS, transform: Affine, count: int, block: int,
                      **options: Any) -> dict[str, Any]:
    """A square synthetic mosaic (imagery or labels) of ``size`` px in ``block`` px tiles."""
    return laid_over(SYNTHETIC, dict(width=size, height=size, count=count, crs=crs, transform=transform,
                                     tiled=True, blockxsize=block, blockysize=block), options)


def cog_options(block: int, existing_overviews: bool, **options: Any) -> dict[str, Any]:
    """GDAL's COG driver: overviews copied from the source when it has them (never recomputed), else none."""
    overviews = "FORCE_USE_EXISTING" if existing_overviews else "NONE"
    return laid_over(COG, dict(BLOCKSIZE=block, OVERVIEWS=overviews), options)


def cog_average_options(block: int, **options: Any) -> dict[str, Any]:
    """GDAL's COG driver computing its own average overviews (rasters without unit pyramids: probabilities)."""
    return laid_over(COG, dict(BLOCKSIZE=block, OVERVIEWS="AUTO", RESAMPLING="AVERAGE"), options)


def gtiff_options(width: int, height: int, block: int, **options: Any) -> dict[str, Any]:
    """A GeoTIFF copy, tiled as :func:`tiling` says (its overviews are built afterwards)."""
    tiles = dict(TILED="YES", BLOCKXSIZE=block, BLOCKYSIZE=block) if tiling(width, height, block) else {}
    return laid_over(GTIFF, tiles, options)


def _round16(n: int) -> int:
    return max(16, n // 16 * 16)
