"""``build_model``: a named config plus overrides -> a model."""

from __future__ import annotations

from pathlib import Path

from caswit_geo.model.caswit import CASWiT
from caswit_geo.model.configs import get_config


def build_model(
    name: str, num_classes: int, *, backbone_weights: str | Path | None = None, **overrides
) -> CASWiT:
    """Build the named model (``caswit-geo info --list`` shows names) for ``num_classes``.

    ``overrides`` are :class:`~caswit_geo.model.CaswitConfig` fields, e.g.
    ``img_size=256``, ``fusion_stages="4"``, ``gate=True``, ``alpha=0``.
    ``backbone_weights``: local ImageNet Swin weights for both encoders.
    """
    return CASWiT(get_config(name, num_classes=num_classes, **overrides), backbone_weights)
