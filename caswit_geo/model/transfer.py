"""Initialise a segmentation model from a SimMIM-pretrained backbone.

Both encoders and the fusion blocks are copied; the mask tokens and the
reconstruction head are dropped. Any other difference (a fusion stage the
pretraining did not have, a shape that does not match) is an error, never a
silent partial load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from .caswit import CASWiT

PREFIX = "backbone."


@dataclass
class TransferReport:
    hr_encoder: int  # tensors loaded per component
    lr_encoder: int
    fusion: int
    skipped: list[str]  # pretraining-only tensors left out (mask tokens, head)

    def __str__(self) -> str:
        return (
            f"loaded {self.hr_encoder} HR encoder, {self.lr_encoder} LR encoder and "
            f"{self.fusion} fusion tensors; skipped {len(self.skipped)} pretraining-only tensors"
        )


def check_state_fits(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str, what: str, hint: str = ""
) -> None:
    """Raise a one-line CheckpointError unless ``given`` has exactly the names, shapes and dtypes of ``expected``.

    Either side may hold ``meta`` tensors: only their shapes and dtypes are compared.
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: {what} (missing {len(missing)}: {missing[:3]}, "
            f"unexpected {len(unexpected)}: {unexpected[:3]}){hint}"
        )
    bad = [k for k in expected if expected[k].shape != given[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: {what}: {len(bad)} tensor shapes do not match, e.g. {k}: "
            f"{tuple(given[k].shape)} vs {tuple(expected[k].shape)}{hint}"
        )
    bad = [k for k in expected if expected[k].dtype != given[k].dtype]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: {what}: {len(bad)} tensor types do not match, e.g. {k}: {given[k].dtype} vs {expected[k].dtype}"
        )


def transfer_backbone(model: CASWiT, state: dict[str, torch.Tensor], source: str = "checkpoint") -> TransferReport:
    """Copy ``backbone.*`` tensors of a SimMIM state dict into ``model.backbone``."""
    backbone = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    skipped = sorted(k for k in state if not k.startswith(PREFIX))
    if not backbone:
        raise CheckpointError(f"{source}: no pretrained backbone tensors (is it a pretrain checkpoint?)")
    check_state_fits(
        model.backbone.state_dict(), backbone, source, f"pretrained backbone does not fit {model.config.name}",
        hint="; pretrain and train with the same model, tile size and fusion stages",
    )
    model.backbone.load_state_dict(backbone, strict=True)
    count = lambda p: sum(k.startswith(p) for k in backbone)  # noqa: E731
    return TransferReport(count("hr_encoder."), count("lr_encoder."), count("fusion."), skipped)
