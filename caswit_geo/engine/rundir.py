"""The run directory: its files, the no-reuse rule and the per-epoch logs.

    <run>/config.json        resolved settings (a valid --config file; --resume reads it)
    <run>/last.safetensors   model after the last finished epoch (training checkpoint, with aux head)
    <run>/last.pt            optimiser, scaler, schedule step, RNG states, history (for --resume)
    <run>/best.safetensors   train: inference checkpoint of the best validation mIoU
    <run>/log.csv, log.json  one row per epoch (lr: that of the epoch's last iteration)
    <run>/curves.png         training curves
    <run>/reconstructions.png  pretrain: originals, masked inputs, reconstructions

A non-empty run directory is never reused silently: ``--overwrite`` starts
over (removing only the files above), ``--resume`` continues.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from pathlib import Path

from ..atomic import write_text
from ..errors import ConfigError, OutputError

CONFIG = "config.json"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last.pt"
BEST_WEIGHTS = "best.safetensors"
LOG_CSV = "log.csv"
LOG_JSON = "log.json"
CURVES = "curves.png"
RECONSTRUCTIONS = "reconstructions.png"
RUN_FILES = (CONFIG, LAST_WEIGHTS, LAST_STATE, BEST_WEIGHTS, LOG_CSV, LOG_JSON, CURVES, RECONSTRUCTIONS)


def default_run_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(out: Path, *, overwrite: bool = False) -> None:
    """Refuse ``out`` for a new run when it is a file or a non-empty directory (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"--out {out}: run directory is not empty; use --overwrite to start over or --resume {out} to continue"
        )


def prepare_run_dir(out: Path, *, overwrite: bool = False) -> Path:
    """Create ``out`` for a new run (see :func:`check_run_dir`); ``overwrite`` removes the old run's files."""
    out = Path(out)
    check_run_dir(out, overwrite=overwrite)
    if out.is_dir():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out}: cannot create the run directory ({e.strerror})") from None
    return out


def check_resumable(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    for name in (CONFIG, LAST_WEIGHTS, LAST_STATE):
        if not (run_dir / name).is_file():
            raise ConfigError(f"--resume {run_dir}: {name} not found (not a run directory, or no epoch finished yet)")
    return run_dir


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None


def write_logs(run_dir: Path, history: list[dict]) -> None:
    """``log.csv`` and ``log.json``: one row per finished epoch (NaN/None written empty / null)."""
    rows = [{k: _finite(v) for k, v in row.items()} for row in history]
    write_json(run_dir / LOG_JSON, rows)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text(run_dir / LOG_CSV, buf.getvalue())


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
