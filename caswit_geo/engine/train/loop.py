"""The epoch loop shared by ``train`` and ``pretrain``.

A run reads top to bottom like nanoGPT's train.py: settle the run
directory (new, or resumed from ``config.json``), build the optimiser,
scaler, schedule and loaders around the task's model (:func:`build_loop`),
then :func:`fit`: train an epoch (MAE's train_one_epoch: averaged loss,
stop on a non-finite one), let the task validate, and on the master
process write the epoch's checkpoint, training state, logs and curves.
Only the loss of a batch, the validation and the extra per-epoch files
differ between tasks; they come in as functions.

Exact resume: the shuffle order is a function of (seed, epoch)
(DistributedSampler), the schedule of the iteration count, and the RNG
states of every rank are saved at the end of each epoch and restored
before the next, so on the CPU a resumed run ends with the same weights as
an uninterrupted one. A run stopped by a signal in the middle of an epoch
(``signals.GracefulStop``) saves its place in it: the resumed run skips
the samples already seen, in the same order, with new random draws for the
rest of that epoch. What is written when is ``rundir.py``'s protocol.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm.auto import tqdm

from caswit_geo.core.errors import CaswitError, CheckpointError, ConfigError
from caswit_geo.core.limits import check_settings
from caswit_geo.engine.train.config import RunConfig, resolved_for_resume
from caswit_geo.engine.train.curves import plot_curves
from caswit_geo.engine.train.optim import CosineSchedule, build_optimizer
from caswit_geo.engine.train.rundir import (
    CONFIG,
    CURVES,
    LAST_STATE,
    LAST_WEIGHTS,
    RunDirectory,
    check_resumable,
    check_run_dir,
    default_run_dir,
    read_json,
    write_logs,
)
from caswit_geo.engine.train.runstate import load_state, rng_state, save_state, seed_everything, set_rng_state
from caswit_geo.model.checkpoint import read_checkpoint, read_meta, save_checkpoint
from caswit_geo.model.transfer import check_state_fits
from caswit_geo.runtime.device import CpuThreads
from caswit_geo.runtime.distributed import (
    DistEnv,
    all_reduce_sum,
    broadcast_buffers,
    broadcast_object,
    gather_objects,
    process_group,
    wrap_model,
)
from caswit_geo.runtime.precision import Precision, resolve_precision
from caswit_geo.safeio.signals import GracefulStop

STATE_FORMAT = "caswit-geo-train-state"
STATE_VERSION = 2  # 2: the model weights and a stopped epoch's position are in last.pt too

Settings = TypeVar("Settings", bound=RunConfig)
Result = TypeVar("Result")


def run_command(
    config: Settings, command: str, body: Callable[[Settings, RunDirectory, DistEnv], Result]
) -> Result:
    """Run ``command`` (train, pretrain): ``body(settings, run directory, process group)``.

    The settings are checked, the process joins the group (each torchrun
    process calls this) and the run directory is opened (:func:`open_run`)
    and held while ``body`` runs. Nothing is written before the first
    save, so a run that fails before it leaves nothing.
    """
    check_settings(config)
    with process_group(config.device) as env:
        config, run = open_run(config, command, env)
        with run:
            return body(config, run, env)


def open_run(config: RunConfig, command: str, env: DistEnv) -> tuple[RunConfig, RunDirectory]:
    """``(settings, run directory)``; checks and claims the directory, writes nothing.

    With ``resume`` the settings are the run's own ``config.json`` (only
    device, workers, stop_after and progress may change); otherwise ``out``
    (default ``runs/<command>-<time>``, chosen once on rank 0) must be new or
    empty, unless ``overwrite``. Close the returned directory when the run
    ends (``with run:``).
    """
    if config.resume is not None:
        run_dir = check_resumable(Path(config.resume))
        saved = read_json(run_dir / CONFIG)
        if isinstance(saved, dict) and "precision" not in saved and env.device.type == "cpu":
            # a run from before --precision: its amp meant mixed precision on CUDA only
            saved = {**saved, "precision": "fp32"}
        config = resolved_for_resume(saved, config, type(config), str(run_dir / CONFIG))
        check_settings(config)  # the run's saved settings too
        config = dataclasses.replace(config, out=run_dir)
        return config, RunDirectory(run_dir, None, resuming=True, active=env.is_master)
    config.requested_precision()  # a bad --precision fails before the run directory exists
    run_dir = Path(config.out) if config.out is not None else broadcast_object(default_run_dir(command), env)
    if env.is_master:
        check_run_dir(run_dir, overwrite=config.overwrite)
    config = dataclasses.replace(config, out=run_dir)
    return config, RunDirectory(run_dir, config.to_dict(absolute_paths=True), resuming=False, active=env.is_master)


@dataclass
class Start:
    """Where :func:`fit` begins: the next epoch, iteration count, history, RNG to restore."""

    epoch: int = 1
    step: int = 0
    history: list[dict] = field(default_factory=list)
    rng: dict | None = None
    partial: dict | None = None  # a stopped epoch: iterations done, loss sums so far
    resumed: bool = False


@dataclass
class Loop:
    """What the epoch loop iterates with."""

    model: nn.Module  # the bare model: checkpoints and validation
    ddp_model: nn.Module  # what the training step calls (the DDP wrapper, or the model)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedule: CosineSchedule
    loader: DataLoader
    sampler: "SkippingSampler"
    steps_per_epoch: int
    env: DistEnv
    precision: Precision
    clip_grad: float | None
    progress: bool


def train_loader(dataset: Dataset, env: DistEnv, batch_size: int, workers: int, seed: int):
    """Shuffled loader of this rank's share; full batches only (BatchNorm needs more than one tile)."""
    sampler = SkippingSampler(DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                                 seed=seed))
    if len(sampler) < batch_size:
        raise ConfigError(
            f"--batch-size {batch_size}: only {len(dataset)} training tiles for {env.world_size} process(es), "
            "not one full batch each"
        )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        drop_last=True,
    )
    return loader, sampler


class SkippingSampler(Sampler):
    """This rank's share of the epoch's shuffled order, without its first ``skip`` samples.

    ``skip`` lets a run stopped mid-epoch continue with the samples it had
    not seen (same order; the random crops and draws are new ones).
    """

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def eval_loader(dataset: Dataset, env: DistEnv, batch_size: int, workers: int) -> DataLoader:
    """Every ``world_size``-th sample from ``rank``: each sample is seen once (no padding)."""
    shard = Subset(dataset, range(env.rank, len(dataset), env.world_size))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=env.device.type == "cuda")


def build_loop(
    model: nn.Module,
    dataset: Dataset,
    config: RunConfig,
    env: DistEnv,
    run_dir: Path,
    resuming: bool,
    find_unused_parameters: bool = False,
) -> tuple[Loop, Start]:
    """Optimiser, scaler, schedule, loader and DDP around ``model``; the resume point."""
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)  # both Swin encoders
    model.to(env.device)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    precision = resolve_precision(config.requested_precision(), env.device, model, model_name=config.model)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_loss_scaling else None  # bf16 needs none
    loader, sampler = train_loader(dataset, env, config.batch_size, config.workers, config.seed)
    steps = len(loader)
    schedule = CosineSchedule(config.lr, config.min_lr, config.epochs * steps, round(config.warmup_epochs * steps))
    start = resume_point(run_dir, model, optimizer, scaler, env, steps) if resuming else Start()
    ddp_model = wrap_model(model, env, find_unused_parameters)
    loop = Loop(model, ddp_model, optimizer, scaler, schedule, loader, sampler, steps, env, precision,
                config.clip_grad, config.progress)
    if env.is_master:
        tqdm.write(f"precision {precision.describe()}")
    return loop, start


def resume_point(
    run_dir: Path, model: nn.Module, optimizer, scaler, env: DistEnv, steps_per_epoch: int
) -> Start:
    """Load the run's state into ``model``, the optimiser and the scaler; where to continue.

    ``last.pt`` holds everything (the model too). A state written before it
    did (format 1) takes the weights from ``last.safetensors``, which must be
    of the same epoch.
    """
    path = run_dir / LAST_STATE
    state = load_state(path)
    if state.get("version", 1) > STATE_VERSION:
        raise CheckpointError(f"{path}: training state format {state['version']} is newer than this caswit-geo")
    weights = state.get("model")
    if weights is None:
        tensors, header = read_checkpoint(run_dir / LAST_WEIGHTS)
        if header["metadata"].get("epoch") != state["epoch"]:
            raise CheckpointError(
                f"{run_dir}: {LAST_WEIGHTS} (epoch {header['metadata'].get('epoch')}) and {LAST_STATE} "
                f"(epoch {state['epoch']}) disagree: an older caswit-geo was stopped while saving, and the weights "
                f"of epoch {state['epoch']} are gone; start over (--overwrite) or keep {LAST_WEIGHTS} as it is"
            )
        weights = tensors
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: not a caswit-geo training state (no model weights)")
    check_state_fits(model.state_dict(), weights, str(path), f"weights do not fit the model of {run_dir / CONFIG}")
    model.load_state_dict(weights, strict=True)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: optimiser state does not fit the model ({type(e).__name__}: {e})") from None
    rng = None
    if state["world_size"] == env.world_size:
        rng = state["rng"][env.rank]
    else:
        warnings.warn(
            f"{run_dir}: saved with {state['world_size']} process(es), resumed with {env.world_size}: "
            "the data order and random draws differ from an uninterrupted run",
            stacklevel=2,
        )
    if state.get("steps_per_epoch") != steps_per_epoch:
        warnings.warn(
            f"{run_dir}: {steps_per_epoch} iterations per epoch now, {state.get('steps_per_epoch')} before: "
            "the learning-rate schedule is stretched",
            stacklevel=2,
        )
    partial = state.get("partial")
    if partial is not None and (state["world_size"] != env.world_size or partial["iterations"] >= steps_per_epoch):
        partial = dict(partial, iterations=0, loss_sum=0.0, loss_batches=0)  # the data changed: redo the epoch
    return Start(state["epoch"] + 1, state["step"], list(state["history"]), rng, partial, resumed=True)


def _save_state(run: RunDirectory, loop: Loop, epoch: int, step: int, history: list[dict], rngs: list,
                partial: dict | None = None) -> None:
    """``last.pt``: the commit point of a save (master only)."""
    save_state(run.file(LAST_STATE), {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "epoch": epoch,  # finished epochs
        "step": step,
        "steps_per_epoch": loop.steps_per_epoch,
        "world_size": loop.env.world_size,
        "model": {k: v.detach().cpu() for k, v in loop.model.state_dict().items()},
        "optimizer": loop.optimizer.state_dict(),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else {},
        "rng": rngs,
        "history": history,
        "partial": partial,
    })


def stop_agreed(stop: GracefulStop, env: DistEnv) -> bool:
    """True on every rank when any rank received a stop signal (one tiny all-reduce under DDP)."""
    flag = torch.tensor([1.0 if stop.requested else 0.0])
    return bool(all_reduce_sum(flag, env)[0] > 0) if env.distributed else stop.requested is not None


def train_one_epoch(
    loop: Loop,
    compute_loss: Callable[[nn.Module, dict], torch.Tensor],
    epoch: int,
    epochs: int,
    step: int,
    stop: GracefulStop | None = None,
    partial: dict | None = None,
) -> tuple[dict, int, dict | None]:
    """One pass over the loader; returns ``({"train_loss", "lr"}, next iteration, stopped)``.

    ``partial``: the epoch was stopped before, continue after its
    ``iterations``. ``stopped`` is None, or where a stop signal ended the epoch.
    """
    loop.ddp_model.train()
    done = partial["iterations"] if partial else 0
    sums = torch.zeros(2, dtype=torch.float64)  # loss sum, batches (this rank's; all ranks' so far on rank 0)
    if partial and loop.env.is_master:
        sums += torch.tensor([partial["loss_sum"], partial["loss_batches"]], dtype=torch.float64)
    loop.sampler.set_epoch(epoch, skip=done * loop.loader.batch_size)
    lr = loop.schedule.lr(step)
    show = loop.progress and loop.env.is_master
    bar = tqdm(loop.loader, desc=f"epoch {epoch}/{epochs}", disable=not show, leave=False, dynamic_ncols=True,
               initial=done, total=loop.steps_per_epoch)
    for batch in bar:
        lr = loop.schedule.apply(loop.optimizer, step)
        with loop.precision.autocast():
            loss = compute_loss(loop.ddp_model, batch)
        value = loss.detach().float().item()
        if value != value or value in (float("inf"), float("-inf")):
            raise CaswitError(
                f"training loss is {value} at epoch {epoch}, iteration {step + 1}: lower --lr, set --clip-grad, "
                f"or try --precision fp32 (this run: {loop.precision.name})"
            )
        loop.optimizer.zero_grad(set_to_none=True)
        if loop.scaler is not None:
            loop.scaler.scale(loss).backward()
            loop.scaler.unscale_(loop.optimizer)  # clip true gradients; a no-op cost without clipping
        else:
            loss.backward()
        if loop.clip_grad:
            torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.clip_grad)
        if loop.scaler is not None:
            loop.scaler.step(loop.optimizer)
            loop.scaler.update()
        else:
            loop.optimizer.step()
        step += 1
        done += 1
        sums += torch.tensor([value, 1.0], dtype=torch.float64)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if stop is not None and done < loop.steps_per_epoch and stop_agreed(stop, loop.env):
            bar.close()
            total = all_reduce_sum(sums, loop.env)
            return {}, step, {"epoch": epoch, "iterations": done, "loss_sum": float(total[0]),
                              "loss_batches": int(total[1]), "lr": lr}
    bar.close()
    total = all_reduce_sum(sums, loop.env)
    return {"train_loss": float(total[0] / total[1].clamp_min(1)), "lr": lr}, step, None


@dataclass
class FitResult:
    history: list[dict]
    completed: bool  # False when stopped early (stop_after, or a signal)
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT" when a signal ended the run
    stopped_at: tuple[int, int] | None = None  # (epoch, iterations done in it) of a signal stop


def fit(
    loop: Loop,
    start: Start,
    compute_loss: Callable[[nn.Module, dict], torch.Tensor],
    *,
    epochs: int,
    run: RunDirectory,
    checkpoint_args: dict,
    evaluate: Callable[[int], dict] | None = None,
    end_epoch: Callable[[int, list[dict]], None] | None = None,
    stop_after: int | None = None,
    title: str = "",
) -> FitResult:
    """Epochs ``start.epoch..epochs``; returns the full history (earlier epochs included).

    ``evaluate(epoch)`` runs on every rank and returns columns for the log
    (e.g. ``val_miou``); ``end_epoch(epoch, history)`` runs on the master only,
    after ``last.pt`` is written, to write the task's files (best checkpoint,
    figures) through ``run.file``. ``checkpoint_args``: ``classes``,
    ``input_spec`` and metadata for :func:`~caswit_geo.model.checkpoint.save_checkpoint`.

    A first SIGTERM or SIGINT ends the current step, saves a resumable state
    and returns (``stopped_by``); see ``signals.py``.
    """
    env = loop.env

    def export(epoch: int, history: list[dict]) -> None:
        # derived from the state just saved: task files, then last.safetensors, logs, curves
        if end_epoch is not None:
            end_epoch(epoch, history)
        save_checkpoint(loop.model, run.file(LAST_WEIGHTS), include_aux=True, epoch=epoch, **checkpoint_args)
        write_logs(run, history)
        plot_curves(history, run.file(CURVES), title)

    with CpuThreads(env.device, loop.loader.num_workers), GracefulStop() as stop:
        history = list(start.history)
        step = start.step
        if env.is_master and start.resumed and start.partial is None and history:
            _repair_exports(run, start.epoch - 1, history, export)
        if start.rng is not None:
            set_rng_state(start.rng)
        for epoch in range(start.epoch, epochs + 1):
            t0 = time.perf_counter()
            row = {"epoch": epoch}
            partial = start.partial if epoch == start.epoch else None
            stats, step, stopped = train_one_epoch(loop, compute_loss, epoch, epochs, step, stop, partial)
            if stopped is not None:
                rngs = gather_objects(rng_state(), env)
                if env.is_master:
                    _save_state(run, loop, epoch - 1, step, history, rngs, stopped)
                    run.commit()
                return FitResult(history, False, stop.requested or "SIGTERM", (epoch, stopped["iterations"]))
            row.update(stats)
            row["precision"] = loop.precision.name
            broadcast_buffers(loop.model, env)
            if evaluate is not None:
                row.update(evaluate(epoch))
            row["time_s"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            rngs = gather_objects(rng_state(), env)
            if env.is_master:
                _save_state(run, loop, epoch, step, history, rngs)  # the commit point
                export(epoch, history)
                run.commit()
                tqdm.write(_epoch_line(row, epochs))
                # whatever the files and figures drew, the next epoch starts from the saved RNG state
                set_rng_state(rngs[env.rank])
            if epoch < epochs and stop_agreed(stop, env):
                return FitResult(history, False, stop.requested or "SIGTERM", (epoch + 1, 0))
            if stop_after is not None and epoch >= stop_after and epoch < epochs:
                return FitResult(history, completed=False)
        return FitResult(history, completed=True)


def _repair_exports(run: RunDirectory, epoch: int, history: list[dict], export) -> None:
    """Rewrite the files derived from ``last.pt`` when a kill left them behind it (step 3 of the protocol)."""
    try:
        exported = read_meta(run.path / LAST_WEIGHTS).metadata.get("epoch")
    except CaswitError:
        exported = None
    if exported != epoch:
        export(epoch, history)


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key, label, fmt in (("train_loss", "loss", ".4f"), ("val_loss", "val loss", ".4f"), ("val_miou", "mIoU", ".4f"),
                            ("val_mf1", "mF1", ".4f"), ("val_oa", "OA", ".4f"), ("lr", "lr", ".2e"), ("time_s", "", ".1f")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:{fmt}}" if label else f"{row[key]:{fmt}} s")
    return "  ".join(parts)


def training_metadata(config: RunConfig, env: DistEnv, precision: Precision) -> dict:
    """The run's settings as recorded in its checkpoints (with the precision that ran)."""
    return {**config.to_dict(), "world_size": env.world_size, "global_batch_size": config.batch_size * env.world_size,
            "precision_used": precision.describe()}


def seed_run(config: RunConfig, env: DistEnv) -> None:
    """Seed this rank: different augmentations and crops per rank, same weights (DDP broadcasts rank 0's)."""
    seed_everything(config.seed + env.rank)
