"""Data-parallel runs with ``torchrun``: one process per GPU (or CPU worker).

Like nanoGPT's train.py, a run is distributed when torchrun sets ``RANK``
and ``WORLD_SIZE``; otherwise it is one plain process. Backend: NCCL on
CUDA (each process takes GPU ``LOCAL_RANK``), gloo on the CPU. Only the
master process (rank 0) logs and writes files; every reduction below is a
no-op in a single process.

    torchrun --nproc_per_node 4 --no-python caswit-geo train ...            (one machine)
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d \
             --rdzv-endpoint HOST:29400 --no-python caswit-geo train ...    (on every machine)

``--resume`` reads the run directory on every process: with several
machines it must be on a shared file system.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from caswit_geo.runtime.device import select_device


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when setup() created the process group (and teardown ends it)

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", timeout: timedelta | None = None) -> DistEnv:
    """Read torchrun's environment, pick this process's device, join the process group.

    ``timeout``: how long a collective (a barrier) may wait for the slowest
    process; None keeps torch's default.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = select_device(device)
    if world_size == 1:
        return DistEnv(device=dev)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if dev.index not in (None, local_rank):
            warnings.warn(f"--device {device}: under torchrun each process uses GPU LOCAL_RANK", stacklevel=2)
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", **kwargs)
    return DistEnv(rank, local_rank, world_size, dev, owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto", timeout: timedelta | None = None) -> Iterator[DistEnv]:
    """``with process_group(config.device) as env:`` :func:`setup`, then :func:`teardown` whatever happens."""
    env = setup(device, timeout)
    try:
        yield env
    finally:
        teardown(env)


def wrap_model(model: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """DDP around ``model`` (already on ``env.device``); the model itself in one process.

    Building DDP broadcasts rank 0's parameters and buffers, so every rank
    starts from the same weights whatever its seed. On several GPUs the
    decoder's BatchNorms become SyncBatchNorm (per-GPU batches are small).
    """
    if not env.distributed:
        return model
    if env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[env.device], find_unused_parameters=find_unused_parameters)
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if env.device.type == "cuda" else torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Element-wise sum over all processes (a copy on the CPU; unchanged in one process)."""
    if not env.distributed:
        return values.detach().cpu()
    t = values.detach().to(_comm_device(env)).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def gather_objects(obj, env: DistEnv) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts buffers at the start of each forward pass, so after the
    last training step every rank holds the statistics of its own last
    batch; this makes validation and the checkpoint see one model.
    """
    if not env.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
