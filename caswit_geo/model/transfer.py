"""Initialise a segmentation model from a SimMIM-pretrained backbone or a UPerNet-Swin.

SimMIM: both encoders and the fusion blocks are copied; the mask tokens and
the reconstruction head are dropped. UPerNet-Swin (``upernet_keys.py``):
both encoders start from its backbone, the HR decoder and the auxiliary LR
head from its decode head (the classifier only when the class count
matches), the fusion blocks keep their initialisation. A model with a
SegFormer decoder takes the encoders only: its heads start fresh, and the
source's decode head is reported as not used. Any other difference
(a fusion stage the pretraining did not have, a shape that does not match)
is an error, never a silent partial load.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from caswit_geo.core.errors import CheckpointError
from caswit_geo.model.caswit import CASWiT
from caswit_geo.model.decoder import UPerNetDecoder
from caswit_geo.model.upernet.keys import map_upernet_state

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
    for differs, of in (("shapes", lambda t: tuple(t.shape)), ("types", lambda t: t.dtype)):
        bad = [k for k in expected if of(expected[k]) != of(given[k])]
        if bad:
            k = bad[0]
            raise CheckpointError(
                f"{source}: {what}: {len(bad)} tensor {differs} do not match, e.g. {k}: "
                f"{of(given[k])} vs {of(expected[k])}{hint}"
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


@dataclass
class UperNetTransferReport:
    encoders: list[str]  # branches initialised from the source backbone
    encoder_tensors: int  # per branch
    heads: list[str]  # heads initialised from the source decode head
    head_tensors: int  # per head
    fresh_heads: list[str]  # heads left at their initialisation (a decoder of another kind)
    classifier: bool  # the classifier too (same class count)
    source_classes: int
    model_classes: int
    fusion_blocks: int  # left at their initialisation
    unused: dict[str, str]  # source tensors not loaded -> why

    def __str__(self) -> str:
        classifier = (
            "with the classifier" if self.classifier
            else f"classifier fresh ({self.model_classes} classes, the source has {self.source_classes})"
        )
        why = Counter(self.unused.values())
        left = "; ".join(f"{n} {reason}" for reason, n in why.items()) or "none"
        each = lambda n: " each" if n > 1 else ""  # noqa: E731
        text = (
            f"loaded the {' and '.join(self.encoders)} encoder{'s' if len(self.encoders) > 1 else ''} "
            f"({self.encoder_tensors} tensors{each(len(self.encoders))})"
        )
        if self.heads:
            text += f" and the {' and '.join(self.heads)} ({self.head_tensors} tensors{each(len(self.heads))}, {classifier})"
        if self.fresh_heads:
            text += f"; {' and '.join(self.fresh_heads)} fresh"
        if self.fusion_blocks:
            text += f"; {self.fusion_blocks} fusion blocks fresh"
        return text + f"; source tensors not used: {len(self.unused)} ({left})"


def transfer_upernet(
    model: CASWiT, state: dict[str, torch.Tensor], fmt: str, source: str = "checkpoint"
) -> UperNetTransferReport:
    """Initialise ``model`` from a UPerNet-Swin state dict (``fmt``: transformers | mmseg)."""
    cfg = model.config
    if cfg.swin_windows != "pad-then-shift" or not cfg.stage_norms:
        raise CheckpointError(
            f"{source}: {cfg.name} has {cfg.swin_windows} windows and stage norms {cfg.stage_norms}; "
            "a UPerNet-Swin needs pad-then-shift windows and stage norms"
        )
    b = model.backbone
    upernet = cfg.decoder == "upernet"
    encoder_state = b.hr_encoder.state_dict()
    if upernet:
        decoder_state = model.decoder.state_dict()
    else:  # the source's head is still read whole (the conversion table stays total), then left out
        with torch.device("meta"):
            decoder_state = UPerNetDecoder(b.dims, 1, 1).state_dict()  # key names only
    mapped = map_upernet_state(state, encoder_state.keys(), decoder_state.keys(), fmt, source)
    hint = f"; the source is a different Swin or UPerNet than {cfg.name}"
    check_state_fits(encoder_state, mapped.encoder, source, "Swin backbone does not fit", hint)
    heads = [("decoder", model.decoder)] + ([("auxiliary LR head", model.aux_head)] if model.aux_head is not None else [])
    classifier, head, unused = False, {}, dict(mapped.unused)
    if upernet:
        classifier = mapped.decoder["classifier.weight"].shape == decoder_state["classifier.weight"].shape
        head = {k: v for k, v in mapped.decoder.items() if classifier or not k.startswith("classifier.")}
        expected = {k: v for k, v in decoder_state.items() if k in head}
        check_state_fits(expected, head, source, "UPerNet decode head does not fit", hint)
    else:
        why = f"UPerNet decode head (the model's decoder is {cfg.decoder})"
        unused.update({k: why for k in state if k.startswith("decode_head.")})

    encoders = [("HR", b.hr_encoder)] + ([("LR", b.lr_encoder)] if b.lr_encoder is not None else [])
    for _, encoder in encoders:
        encoder.load_state_dict(mapped.encoder, strict=True)
    if upernet:
        for _, module in heads:
            module.load_state_dict(head, strict=classifier)
    fresh = [] if upernet else [f"{cfg.decoder} {name}" if name == "decoder" else name for name, _ in heads]
    return UperNetTransferReport(
        encoders=[n for n, _ in encoders], encoder_tensors=len(mapped.encoder),
        heads=[n for n, _ in heads] if upernet else [], head_tensors=len(head), fresh_heads=fresh,
        classifier=classifier,
        source_classes=int(mapped.decoder["classifier.weight"].shape[0]), model_classes=cfg.num_classes,
        fusion_blocks=len(b.fusion), unused=unused,
    )
