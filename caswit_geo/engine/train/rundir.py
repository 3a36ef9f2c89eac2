"""The run directory: its files, how they are written, the no-reuse rule and the per-epoch logs.

    <run>/config.json        resolved settings (a valid --config file; --resume reads it)
    <run>/last.pt            the resume state: model, optimiser, scaler, schedule step, RNG states,
                             history, and where a stopped epoch stands (``runstate.py``)
    <run>/last.safetensors   model after the last finished epoch (training checkpoint, with aux head)
    <run>/best.safetensors   train: inference checkpoint of the best validation mIoU
    <run>/log.csv, log.json  one row per epoch (lr: that of the epoch's last iteration)
    <run>/curves.png         training curves
    <run>/reconstructions.png  pretrain: originals, masked inputs, reconstructions
    <run>/samples.png        train on vector labels: tiles, their labels and their LR context

Write protocol (what a failure or a kill at any moment leaves):

1. Nothing is written before the run has something to save: options, data,
   model and optimiser are all checked first. A claim on the directory,
   held for the whole run, stops a second run on it at once.
2. The first save (end of epoch 1, or a stop before it) writes
   ``config.json``, ``last.pt`` and the other files under temporary names and
   renames them into place together (:class:`~caswit_geo.safeio.outputs.OutputSet`).
   With ``--overwrite`` the old run's files are replaced only then, all at
   once; its files the new run does not write are removed, other files in
   the directory are kept. A run that fails or is killed before that
   leaves the directory as it was.
3. Every later save writes ``last.pt`` first, in one atomic rename: it is the
   commit point and holds everything a resume needs. The other files are
   derived from it and written after it; one that lags behind it (a kill
   between the two) is rewritten from it on ``--resume``.
4. Temporary files of a killed run are removed by the next run that writes
   in the same folder (``safeio/sweep.py``).

A non-empty run directory is never reused silently: ``--overwrite`` starts
over, ``--resume`` continues.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from pathlib import Path

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.core.jsonfile import load_json
from caswit_geo.safeio.outputs import OutputSet
from caswit_geo.safeio.writes import write_text

CONFIG = "config.json"
MAX_RUN_JSON_BYTES = 64 * 2**20  # log.json of a long run: about 1 KiB per epoch
MAX_RUN_JSON_DEPTH = 16
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last.pt"
BEST_WEIGHTS = "best.safetensors"
LOG_CSV = "log.csv"
LOG_JSON = "log.json"
CURVES = "curves.png"
RECONSTRUCTIONS = "reconstructions.png"
SAMPLES = "samples.png"
RUN_FILES = (CONFIG, LAST_STATE, LAST_WEIGHTS, BEST_WEIGHTS, LOG_CSV, LOG_JSON, CURVES, RECONSTRUCTIONS, SAMPLES)


def default_run_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(out: Path, *, overwrite: bool = False) -> None:
    """Refuse ``out`` for a new run when it is a file or a non-empty directory (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = f" or --resume {out} to continue" if is_resumable(out) else ""
        raise OutputError(f"--out {out}: run directory is not empty; use --overwrite to start over{hint}")


def is_resumable(run_dir: Path) -> bool:
    return (Path(run_dir) / CONFIG).is_file() and (Path(run_dir) / LAST_STATE).is_file()


def check_resumable(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    for name in (CONFIG, LAST_STATE):
        if not (run_dir / name).is_file():
            raise ConfigError(f"--resume {run_dir}: {name} not found (not a run directory, or nothing saved yet)")
    return run_dir


class RunDirectory:
    """The files of one run, written by the master process only (see the module docstring).

    ``file(name)`` is where to write ``name`` now (a temporary name until the
    first save is committed), ``commit()`` ends a save, ``close()`` ends the
    run (a run that never committed leaves nothing). Other ranks hold an
    inactive instance that writes nothing.

    Args:
        path: the run directory.
        settings: ``config.json``'s content (new runs), written with the first save.
        resuming: the directory already holds a run (``--resume``).
        active: False on the ranks that do not write.
    """

    def __init__(self, path: Path, settings: dict | None, *, resuming: bool, active: bool = True) -> None:
        self.path = Path(path)
        self.settings = settings
        self.resuming = resuming
        self.started = resuming
        self.active = active
        self._lease: OutputSet | None = None
        self._first: OutputSet | None = None
        self._lease_point = _lease_point(self.path)
        if active:
            self._lease = _lease(self._lease_point)

    def guard_inputs(self, inputs) -> None:
        """Declare the files the run reads that a run file could replace (``--init``, weights).

        The first save never replaces one, even with ``--overwrite``
        (e.g. ``--init`` naming the ``last.safetensors`` of the directory
        being overwritten). Call before the first :meth:`file`.
        """
        if self.active and not self.started and self._first is None:
            first = OutputSet(overwrite=True, inputs=[Path(p) for p in inputs if p is not None])
            self._first = first
            for name in RUN_FILES:
                first.add(self.path / name, "--out", claim=False, create_parents=True, clear=True)

    def file(self, name: str) -> Path:
        """Where to write ``name`` now: its temporary name before the first commit, else its place."""
        if not self.active:
            raise RuntimeError("only the master process writes the run directory")
        if self.started:
            return self.path / name
        self.guard_inputs(())
        return self._first.temp(self.path / name)

    def commit(self) -> None:
        """End a save: the first one brings ``config.json`` and every file written into place together."""
        if not self.active or self.started:
            return
        write_json(self.file(CONFIG), self.settings)
        self._first.commit()
        self._first = None
        self.started = True
        if self._lease_point != _lease_point(self.path):  # the directory exists now: claim it from inside
            lease, self._lease_point = self._lease, _lease_point(self.path)
            self._lease = _lease(self._lease_point)
            lease.abort()

    def close(self) -> None:
        """End the run: an uncommitted first save is discarded, the claim released."""
        if self._first is not None:
            self._first.abort()
            self._first = None
        if self._lease is not None:
            self._lease.abort()
            self._lease = None

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lease_point(run_dir: Path) -> Path:
    """What claims a run directory: an existing one from inside (``<run>/.run``: its parent may be
    read-only, e.g. a prepared scratch folder), a new one where it will be made."""
    return run_dir / ".run" if run_dir.is_dir() else run_dir


def _lease(point: Path) -> OutputSet:
    """A claim on ``point`` for the whole run (an output set without destinations)."""
    lease = OutputSet()
    try:
        lease.claim(point, "--out")
    except BaseException:
        lease.abort()
        raise
    return lease


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def read_json(path: Path):
    """A run directory's JSON file (``config.json``, ``log.json``), read through the bounded loader."""
    return load_json(path, what=Path(path).name, max_bytes=MAX_RUN_JSON_BYTES, max_depth=MAX_RUN_JSON_DEPTH,
                     error=ConfigError)


def write_logs(run: RunDirectory, history: list[dict]) -> None:
    """``log.csv`` and ``log.json``: one row per finished epoch (NaN/None written empty / null)."""
    rows = [{k: json_ready(v) for k, v in row.items()} for row in history]
    write_json(run.file(LOG_JSON), rows)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text(run.file(LOG_CSV), buf.getvalue())


def json_ready(value):
    """``value`` with every NaN or infinite float (nested too) replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
