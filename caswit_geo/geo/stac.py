"""STAC inputs: an Item, an ItemCollection or a FeatureCollection of Items -> the rasters to read.

A catalogue search saved as JSON (or the URL of one item) names its
imagery by assets. :func:`stac_rasters` reads the document with
``pystac`` (bounded in size and depth like every JSON we read), picks one
asset per item and returns their GDAL names: ``--asset KEY``, else the
asset with role ``visual``, else ``data``, whose media type is a GeoTIFF.
Relative hrefs are resolved against the document's own location (a file
or a URL). An item that has no such asset, whose asset is not a raster, or
whose CRS (``proj:code`` / ``proj:epsg``) differs from the others' is
named; the mosaic's own rules (one CRS, one pixel size) apply after.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.jsonfile import load_json, parse_json
from caswit_geo.geo.remote import fetch_bounded, gdal_name, is_remote, is_url, mask

STAC_SUFFIXES = (".json", ".geojson")
MAX_BYTES = 64 << 20  # a saved search of thousands of items is a few MiB
MAX_DEPTH = 32  # FeatureCollection > features > item > geometry > coordinates ...: about 8
MAX_ITEMS = 100_000
DEFAULT_ROLES = ("visual", "data")
RASTER_SUFFIXES = (".tif", ".tiff")


def is_stac_document(name: str | Path) -> bool:
    """A JSON document (local or a URL), which predict reads as STAC: never a raster."""
    s = str(name)
    path = urlsplit(s).path if is_url(s) else s
    return path.lower().endswith(STAC_SUFFIXES)


def stac_rasters(name: str | Path, asset: str | None = None) -> tuple[list[str | Path], str]:
    """(the rasters of the document ``name``, a line saying which assets were taken).

    Raises InputError naming the document (its URL masked) and the odd item.
    """
    import pystac

    label = mask(name)
    data = _load(name, label)
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(data, preserve_dict=False, migrate=True)]
        elif kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list) or len(features) > MAX_ITEMS:
                raise InputError(f"{label}: its features are not a list of at most {MAX_ITEMS:,} STAC items")
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        elif kind in ("Catalog", "Collection"):
            raise InputError(f"{label}: a STAC {kind} lists no imagery itself: search it for items and give the "
                             "Item or the search's FeatureCollection saved as JSON")
        else:
            raise InputError(f"{label}: not a STAC Item or ItemCollection (type {str(kind)[:40]!r})")
    except InputError:
        raise
    except Exception as e:  # pystac's errors on malformed items: KeyError, TypeError, STACError...
        raise InputError(f"{label}: not a valid STAC document ({type(e).__name__}: {str(e)[:160]})") from None
    if not items:
        raise InputError(f"{label}: holds no STAC item")
    base = str(name) if is_url(name) else str(Path(name).resolve())
    rasters, keys, crs = [], [], []
    for item in items:
        key, chosen = _pick_asset(item, asset, label)
        rasters.append(_resolve(chosen.href, base))
        keys.append(key)
        crs.append(_crs_code(item, chosen))
    _check_crs(items, crs, label)
    return rasters, _summary(label, len(items), keys, asset)


def _load(name: str | Path, label: str):
    what = "the STAC document"
    if is_url(name):
        raw = fetch_bounded(str(name), MAX_BYTES, what)
        return parse_json(raw, source=label, what=what, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    if is_remote(name):
        raise InputError(f"{label}: STAC documents are read from a file or an http(s) URL")
    return load_json(name, what=what, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)


def is_geotiff(media_type: str | None, href: str) -> bool:
    """A GeoTIFF asset (COGs included); an asset without a media type is judged by its href's suffix."""
    if not media_type:
        return urlsplit(href).path.lower().endswith(RASTER_SUFFIXES)
    media_type = media_type.lower().replace(" ", "")
    return media_type.startswith("image/tiff") and "application=geotiff" in media_type


def _pick_asset(item, asset: str | None, label: str):
    """(key, asset) of ``item`` that predict reads (see the module docstring)."""
    available = ", ".join(list(item.assets)[:12]) or "none"
    if asset is not None:
        chosen = item.assets.get(asset)
        if chosen is None:
            raise InputError(f"{label}: item {item.id!r} has no asset {asset!r} (its assets: {available})")
        media = (chosen.media_type or "").lower()
        if media and not media.startswith("image/"):
            raise InputError(f"{label}: asset {asset!r} of item {item.id!r} is {chosen.media_type}, not a raster")
        return asset, chosen
    for role in DEFAULT_ROLES:
        for key, candidate in item.assets.items():
            if role in (candidate.roles or []) and is_geotiff(candidate.media_type, candidate.href):
                return key, candidate
    raise InputError(f"{label}: item {item.id!r} has no GeoTIFF asset with role visual or data (its assets: "
                     f"{available}); pick one with --asset KEY")


def _resolve(href: str, base: str) -> str | Path:
    """The GDAL name of ``href``, relative ones resolved against the document's location ``base``."""
    if href.lower().startswith("file://"):
        href = urlsplit(href).path
    if is_remote(href):
        return gdal_name(href)
    if is_url(base):
        return gdal_name(urljoin(base, href))
    path = Path(href)
    return path if path.is_absolute() else Path(base).parent / path


def _crs_code(item, asset) -> str | None:
    """The item's CRS as its projection extension gives it (the asset's own first), or None."""
    for fields in (asset.extra_fields, item.properties):
        code = fields.get("proj:code")
        if isinstance(code, str) and code:
            return code.upper()
        epsg = fields.get("proj:epsg")
        if isinstance(epsg, int) and not isinstance(epsg, bool):
            return f"EPSG:{epsg}"
    return None


def _check_crs(items, codes: list[str | None], label: str) -> None:
    known = [(item, code) for item, code in zip(items, codes) if code is not None]
    if not known:
        return
    common = Counter(code for _, code in known).most_common(1)[0][0]
    for item, code in known:
        if code != common:
            raise InputError(f"{label}: item {item.id!r} is in {code}, the other items in {common}: one mosaic "
                             "has one CRS (predict them apart, or reproject that item)")


def _summary(label: str, count: int, keys: list[str], asset: str | None) -> str:
    taken = Counter(keys)
    how = "" if asset is not None else " (by role: visual, else data)"
    assets = ", ".join(f"{k!r}" + (f" x {n}" if len(taken) > 1 else "") for k, n in taken.items())
    return f"{label}: {count} STAC item{'s' if count != 1 else ''}, asset {assets}{how}"


def check_asset_option(asset: str | None, any_stac: bool) -> None:
    """``--asset`` picks the asset of STAC items: refused without a STAC input."""
    if asset is not None and not any_stac:
        raise ConfigError(f"--asset {asset}: picks the asset of STAC items, and no input is a STAC document (.json)")


__all__ = ["check_asset_option", "is_geotiff", "is_stac_document", "stac_rasters"]
