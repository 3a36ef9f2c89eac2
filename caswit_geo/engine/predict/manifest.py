"""``plan.json`` read back: untrusted state, checked like a checkpoint header before anything uses it.

A job folder outlives the process that wrote it, and anyone may edit it.
Reading its plan therefore checks, in order:

1. the file itself: bounded size and nesting (``core/jsonfile.py``);
2. its schema: known keys only, each of its type and within bounds
   (:func:`check_schema`);
3. its layout against the run that joins it: the grid it records must be
   this plan's (tile, overlap, block), its strip width and unit shape valid
   for it, and its units exactly those :func:`~caswit_geo.engine.predict.plan.plan_units`
   computes from that grid (:func:`job_units`). Units cut, duplicated, at a
   negative offset or missing are refused, naming ``plan.json``.

Every refusal is one line naming the file: a ``ConfigError``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.jsonfile import load_json
from caswit_geo.engine.predict.plan import MAX_UNITS, PredictPlan, Unit, plan_units, unit_estimate

FORMAT = "caswit-geo predict job"
VERSION = 2  # 2: units only where there is data, "unit_width" in the grid
PLAN_FILE = "plan.json"
# about 40 bytes a unit, and the inputs' records: a plan.json larger than this is not ours
MAX_BYTES = 48 << 20
MAX_DEPTH = 4
MAX_INPUTS = 1 << 20
MAX_SHARDS = 1 << 16
MAX_SIDE = 1 << 31  # pixels: the largest raster side, unit or strip a plan may record
_HEX = re.compile(r"[0-9a-f]+")


def read_manifest(job_dir: Path, how: str) -> dict:
    """The job's plan.json, checked (schema and bounds); ConfigError naming it otherwise."""
    path = job_dir / PLAN_FILE
    data = load_json(path, what="the job plan", max_bytes=MAX_BYTES, max_depth=MAX_DEPTH, error=ConfigError)
    try:
        check_schema(data)
    except ValueError as e:
        raise ConfigError(f"{how}: {path}: {e}; this job cannot be continued, start again with --overwrite") from None
    return data


def _int(value, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:  # bool is no int here
        raise ValueError(f"{name} is {str(value)[:40]!r}, expected an integer in [{lo}, {hi}]")
    return value


def _str(value, name: str, most: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise ValueError(f"{name} is not a text of at most {most} characters")
    return value


def _dict(value, name: str, keys: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    unknown = set(value) - keys - optional
    if unknown:
        raise ValueError(f"{name} has an unknown key {sorted(unknown)[0][:40]!r}")
    missing = keys - set(value)
    if missing:
        raise ValueError(f"{name} lacks {sorted(missing)[0]!r}")
    return value


def _list(value, name: str, most: int) -> list:
    if not isinstance(value, list) or len(value) > most:
        raise ValueError(f"{name} is not a list of at most {most:,} items")
    return value


def check_schema(data) -> None:
    """ValueError naming the first key of ``data`` that is not what this version writes."""
    _dict(data, "the plan", {"format", "version", "job_id", "created", "created_by", "inputs", "checkpoint",
                             "pixels", "outputs", "grid", "shards", "units"})
    if data["format"] != FORMAT or data["version"] != VERSION:
        raise ValueError(f"not a job plan of this version ({FORMAT} {VERSION})")
    job_id = _str(data["job_id"], "job_id", 64)
    if not _HEX.fullmatch(job_id):
        raise ValueError("job_id is not a hexadecimal id")
    _str(data["created"], "created", 64)
    by = _dict(data["created_by"], "created_by", {"pid", "host", "command"})
    _int(by["pid"], "created_by.pid", 0, 2**31)
    _str(by["host"], "created_by.host", 256)
    _str(by["command"], "created_by.command", 4096)
    for i, rec in enumerate(_list(data["inputs"], "inputs", MAX_INPUTS)):
        rec = _dict(rec, f"inputs[{i}]", {"path", "size", "mtime_ns"}, {"etag"})
        _str(rec["path"], f"inputs[{i}].path")
        if "etag" in rec:  # a remote input's (geo/remote.py)
            _str(rec["etag"], f"inputs[{i}].etag", 256)
        _int(rec["size"], f"inputs[{i}].size", 0, 2**63)
        _int(rec["mtime_ns"], f"inputs[{i}].mtime_ns", -(2**63), 2**63)
    checkpoint = _dict(data["checkpoint"], "checkpoint", {"path", "sha256"})
    _str(checkpoint["path"], "checkpoint.path")
    if not _HEX.fullmatch(_str(checkpoint["sha256"], "checkpoint.sha256", 64)):
        raise ValueError("checkpoint.sha256 is not a SHA-256")
    pixels = _dict(data["pixels"], "pixels", set(), PIXEL_KEYS)
    for key, value in pixels.items():
        ok = value is None or isinstance(value, (bool, int, str)) and len(str(value)) <= 64 or (
            isinstance(value, list) and len(value) <= 64 and all(type(v) is int for v in value))
        if not ok:
            raise ValueError(f"pixels.{key} is not a value this version writes")
    outputs = _dict(data["outputs"], "outputs", {"classes", "confidence"}, {"probabilities"})
    for key in ("classes", "confidence", "probabilities"):
        for i, path in enumerate(_list(outputs.get(key, []), f"outputs.{key}", MAX_INPUTS)):
            _str(path, f"outputs.{key}[{i}]")
    grid = _dict(data["grid"], "grid", set(GRID_KEYS))
    for key in ("width", "height", "tile", "block", "strip_width", "unit_size", "unit_width"):
        _int(grid[key], f"grid.{key}", 1, MAX_SIDE)
    _int(grid["overlap"], "grid.overlap", 0, grid["tile"] - 1)
    _int(data["shards"], "shards", 1, MAX_SHARDS)
    for i, unit in enumerate(_list(data["units"], "units", MAX_UNITS)):
        if not isinstance(unit, list) or len(unit) != 6:
            raise ValueError(f"units[{i}] is not [raster, col, row, width, height, weight]")
        for name, value in zip(("raster", "col", "row", "width", "height", "weight"), unit):
            _int(value, f"units[{i}].{name}", 1 if name in ("width", "height") else 0, MAX_SIDE**2)


PIXEL_KEYS = frozenset({"overlap", "resample", "nodata", "context", "precision", "tile", "context_factor", "bands",
                        "per_file", "confidence", "probabilities", "tta", "alpha_mask", "region"})
GRID_KEYS = ("width", "height", "tile", "overlap", "block", "strip_width", "unit_size", "unit_width")


def job_units(stored: dict, plan: PredictPlan, path: Path) -> tuple[int, int, int, list[Unit]]:
    """(strip width, unit size, unit width, units) of the job, checked against ``plan``.

    The stored grid must be this plan's, and the stored units exactly those
    its own layout gives over this plan's inputs; ConfigError naming
    ``path`` otherwise.
    """
    g = stored["grid"]
    fix = "this job cannot be continued, start again with --overwrite"
    for key, mine in (("tile", plan.grid.tile), ("overlap", plan.grid.overlap), ("block", plan.block)):
        if g[key] != mine:
            raise ConfigError(f"{path}: grid.{key} is {g[key]} but this run's is {mine}; {fix}")
    strip_width, unit_size, unit_width = g["strip_width"], g["unit_size"], g["unit_width"]
    if strip_width % plan.block or (not plan.soft and strip_width % plan.grid.tile):
        raise ConfigError(f"{path}: grid.strip_width {strip_width} is not a multiple of the block ({plan.block})"
                          f"{'' if plan.soft else f' and of the tile ({plan.grid.tile})'}; {fix}")
    align = math.lcm(plan.block, plan.grid.tile)
    if unit_estimate(plan.rasters, align, unit_size, unit_width, plan.footprints) > MAX_UNITS:
        raise ConfigError(f"{path}: units of {unit_width} x {unit_size} px would be more than {MAX_UNITS:,}; {fix}")
    units = plan_units(plan.rasters, plan.grid, plan.block, unit_size, plan.footprints, unit_width)
    expected = manifest_units(units)
    if stored["units"] != expected:
        raise ConfigError(f"{path}: its {len(stored['units'])} units are not the {len(expected)} units of its grid "
                          f"({unit_width} x {unit_size} px units over these inputs); {fix}")
    return strip_width, unit_size, unit_width, units


def manifest_units(units: list[Unit]) -> list[list[int]]:
    return [[u.raster, int(u.window.col_off), int(u.window.row_off), int(u.window.width), int(u.window.height),
             u.weight] for u in units]


__all__ = ["FORMAT", "PLAN_FILE", "VERSION", "check_schema", "job_units", "manifest_units", "read_manifest"]
