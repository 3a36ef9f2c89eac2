"""UPerNet-Swin state dicts (transformers, mmsegmentation) -> our Swin encoder and UPerNet decoder.

Pure tensor bookkeeping: no files, no model. :func:`map_upernet_state` takes
a source state dict and returns the tensors of one :class:`SwinEncoder` and
one :class:`UPerNetDecoder`, keyed as their own ``state_dict()``. The table
is total: every tensor we need comes from one named source tensor (or three,
for q, k, v), every source tensor is either used or listed as unused for a
stated reason, and anything else is an error naming the tensor.

Conversion table (ours <- transformers | mmsegmentation); ``i`` stage 0..3,
``j`` block, ``p`` parameter (weight, bias; BatchNorm also running_mean,
running_var, num_batches_tracked)::

    encoder (SwinEncoder; timm names)
    patch_embed.proj.p             <- backbone.embeddings.patch_embeddings.projection.p | backbone.patch_embed.projection.p
    patch_embed.norm.p             <- backbone.embeddings.norm.p                        | backbone.patch_embed.norm.p
    layers.i.blocks.j.norm1.p      <- backbone.encoder.layers.i.blocks.j.layernorm_before.p   | backbone.stages.i.blocks.j.norm1.p
    layers.i.blocks.j.attn.qkv.p   <- cat(...attention.self.{query,key,value}.p)        | ...attn.w_msa.qkv.p
    layers.i.blocks.j.attn.relative_position_bias_table
                                   <- ...attention.self.relative_position_bias_table    | ...attn.w_msa.relative_position_bias_table
    layers.i.blocks.j.attn.proj.p  <- ...attention.output.dense.p                       | ...attn.w_msa.proj.p
    layers.i.blocks.j.norm2.p      <- ...layernorm_after.p                              | ...norm2.p
    layers.i.blocks.j.mlp.fc1.p    <- ...intermediate.dense.p                           | ...ffn.layers.0.0.p
    layers.i.blocks.j.mlp.fc2.p    <- ...output.dense.p                                 | ...ffn.layers.1.p
    layers.i.downsample.norm.p     <- backbone.encoder.layers.(i-1).downsample.norm.p   | backbone.stages.(i-1).downsample.norm.p (*)
    layers.i.downsample.reduction.weight
                                   <- backbone.encoder.layers.(i-1).downsample.reduction.weight | backbone.stages.(i-1)...  (*)
    stage_norms.i.p                <- backbone.hidden_states_norms.stage(i+1).p         | backbone.norm(i).p

    decoder (UPerNetDecoder; ConvBNReLU = .0 conv, .1 BatchNorm)
    ppm.stages.k.1.0.weight / .1.p <- decode_head.psp_modules.k.1.conv.weight / .batch_norm.p | ... / .bn.p
    ppm.bottleneck.0 / .1          <- decode_head.bottleneck.conv / .batch_norm         | ... / .bn
    laterals.l.0 / .1              <- decode_head.lateral_convs.l.conv / .batch_norm    | ... / .bn
    fpn_convs.l.0 / .1             <- decode_head.fpn_convs.l.conv / .batch_norm        | ... / .bn
    fuse.0 / .1                    <- decode_head.fpn_bottleneck.conv / .batch_norm     | ... / .bn
    classifier.p                   <- decode_head.classifier.p                          | decode_head.conv_seg.p

    unused: auxiliary_head.* (the FCN head of training), *.relative_position_index
    (derived from the window size), the final backbone norm (backbone.layernorm.*
    or backbone.swin.layernorm.*: the backbone's stage outputs do not pass through it)

(*) timm and transformers downsample at the start of stage i / the end of
stage i-1, so the stage index shifts by one. mmsegmentation merges patches
with ``nn.Unfold`` (channel order c, kh, kw) where Swin concatenates the four
neighbours (x0, x1, x2, x3 = (0,0), (1,0), (0,1), (1,1)); its reduction
weight and norm are put back into Swin's order (:func:`unfold_to_swin_order`).
transformers' in-memory names of recent versions (``backbone.swin.*``,
``attention.q_proj``, ``mlp.fc1``...) are read as their saved names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from caswit_geo.core.errors import CheckpointError

FORMATS = ("transformers", "mmseg")
_BN = {"transformers": "batch_norm", "mmseg": "bn"}
_CLASSIFIER = {"transformers": "decode_head.classifier", "mmseg": "decode_head.conv_seg"}

# Source tensors that are never loaded, with the reason reported for them.
_UNUSED = (
    (re.compile(r"^auxiliary_head\."), "auxiliary FCN head (training only)"),
    (re.compile(r"\.relative_position_index$"), "derived from the window size"),
    (re.compile(r"^backbone\.(swin\.)?layernorm\."), "final backbone norm (not on the stage outputs)"),
)

# Recent transformers name modules differently in memory; files are saved with the
# older names. Map the newer ones onto the older before reading the table.
_TRANSFORMERS_RENAMES = (
    (re.compile(r"^backbone\.swin\.(embeddings|encoder)\."), r"backbone.\1."),
    (re.compile(r"\.attention\.([qkv])_proj\."), lambda m: f".attention.self.{dict(q='query', k='key', v='value')[m[1]]}."),
    (re.compile(r"\.attention\.relative_position_bias\.relative_position_bias_table$"),
     ".attention.self.relative_position_bias_table"),
    (re.compile(r"\.attention\.relative_position_bias\.relative_position_index$"),
     ".attention.self.relative_position_index"),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
)


@dataclass
class MappedUperNet:
    """Tensors for one encoder and one decoder, and what the source held besides."""

    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    unused: dict[str, str] = field(default_factory=dict)  # source key -> why it is not loaded


def detect_format(keys, source: str = "checkpoint") -> str:
    """``transformers`` or ``mmseg`` from the key names; CheckpointError (naming ``source``) if neither."""
    keys = list(keys)
    if any(k.startswith(("backbone.embeddings.", "backbone.swin.embeddings.")) for k in keys):
        return "transformers"
    if any(k.startswith("backbone.patch_embed.") for k in keys):
        return "mmseg"
    sample = next(iter(sorted(keys)), "nothing")
    raise CheckpointError(f"{source}: not a UPerNet-Swin state dict (no Swin patch embedding; first key {sample!r})")


def normalise_names(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """transformers' newer in-memory names -> its saved names (other formats unchanged)."""
    if fmt != "transformers":
        return dict(state)
    out = {}
    for key, value in state.items():
        for pattern, repl in _TRANSFORMERS_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def unfold_to_swin_order(t: torch.Tensor) -> torch.Tensor:
    """mmsegmentation PatchMerging (Unfold order c*4 + kh*2 + kw) -> Swin's (x0, x1, x2, x3) order.

    Works on the last dimension: the reduction weight (out, 4C) or the norm's (4C,).
    """
    *lead, four_c = t.shape
    c = four_c // 4
    t = t.reshape(*lead, c, 2, 2)  # (..., c, kh, kw)
    t = t.movedim(-3, -1)  # (..., kh, kw, c)
    t = t.transpose(-3, -2)  # (..., kw, kh, c): x0 (0,0), x1 (kh=1), x2 (kw=1), x3
    return t.reshape(*lead, four_c)


def _encoder_source(key: str, fmt: str) -> tuple[tuple[str, ...], str]:
    """Source key(s) of one of our encoder keys, and how to combine them (copy | qkv | unfold)."""
    tf = fmt == "transformers"
    if m := re.fullmatch(r"patch_embed\.proj\.(\w+)", key):
        return (f"backbone.embeddings.patch_embeddings.projection.{m[1]}" if tf else f"backbone.patch_embed.projection.{m[1]}",), "copy"
    if m := re.fullmatch(r"patch_embed\.norm\.(\w+)", key):
        return (f"backbone.embeddings.norm.{m[1]}" if tf else f"backbone.patch_embed.norm.{m[1]}",), "copy"
    if m := re.fullmatch(r"stage_norms\.(\d)\.(\w+)", key):
        i = int(m[1])
        return (f"backbone.hidden_states_norms.stage{i + 1}.{m[2]}" if tf else f"backbone.norm{i}.{m[2]}",), "copy"
    if m := re.fullmatch(r"layers\.(\d)\.downsample\.(norm\.\w+|reduction\.weight)", key):
        i = int(m[1]) - 1
        src = f"backbone.encoder.layers.{i}.downsample.{m[2]}" if tf else f"backbone.stages.{i}.downsample.{m[2]}"
        return (src,), "copy" if tf else "unfold"
    m = re.fullmatch(r"layers\.(\d)\.blocks\.(\d+)\.(.+)", key)
    if m is None:
        raise CheckpointError(f"no conversion rule for encoder tensor {key!r}")
    block = f"backbone.encoder.layers.{m[1]}.blocks.{m[2]}." if tf else f"backbone.stages.{m[1]}.blocks.{m[2]}."
    rest = m[3]
    if tf:
        if q := re.fullmatch(r"attn\.qkv\.(\w+)", rest):
            return tuple(f"{block}attention.self.{n}.{q[1]}" for n in ("query", "key", "value")), "qkv"
        names = {
            "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
            "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
        }
    else:
        names = {
            "norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.w_msa.qkv", "attn.proj": "attn.w_msa.proj",
            "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1",
            "attn.relative_position_bias_table": "attn.w_msa.relative_position_bias_table",
        }
    module, _, param = rest.rpartition(".")
    if rest in names:  # a parameter without a module part
        return (block + names[rest],), "copy"
    if module in names:
        return (f"{block}{names[module]}.{param}",), "copy"
    raise CheckpointError(f"no conversion rule for encoder tensor {key!r}")


def _decoder_source(key: str, fmt: str) -> str:
    """Source key of one of our decoder keys."""
    if m := re.fullmatch(r"classifier\.(\w+)", key):
        return f"{_CLASSIFIER[fmt]}.{m[1]}"
    modules = (
        (r"ppm\.stages\.(\d+)\.1", "decode_head.psp_modules.{}.1"),
        (r"ppm\.bottleneck", "decode_head.bottleneck"),
        (r"laterals\.(\d+)", "decode_head.lateral_convs.{}"),
        (r"fpn_convs\.(\d+)", "decode_head.fpn_convs.{}"),
        (r"fuse", "decode_head.fpn_bottleneck"),
    )
    for ours, theirs in modules:
        if m := re.fullmatch(ours + r"\.([01])\.(\w+)", key):
            *index, part, param = m.groups()
            layer = "conv" if part == "0" else _BN[fmt]
            return f"{theirs.format(*index)}.{layer}.{param}"
    raise CheckpointError(f"no conversion rule for decoder tensor {key!r}")


def map_upernet_state(
    state: dict[str, torch.Tensor],
    encoder_keys,
    decoder_keys,
    fmt: str,
    source: str = "source",
) -> MappedUperNet:
    """Tensors for ``encoder_keys`` and ``decoder_keys`` (ours) from a UPerNet-Swin ``state``.

    Raises a one-line CheckpointError naming the first missing source tensor,
    or the first source tensor that is neither used nor known to be unused.
    BatchNorm ``num_batches_tracked`` counters (they do not change outputs)
    are set to 0 when the source lacks them.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"{source}: unknown UPerNet format {fmt!r}")
    state = normalise_names(state, fmt)
    used: set[str] = set()

    def take(src: str, ours: str) -> torch.Tensor | None:
        if src in state:
            used.add(src)
            return state[src]
        if src.endswith(".num_batches_tracked"):
            return None
        raise CheckpointError(f"{source}: missing tensor {src!r} (for {ours})")

    encoder = {}
    for key in encoder_keys:
        srcs, how = _encoder_source(key, fmt)
        parts = [take(s, key) for s in srcs]
        if how == "qkv":
            encoder[key] = torch.cat(parts, dim=0)
        elif how == "unfold":
            encoder[key] = unfold_to_swin_order(parts[0])
        else:
            encoder[key] = parts[0]
    decoder = {}
    for key in decoder_keys:
        t = take(_decoder_source(key, fmt), key)
        decoder[key] = torch.zeros((), dtype=torch.long) if t is None else t

    unused, extra = {}, []
    for key in sorted(set(state) - used):
        reason = next((why for pattern, why in _UNUSED if pattern.search(key)), None)
        if reason is None:
            extra.append(key)
        else:
            unused[key] = reason
    if extra:
        raise CheckpointError(
            f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} not in the UPerNet-Swin conversion table)"
        )
    return MappedUperNet(encoder, decoder, unused)
