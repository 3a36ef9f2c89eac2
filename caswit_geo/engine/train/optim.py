"""AdamW and its learning-rate schedule (paper section 4.3).

AdamW with weight decay on weights only: the model's ``param_groups``
exempts norms, biases, relative-position tables, gates and mask tokens
(nanoGPT's configure_optimizers lives on the model for the same reason).
The learning rate follows an optional linear warmup, then a cosine from the
base rate down to ``min_lr`` (6e-5 -> 1e-6 in the paper), set before every
iteration: the schedule's whole state is the iteration count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from caswit_geo.core.errors import ConfigError


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    if lr <= 0:
        raise ConfigError(f"--lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {weight_decay}")
    return torch.optim.AdamW(model.param_groups(weight_decay), lr=lr, betas=(0.9, 0.999))


@dataclass(frozen=True)
class CosineSchedule:
    """Learning rate at iteration ``step`` (0-based) of ``total_steps``.

    Warmup rises linearly to ``base_lr`` over ``warmup_steps``; the cosine then
    reaches ``min_lr`` at ``total_steps``.
    """

    base_lr: float
    min_lr: float
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.min_lr < 0 or self.min_lr > self.base_lr:
            raise ConfigError(f"--min-lr must be in [0, --lr], got {self.min_lr} (lr {self.base_lr})")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(
                f"warmup of {self.warmup_steps} iterations does not fit in {self.total_steps} iterations"
            )

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
