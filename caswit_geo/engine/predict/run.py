"""The predict job, top to bottom: plan, run units, finalize (see the package docstring)."""

from __future__ import annotations

import time
import warnings
from datetime import timedelta
from pathlib import Path

from caswit_geo.core import errors
from caswit_geo.core.errors import CaswitError, disk_full_guard
from caswit_geo.engine.predict.config import PredictConfig, PredictResult
from caswit_geo.engine.predict.finalize import Finalized, class_totals, finalize_job, unit_reports
from caswit_geo.engine.predict.job import Job, discard_job, join_job, open_job
from caswit_geo.engine.predict.plan import PredictPlan, Unit, plan_predict, shard_units
from caswit_geo.engine.predict.units import Progress, UnitsRun, run_units
from caswit_geo.geo.area import pixel_area_m2
from caswit_geo.model.checkpoint import load_checkpoint
from caswit_geo.runtime.distributed import DistEnv, barrier, broadcast_object, process_group
from caswit_geo.runtime.precision import prepare_inference

BARRIER_TIMEOUT = timedelta(days=7)  # torchrun ranks wait for the slowest one before rank 0 assembles


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run whose job folder keeps the finished units."""

    def __init__(self, job_dir: Path, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} units done")
        self.job_dir, self.done, self.total = job_dir, done, total


def predict(config: PredictConfig) -> PredictResult:
    """Run (a share of) a prediction job; see the module docstring. Raises CaswitError on user errors."""
    t_start = time.perf_counter()
    deadline = None if config.stop_after is None else time.monotonic() + config.stop_after
    plan = plan_predict(config)  # 1. plan
    for note in plan.warnings:
        warnings.warn(note, stacklevel=2)
    # a full disk anywhere in the job (its folder, the units, the assembly) is named by the output folder
    out_folder = plan.job_dir.parent
    with process_group(config.device, BARRIER_TIMEOUT) as env:
        if env.distributed and config.shard is not None:
            raise errors.ConfigError("--shard: under torchrun the ranks share the units themselves; drop --shard")
        with disk_full_guard(out_folder):
            job, outputs = _open(plan, config, env)
        phases = {"plan": time.perf_counter() - t_start}
        try:
            with disk_full_guard(out_folder):
                run = _run(plan, job, _my_units(plan, job, config, env), config, env, deadline)  # 2. run units
                phases["units"] = run.seconds
                finished, reports = _finalize(plan, job, outputs, config, env, run)  # 3. finalize
                phases.update(finished.phases if finished else {})
        except KeyboardInterrupt:
            if job.dir.exists():
                raise JobInterrupted(job.dir, len(job.done_units()), len(plan.units)) from None
            raise
        except CaswitError as e:
            if not job.dir.exists():
                raise
            done = len(job.done_units())
            if done == 0 and job.created and not env.distributed:  # nothing worth keeping: leave nothing
                discard_job(job.dir)
                raise
            if not isinstance(e, (errors.DiskFullError, errors.InputError)):
                raise
            fix = "free some space" if isinstance(e, errors.DiskFullError) else "fix that"
            reason = errors.user_message(e)[1]  # a reader's error: its own message, not torch's wrapping
            raise type(e)(  # the finished units are work worth keeping: say where and how to go on
                f"{reason}; {done} of {len(plan.units)} units are done and kept in {job.dir}: {fix}, "
                "then run the same command with --resume"
            ) from e
        finally:
            if outputs is not None and not outputs.closed:
                outputs.abort()  # the job's claims stay while its folder does
            job.release()
    return _result(plan, job, config, env, run, finished, reports, phases, time.perf_counter() - t_start)


# ---------------------------------------------------------------------------
# The steps' wiring
# ---------------------------------------------------------------------------


def _role(config: PredictConfig) -> str:
    if config.finalize_only:
        return "finalize"
    if config.shard is not None:
        return "shard"
    return "resume" if config.resume else "new"


def _open(plan: PredictPlan, config: PredictConfig, env: DistEnv):
    """Open the job in this process; under torchrun rank 0 opens it and the others join."""
    role = _role(config)
    shards = config.shard[1] if config.shard else env.world_size
    if not env.distributed:
        return open_job(plan, role, overwrite=config.overwrite, shards=shards, shard=config.shard)
    job = outputs = failure = None
    if env.is_master:
        try:
            job, outputs = open_job(plan, role, overwrite=config.overwrite, shards=shards)
        except CaswitError as e:
            failure = e
    status = broadcast_object(None if failure is None else (type(failure).__name__, str(failure)), env)
    if status is not None:  # every rank stops with rank 0's one-line error
        if failure is not None:
            raise failure
        raise getattr(errors, status[0], CaswitError)(status[1])
    if not env.is_master:
        job = join_job(plan)
    return job, outputs


def _my_units(plan: PredictPlan, job: Job, config: PredictConfig, env: DistEnv) -> list[Unit]:
    if config.finalize_only:
        return []
    done = job.done_units()
    if config.shard is not None:
        return [u for u in shard_units(plan.units, *config.shard) if u.id not in done]
    if env.distributed:  # rank 0's view of the units left, shared among the ranks
        left = broadcast_object([u.id for u in plan.units if u.id not in done], env)
        remaining = [plan.units[i] for i in left]
        return shard_units(remaining, env.rank, env.world_size)
    return [u for u in plan.units if u.id not in done]


def _run(plan: PredictPlan, job: Job, mine: list[Unit], config: PredictConfig, env: DistEnv,
         deadline: float | None) -> UnitsRun:
    if not mine:
        return UnitsRun()
    model, _ = load_checkpoint(plan.weights, device=env.device)
    prepare_inference(model, plan.precision)
    job.log("start", units=len(mine), device=str(env.device), shard=_shard_label(config, env),
            batch_size=config.batch_size)
    progress = Progress(plan, job, mine, enabled=config.progress and env.is_master)
    try:
        run = run_units(plan, job, mine, model, env.device, batch_size=config.batch_size, workers=config.workers,
                        precision=plan.precision, progress=progress, deadline=deadline)
    finally:
        progress.close()
    job.log("stop", units=len(run.done), stopped=run.stopped)
    return run


def _finalize(plan: PredictPlan, job: Job, outputs, config: PredictConfig, env: DistEnv,
              run: UnitsRun) -> tuple[Finalized | None, list]:
    """Assemble the outputs when this process should and every unit is done.

    Returns what was assembled (None when another run will) and the unit
    reports the summary counts: the whole job's when assembled, else this run's.
    """
    if env.distributed:
        barrier(env)  # every rank has finished its units (or stopped)
        if not env.is_master:
            return None, run.done
    if not job.dir.exists():  # another run assembled the outputs meanwhile
        return None, run.done
    if config.finalize_only and job.missing(plan.units):
        raise errors.ConfigError(f"--finalize: {job.describe_missing(plan.units)}")
    if config.defer_finalize or run.stopped or job.missing(plan.units):
        return None, run.done
    with job.finalize_lock() as ours:  # two runs finishing together: one assembles, the other waits for it
        if not ours or not job.dir.exists():
            return None, run.done
        reports = unit_reports(job, plan)
        return finalize_job(plan, job, outputs), reports


def _shard_label(config: PredictConfig, env: DistEnv) -> str | None:
    if config.shard is not None:
        return f"{config.shard[0]}/{config.shard[1]}"
    if env.distributed:
        return f"rank {env.rank}/{env.world_size}"
    return None


def _result(plan: PredictPlan, job: Job, config: PredictConfig, env: DistEnv, run: UnitsRun,
            finished: Finalized | None, reports, phases: dict, seconds: float) -> PredictResult:
    pixels, areas = class_totals(reports)
    names = plan.classes.names
    left = 0 if finished is not None else len(job.missing(plan.units)) if job.dir.exists() else 0
    return PredictResult(
        outputs=[r.classes for r in plan.rasters],
        confidence_outputs=[r.confidence for r in plan.rasters if r.confidence is not None],
        probability_outputs=[r.probabilities for r in plan.rasters if r.probabilities is not None],
        vector=plan.vector,
        tiles=plan.total_tiles,
        tiles_run=run.tiles_run,
        seconds=seconds,
        forward_seconds=run.forward_seconds,
        class_pixels={names[i]: int(pixels[i]) for i in range(len(names))},
        class_areas_m2=None if areas is None else {names[i]: float(areas[i]) for i in range(len(names))},
        nodata_pixels=int(pixels[255]),
        width=plan.mosaic.width,
        height=plan.mosaic.height,
        device=str(env.device),
        context=plan.context,
        precision=plan.precision.describe(),
        preview=plan.preview,
        tta=plan.tta,
        vector_features=finished.vector.features if finished and finished.vector else 0,
        vector_seconds=finished.vector.seconds if finished and finished.vector else 0.0,
        warnings=plan.warnings,
        phases=phases,
        complete=finished is not None,
        units=len(plan.units),
        units_run=len(run.done),
        units_before=len(plan.units) - len(run.done) - left,  # left is 0 once assembled
        units_left=left,
        tiles_in_units_run=run.tiles,
        area_km2_run=None if run.area_m2 is None else run.area_m2 / 1e6,
        job=None if finished is not None else job.dir,
        shard=_shard_label(config, env),
        stopped=run.stopped,
        finalized_by=_finalized_by(config, env, finished, left),
        rank=env.rank,
        region_km2=region_km2(plan),
        stats=finished.stats if finished is not None else [],
        input_notes=plan.input_notes,
    )


def region_km2(plan: PredictPlan) -> float | None:
    """The region's area inside the imagery (None without a region or a projected CRS)."""
    if plan.roi is None:
        return None
    px = pixel_area_m2(plan.mosaic.crs, plan.mosaic.transform)
    return None if px is None else plan.roi.pixel_area * px / 1e6


def _finalized_by(config: PredictConfig, env: DistEnv, finished: Finalized | None, left: int) -> str | None:
    """Who assembles the outputs when this run did not (None when it did, or units are left)."""
    if finished is not None or left:
        return None
    if config.defer_finalize:
        return "a later --finalize run"
    if env.distributed and not env.is_master:
        return "rank 0"
    return "another run, which has written them"  # this run waited for it (Job.finalize_lock)

