"""Random transformers UPerNet-Swin models in which every tensor matters (tests and benchmarks)."""

from __future__ import annotations

import torch


def perturb_every_tensor(model: torch.nn.Module) -> torch.nn.Module:
    """Move norms, biases, position tables and BatchNorm statistics off their initial values.

    transformers initialises norms to 1/0, position tables and BN statistics
    to 0/1: a conversion that swapped or dropped them would go unnoticed.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "relative_position_bias_table" in name:
                p.add_(torch.randn_like(p) * 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.decode_head.classifier.weight.mul_(20)  # logits of order 1
    return model
