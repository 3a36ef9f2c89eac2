"""Device selection with a clean CPU fallback, and CPU threads.

What a run computes in (fp32, bf16, fp16) is decided in ``precision.py``.
"""

from __future__ import annotations

import os
import warnings

import torch

from caswit_geo.core.errors import ConfigError


def select_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            warnings.warn(f"--device {spec}: CUDA is not available, using the CPU", stacklevel=2)
            return torch.device("cpu")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")


class CpuThreads:
    """Context: torch CPU threads that leave a core to each data-loading worker (and to other
    busy threads, see :meth:`update`): an oversubscribed OpenMP pool spins at its barriers and
    can run several times slower. Restores the previous count on exit; does nothing on GPUs."""

    def __init__(self, device: torch.device, workers: int) -> None:
        self.active = device.type == "cpu"
        self.before = torch.get_num_threads()
        self.workers = workers
        self.current = self.before

    def update(self, busy_threads: int = 0) -> None:
        """Leave a core to each worker and to ``busy_threads`` other busy threads of this process."""
        if not self.active:
            return
        want = max(1, min(self.before, (os.cpu_count() or 1) - self.workers - busy_threads))
        if want != self.current:
            torch.set_num_threads(want)
            self.current = want

    def __enter__(self) -> "CpuThreads":
        self.update()
        return self

    def __exit__(self, *exc) -> None:
        if self.active and self.current != self.before:
            torch.set_num_threads(self.before)


def stop_workers(batches) -> None:
    """Shut the DataLoader worker processes of the iterator ``batches`` down now.

    After an error the iterator is referenced by the traceback; freed later by
    the garbage collector, torch then waits 5 s for each worker to join.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)  # single-process iterators have none
    if shutdown is not None:
        shutdown()
