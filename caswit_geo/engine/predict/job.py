"""The job folder: what survives an interrupted ``predict`` so that ``--resume`` redoes nothing.

Beside a single output ``map.tif`` it is ``.map.tif.caswit-job/``; for
per-file outputs it is ``<out>/.caswit-job-<digest of its outputs>/`` (per-file
runs of other inputs into one folder are other jobs)::

    plan.json                the plan (below), written once when the job starts
    units/u000042.tif        one part file per finished unit (its classes, and confidence band), tagged
                             with its unit's identity (job id, unit id, raster, window), checked before assembly
    units/u000042.ovr.tif    its overview levels (``geo/pyramid.py``), packed side by side
    lowres/lr_00001_00002.tif  LR pre-pass chunks (deterministic; shared by shards and resumes)
    log/<process token>.jsonl  each process's events: start, unit-start, unit, stop
    finalize.lock            flock of the process assembling the outputs
    .caswit-<token>.lock     liveness lock of each process working on the job (safeio/liveness.py)

Every file in it is written under a temporary name and renamed when
complete, so a killed process leaves only its own temporaries, which the
next process holding the folder removes (``safeio/sweep.py``). A unit is
done when its part file exists.

``plan.json`` records what the job's pixels depend on: the inputs (path,
size, mtime), the checkpoint's SHA-256, the pixel-changing options, the
destinations, the grid, the units and the number of shards. A run that
joins the job (``--resume``, ``--shard``, ``--finalize``, torchrun ranks)
must plan the same; it is refused with one line naming the difference.
The job folder is removed when the outputs are committed.

While the folder exists the job holds its destinations (job claims,
``claims.py``): another run to the same outputs is told that a live run is
writing them, or that an interrupted job exists (``--resume`` or
``--overwrite``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.engine.predict.manifest import FORMAT, PLAN_FILE, VERSION, job_units, manifest_units, read_manifest
from caswit_geo.engine.predict.plan import PredictPlan, Unit, is_sidecar, shard_units
from caswit_geo.geo.remote import is_remote, mask_text, remote_identity
from caswit_geo.safeio import claims
from caswit_geo.safeio.files import fsync_file, remove_path, rename_noreplace, temp_path
from caswit_geo.safeio.liveness import describe_owner, live_owners, process_token
from caswit_geo.safeio.outputs import OutputSet
from caswit_geo.safeio.sweep import hold_folder, holding, release_folder

# plan.json keys -> the option a user changes to change them
_OPTIONS_BEFORE = {"tta": "none", "probabilities": False, "alpha_mask": False, "nodata": None, "region": None}
_OPTION_NAMES = {
    "region": "the region (--roi, --bbox; a digest of its polygons on the grid)",
    "overlap": "--overlap",
    "resample": "--resample",
    "alpha_mask": "--alpha-mask",
    "nodata": "--nodata",
    "context": "the LR context mode",
    "precision": "--precision",
    "tile": "the checkpoint's tile size",
    "context_factor": "the checkpoint's context factor",
    "bands": "the checkpoint's bands",
    "per_file": "--out (file or folder)",
    "confidence": "--confidence",
    "probabilities": "--probabilities",
    "tta": "the test-time augmentation (--tta, --tta-flips)",
}


# ---------------------------------------------------------------------------
# plan.json
# ---------------------------------------------------------------------------


def input_record(path: str | Path, identities: dict[str, dict] | None = None) -> dict:
    """What identifies an input: its path, size and mtime; a URL's masked name, size and ETag or
    Last-Modified (``geo/remote.py``; probed with the plan, in ``identities``)."""
    if is_remote(path):
        return (identities or {}).get(str(path)) or remote_identity(str(path))
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def make_manifest(plan: PredictPlan, shards: int) -> dict:
    """The content of plan.json for ``plan`` (hashes the checkpoint)."""
    g = plan.grid
    return {
        "format": FORMAT,
        "version": VERSION,
        "job_id": secrets.token_hex(8),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_by": {"pid": os.getpid(), "host": socket.gethostname(),
                       "command": mask_text(" ".join(sys.argv))[:2000]},  # a signed URL's token is not kept
        "inputs": [input_record(p, plan.input_ids) for p in plan.inputs],
        "checkpoint": {"path": os.path.abspath(plan.weights), "sha256": plan.checkpoint_sha256},
        "pixels": plan.options,
        "outputs": make_outputs(plan),
        "grid": {"width": g.width, "height": g.height, "tile": g.tile, "overlap": g.overlap,
                 "block": plan.block, "strip_width": plan.strip_width, "unit_size": plan.unit_size,
                 "unit_width": plan.unit_width or plan.unit_size},
        "shards": shards,
        "units": manifest_units(plan.units),
    }


def compare_manifest(stored: dict, plan: PredictPlan, how: str) -> None:
    """Refuse (one line naming the difference) a run whose plan differs from the job's."""
    restart = "start again without it and with --overwrite"
    old_inputs = {d["path"]: d for d in stored.get("inputs", [])}
    new_inputs = [input_record(p, plan.input_ids) for p in plan.inputs]
    for rec in new_inputs:
        old = old_inputs.get(rec["path"])
        if old is None:
            raise ConfigError(f"{how}: input {rec['path']} is not one of the interrupted job's inputs; {restart}")
        if (old["size"], old["mtime_ns"], old.get("etag")) != (rec["size"], rec["mtime_ns"], rec.get("etag")):
            raise ConfigError(f"{how}: input {rec['path']} changed since the job started (size, time or ETag); "
                              f"{restart}")
    if len(new_inputs) != len(old_inputs):
        missing = sorted(set(old_inputs) - {r["path"] for r in new_inputs})
        raise ConfigError(f"{how}: the interrupted job also read {missing[0] if missing else 'other files'}; {restart}")
    digest = plan.checkpoint_sha256
    if stored.get("checkpoint", {}).get("sha256") != digest:
        raise ConfigError(
            f"{how}: --weights {plan.weights} is not the checkpoint of the interrupted job "
            f"(sha256 {digest[:12]} vs {str(stored.get('checkpoint', {}).get('sha256'))[:12]}); {restart}"
        )
    # options added since a job was started: absent means the value that was the only one then
    old_pixels = {**_OPTIONS_BEFORE, **stored.get("pixels", {})}
    for key in sorted(set(old_pixels) | set(plan.options)):
        if old_pixels.get(key) != plan.options.get(key):
            name = _OPTION_NAMES.get(key, key)
            raise ConfigError(
                f"{how}: {name} is {plan.options.get(key)!r} but the interrupted job used {old_pixels.get(key)!r}; "
                f"use the same value, or {restart}"
            )
    outputs = stored.get("outputs", {})
    now = make_outputs(plan)
    for key, option in (("classes", "--out"), ("confidence", "--confidence"), ("probabilities", "--probabilities")):
        if outputs.get(key, []) != now[key]:
            raise ConfigError(f"{how}: {option} differs from the interrupted job's outputs; {restart}")
    g = stored.get("grid", {})
    if (g.get("width"), g.get("height")) != (plan.grid.width, plan.grid.height):
        raise ConfigError(f"{how}: the mosaic is {plan.grid.width} x {plan.grid.height} px but the job's was "
                          f"{g.get('width')} x {g.get('height')}; {restart}")


def make_outputs(plan: PredictPlan) -> dict:
    return {
        "classes": [str(Path(os.path.abspath(r.classes))) for r in plan.rasters],
        "confidence": [str(Path(os.path.abspath(r.confidence))) for r in plan.rasters if r.confidence],
        "probabilities": [str(Path(os.path.abspath(r.probabilities))) for r in plan.rasters if r.probabilities],
    }


def adopt_layout(plan: PredictPlan, stored: dict) -> None:
    """Take the job's unit layout (strip width, unit shape), checked: the work already done follows it."""
    plan.strip_width, plan.unit_size, plan.unit_width, plan.units = job_units(stored, plan, plan.job_dir / PLAN_FILE)


# ---------------------------------------------------------------------------
# The job folder
# ---------------------------------------------------------------------------


@dataclass
class Job:
    dir: Path
    manifest: dict
    created: bool = False  # this process created the job folder (a failed start may remove it)

    @property
    def units_dir(self) -> Path:
        return self.dir / "units"

    @property
    def lowres_dir(self) -> Path:
        return self.dir / "lowres"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def shards(self) -> int:
        return int(self.manifest.get("shards", 1))

    @property
    def job_id(self) -> str:
        return str(self.manifest.get("job_id", ""))

    def part_identity(self, unit: Unit) -> dict:
        """What a unit's part (and pyramid) file says it holds, checked before assembly."""
        w = unit.window
        return {"job": self.job_id, "unit": unit.id, "raster": unit.raster,
                "window": [int(w.col_off), int(w.row_off), int(w.width), int(w.height)]}

    def check_folders(self) -> None:
        """The job's folders must be real folders inside it: a link would send its files (parts,
        locks, the assembly) elsewhere. A missing one is made again (what it held is redone)."""
        if self.dir.is_symlink() or not self.dir.is_dir():
            raise ConfigError(f"{self.dir}: the job folder is a link or not a folder; remove it and start again")
        for name in ("units", "lowres", "log", "assemble"):
            path = self.dir / name
            if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
                raise ConfigError(f"{path}: not a folder of the job (a link or a file); remove it, "
                                  "then run the same command with --resume")
            if name != "assemble" and not path.exists():
                path.mkdir()

    def part_path(self, unit_id: int) -> Path:
        return self.units_dir / f"u{unit_id:06d}.tif"

    def probabilities_path(self, unit_id: int) -> Path:
        """The unit's class probabilities, K bands (written before its part)."""
        return self.units_dir / f"u{unit_id:06d}.prob.tif"

    def pyramid_path(self, unit_id: int) -> Path:
        """The unit's overview levels, packed side by side (written before its part)."""
        return self.units_dir / f"u{unit_id:06d}.ovr.tif"

    def done_units(self) -> set[int]:
        """Ids of the units whose part file exists."""
        try:
            names = os.listdir(self.units_dir)
        except FileNotFoundError:
            return set()
        return {int(n[1:7]) for n in names if len(n) == 11 and n[0] == "u" and n.endswith(".tif") and n[1:7].isdigit()}

    # -- liveness: every process working on the job holds its folders --------

    def hold(self) -> None:
        for folder in (self.dir, self.units_dir, self.lowres_dir):
            hold_folder(folder)

    def release(self) -> None:
        for folder in (self.lowres_dir, self.units_dir, self.dir):
            release_folder(folder)

    # -- events -------------------------------------------------------------------

    def log(self, event: str, **fields) -> None:
        """Append one event to this process's log (one file per process: appends never interleave)."""
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}) + "\n"
        path = self.log_dir / f"{process_token()}.jsonl"
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def events(self) -> list[dict]:
        """Every process's events, each with its process token, in time order."""
        out = []
        for path in sorted(self.log_dir.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append({**json.loads(line), "token": path.stem})
        return sorted(out, key=lambda e: e.get("t", 0))

    # -- end ------------------------------------------------------------------------

    @contextlib.contextmanager
    def finalize_lock(self):
        """Yield True when this process may assemble the outputs, False when another has assembled them.

        Two runs that finish together (shards, ``--finalize`` twice): one
        assembles, the other waits for it, so that no run reports success
        before the outputs exist. If the assembler fails, the job stays
        and the waiting run assembles it.
        """
        try:
            fd = os.open(self.dir / "finalize.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:  # the job folder is gone: another run committed the outputs
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # the job folder goes when its outputs are committed
            yield (self.dir / PLAN_FILE).is_file()
        finally:
            os.close(fd)

    def missing(self, units: list[Unit]) -> list[Unit]:
        done = self.done_units()
        return [u for u in units if u.id not in done]

    def describe_missing(self, units: list[Unit]) -> str:
        """Which shards still have units to do, for --finalize's message."""
        missing = self.missing(units)
        n = self.shards
        if n <= 1:
            return f"{len(missing)} of {len(units)} units are not done; continue the job with --resume"
        ids = {u.id for u in missing}
        parts = []
        for s in range(n):
            left = sum(u.id in ids for u in shard_units(units, s, n))
            if left:
                parts.append(f"shard {s}/{n} ({left} units left)")
        return f"{len(missing)} of {len(units)} units are not done: " + ", ".join(parts) + "; run them first"


def live_description(job_dir: Path) -> str | None:
    """'pid ... on host ...' of a live process working on the job, or None."""
    live = live_owners(job_dir)
    return describe_owner(job_dir, live[0]) if live else None


def create_job(job_dir: Path, manifest: dict) -> Job:
    """Create the job folder whole (staged, then renamed); ``FileExistsError`` if another run just did."""
    parent = job_dir.parent
    with holding(parent):
        stage = temp_path(job_dir, "")
        try:
            stage.mkdir()
            for sub in ("units", "lowres", "log"):
                (stage / sub).mkdir()
            (stage / PLAN_FILE).write_text(json.dumps(manifest, separators=(",", ":")))
            fsync_file(stage / PLAN_FILE)
            rename_noreplace(stage, job_dir)
        finally:
            remove_path(stage)
    return Job(job_dir, manifest)


def discard_job(job_dir: Path) -> None:
    """Remove an interrupted job (never a live one: the caller checked) and its claims."""
    try:
        outputs = read_manifest(job_dir, "--overwrite")["outputs"]
        dests = outputs["classes"] + outputs["confidence"]
    except ConfigError:  # an unreadable plan: its claims are released as stale when met
        dests = []
    remove_job(job_dir, dests)


def remove_job(job_dir: Path, destinations: list) -> None:
    """Remove the job folder, then the job claims of ``destinations`` (a committed or discarded job)."""
    shutil.rmtree(job_dir, ignore_errors=True)
    folders = {Path(os.path.abspath(d)).parent for d in destinations}
    for d in destinations:
        claims.release_job(claims.claim_path(d), job_dir)
    # claims of sidecars and other outputs of the job (vector, preview) in the same folders
    for folder in folders:
        for claim in folder.glob(f".*{claims.SUFFIX}"):
            claims.release_job(claim, job_dir)


def check_not_live(job_dir: Path, option: str, dest: Path) -> None:
    who = live_description(job_dir)
    if who:
        raise OutputError(f"{option} {dest}: another run is writing it ({who}); wait for it to finish or stop it")


# ---------------------------------------------------------------------------
# Starting or joining a job
# ---------------------------------------------------------------------------


def how_of(role: str, shard: tuple[int, int] | None) -> str:
    """The option that makes a run join a job, for messages."""
    if role == "shard" and shard is not None:
        return f"--shard {shard[0]}/{shard[1]}"
    return {"resume": "--resume", "finalize": "--finalize", "join": "torchrun"}.get(role, "--out")


def open_job(plan: PredictPlan, role: str, *, overwrite: bool, shards: int = 1,
             shard: tuple[int, int] | None = None) -> tuple[Job, OutputSet]:
    """Create the job of ``plan`` or join the existing one, claim its destinations, hold it.

    ``role``: "new" (a plain run: an existing job is refused, or discarded
    with ``overwrite`` unless a live run holds it), "resume" (continue the
    job, or start one), "shard" (join or start; other shards may be running),
    "finalize" (the job must exist). Joining checks that the job's plan is
    this one and adopts its unit layout. Nothing is written before every
    check has passed.
    """
    how = how_of(role, shard)
    job_dir = plan.job_dir
    out = plan.rasters[0].classes if not plan.per_file else plan.job_dir.parent
    discard = False
    stored = None
    if job_dir.is_symlink():
        raise ConfigError(f"{job_dir}: the job folder is a link; remove it and start again")
    if job_dir.exists():
        if role == "new":
            check_not_live(job_dir, "--out", out)
            if not overwrite:
                raise OutputError(f"--out {out}: an interrupted job exists ({job_dir.name}); continue it with "
                                  "--resume, or start again with --overwrite")
            discard = True
        else:
            stored = _join_checks(plan, job_dir, role, how, shard)
    elif role == "finalize":
        raise ConfigError(f"--finalize: no job to assemble for --out {out} (no {job_dir.name})")

    outputs = OutputSet(overwrite=overwrite, inputs=plan.read_files or plan.inputs, job=job_dir)
    try:
        if discard:
            discard_job(job_dir)
        for dest, option in plan.destinations():
            outputs.add(dest, option, claim=not is_sidecar(dest), update=dest == plan.vector and plan.vector_update)
        if stored is None:
            try:
                job = create_job(job_dir, make_manifest(plan, shards))
                job.created = True
            except FileExistsError:  # another run created it a moment ago
                if role == "new":
                    raise OutputError(f"--out {out}: another run started the same job just now "
                                      f"({live_description(job_dir) or 'no longer running'})") from None
                job = Job(job_dir, _join_checks(plan, job_dir, role, how, shard))
        else:
            job = Job(job_dir, stored)
        job.check_folders()
        job.hold()
    except BaseException:
        outputs.abort()
        raise
    return job, outputs


def join_job(plan: PredictPlan) -> Job:
    """A torchrun rank joining the job its rank 0 has just opened (checks already done there)."""
    stored = read_manifest(plan.job_dir, "torchrun")
    adopt_layout(plan, stored)
    job = Job(plan.job_dir, stored)
    job.check_folders()
    job.hold()
    return job


def _join_checks(plan: PredictPlan, job_dir: Path, role: str, how: str, shard: tuple[int, int] | None) -> dict:
    stored = read_manifest(job_dir, how)
    compare_manifest(stored, plan, how)
    if role == "resume":
        who = live_description(job_dir)
        if who:
            raise OutputError(f"--resume: another run is working on this job ({who}); wait for it or stop it")
    if role == "shard" and shard is not None and int(stored.get("shards", 1)) != shard[1]:
        raise ConfigError(f"{how}: the job was planned for {stored.get('shards', 1)} shard(s); "
                          f"use --shard I/{stored.get('shards', 1)}")
    adopt_layout(plan, stored)
    return stored
