"""What the user names as inputs -> the rasters predict reads, and how each is identified.

Inputs are local files, folders and globs (``mosaic.expand_inputs``), URLs
and GDAL network names (``remote.py``), and STAC documents (``stac.py``),
mixed freely: all of them form one mosaic. The remote ones are probed here,
before anything is written, so that a missing or refused URL is one line,
and their identity (size, ETag or Last-Modified) is what ``plan.json``
records for ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from caswit_geo.geo.mosaic import expand_inputs
from caswit_geo.geo.remote import remote_identities
from caswit_geo.geo.stac import check_asset_option, is_stac_document, stac_rasters


@dataclass
class Inputs:
    """``files``: GDAL names (local paths as Paths, remote ones as strings); ``notes``: what was
    taken from STAC documents; ``identities``: the remote files' identity records, by name."""

    files: list[str | Path]
    notes: list[str] = field(default_factory=list)
    identities: dict[str, dict] = field(default_factory=dict)


def resolve_inputs(items: Sequence[str | Path], asset: str | None = None) -> Inputs:
    """The rasters behind ``items``; InputError (one line, URLs masked) for one that cannot be read."""
    named: list[str | Path] = []
    notes: list[str] = []
    for item in items:
        if is_stac_document(item):
            rasters, note = stac_rasters(item, asset)
            named.extend(rasters)
            notes.append(note)
        else:
            named.append(item)
    check_asset_option(asset, bool(notes))
    files = expand_inputs(named)
    return Inputs(files, notes, remote_identities(files))


__all__ = ["Inputs", "resolve_inputs"]
