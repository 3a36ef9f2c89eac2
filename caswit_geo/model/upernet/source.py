"""Read a UPerNet-Swin checkpoint made elsewhere: a transformers model folder or an mmsegmentation ``.pth``.

- transformers (``UperNetForSemanticSegmentation`` with a ``SwinBackbone``,
  e.g. ``openmmlab/upernet-swin-tiny`` saved locally): a folder with
  ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``),
  optionally ``preprocessor_config.json`` for the input normalisation.
- mmsegmentation: a ``.pth`` training checkpoint (``state_dict`` and
  ``meta``); the architecture is read from the tensor shapes and the class
  names from ``meta``; the normalisation is ImageNet's, that of the
  mmsegmentation UPerNet-Swin configs.

Everything in the source is untrusted: files are size-bounded, only the
config keys below are read and each is checked, tensors are read without
running pickled code, and every error is one line naming the file and key.
Nothing here is downloaded and ``transformers`` is never imported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from caswit_geo.core.errors import CheckpointError
from caswit_geo.core.jsonfile import load_json
from caswit_geo.core.limits import short_repr
from caswit_geo.core.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from caswit_geo.model.tensor_files import (
    read_safetensors_header,
    read_safetensors_tensors,
    state_dict_of,
    torch_load,
)
from caswit_geo.model.upernet.keys import detect_format

MAX_JSON_BYTES = 4 * 2**20
MAX_JSON_DEPTH = 16  # transformers configs nest 3 deep (backbone_config, id2label)
MAX_CLASS_NAME_CHARS = 100
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64", "I64")  # of a model.safetensors: floats, and BatchNorm's counters
IMAGENET_NOTE = "ImageNet mean/std on 8-bit RGB (the mmsegmentation UPerNet-Swin setting)"


@dataclass(frozen=True)
class SwinArch:
    """What must match one of our named Swin variants."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    in_chans: int = 3

    def __str__(self) -> str:
        return (f"embed_dim {self.embed_dim}, depths {list(self.depths)}, heads {list(self.num_heads)}, "
                f"window {self.window_size}")


@dataclass
class UperNetSource:
    """A UPerNet-Swin checkpoint read into memory."""

    path: Path
    format: str  # transformers | mmseg
    state: dict[str, torch.Tensor]  # the file's tensors, floats as float32
    arch: SwinArch
    decoder_channels: int
    num_classes: int
    class_names: list[str] | None  # None: the source names no classes
    mean: tuple[float, ...]  # normalisation on values / 255, as InputSpec
    std: tuple[float, ...]
    normalisation: str  # where mean/std came from
    notes: list[str] = field(default_factory=list)

    def input_spec(self, tile_size: int) -> InputSpec:
        """What the source model expects: RGB 8-bit, its mean/std (GSD unknown)."""
        return InputSpec(bands=tuple(range(1, self.arch.in_chans + 1)), scale=255.0, mean=self.mean,
                         std=self.std, tile_size=tile_size, gsd=None)


def read_upernet(path: str | Path) -> UperNetSource:
    """A transformers model folder or an mmsegmentation ``.pth`` -> :class:`UperNetSource`."""
    path = Path(path)
    if path.is_dir():
        return _read_transformers(path)
    if path.is_file():
        if path.suffix.lower() not in (".pth", ".pt"):
            raise CheckpointError(
                f"{path}: expected a transformers model folder (config.json + model.safetensors) "
                "or an mmsegmentation .pth checkpoint"
            )
        return _read_mmseg(path)
    raise CheckpointError(f"{path}: no such UPerNet-Swin checkpoint (file or folder)")


# --- transformers ---------------------------------------------------------------------------


def _read_transformers(folder: Path) -> UperNetSource:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a transformers model folder)")
    config = _read_json(config_path)
    arch, decoder_channels, names = _transformers_arch(config, config_path)
    weights = folder / "model.safetensors"
    if weights.is_file():
        state = _read_safetensors(weights)
    elif (folder / "pytorch_model.bin").is_file():
        weights = folder / "pytorch_model.bin"
        state = _float32_state(torch_load(weights), weights)
    elif any(folder.glob("*.index.json")):
        raise CheckpointError(f"{folder}: sharded weights are not supported; save the model as one model.safetensors")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    if detect_format(state, str(weights)) != "transformers":
        raise CheckpointError(f"{weights}: tensor names are not those of transformers' UPerNet-Swin")
    mean, std, how = _transformers_normalisation(folder / "preprocessor_config.json", arch.in_chans)
    return UperNetSource(folder, "transformers", state, arch, decoder_channels, len(names), names, mean, std, how)


def _transformers_arch(config: dict, path: Path) -> tuple[SwinArch, int, list[str]]:
    """Whitelisted, checked fields of a transformers UperNet config.json."""

    def need(d: dict, key: str, ok, what: str, where: str = ""):
        value = d.get(key)
        if not ok(value):
            raise CheckpointError(f"{path}: {where}{key} is {short_repr(value, 80)}; caswit-geo needs {what}")
        return value

    need(config, "model_type", lambda v: v == "upernet", '"upernet" (UperNetForSemanticSegmentation)')
    bb = config.get("backbone_config")
    if not isinstance(bb, dict):
        raise CheckpointError(f"{path}: no backbone_config (a backbone loaded by name is not supported)")
    at = "backbone_config."
    need(bb, "model_type", lambda v: v == "swin", 'a "swin" backbone', at)
    small_int = lambda lo, hi: lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi  # noqa: E731
    four = lambda lo, hi: lambda v: (isinstance(v, list) and len(v) == 4  # noqa: E731
                                     and all(small_int(lo, hi)(x) for x in v))
    embed_dim = need(bb, "embed_dim", small_int(1, 4096), "an integer 1..4096", at)
    depths = need(bb, "depths", four(1, 64), "4 stages of 1..64 blocks", at)
    heads = need(bb, "num_heads", four(1, 512), "4 head counts", at)
    window = need(bb, "window_size", small_int(1, 64), "an integer 1..64", at)
    in_chans = need(bb, "num_channels", small_int(1, 16), "1..16 input bands", at)
    need(bb, "patch_size", lambda v: v == 4, "4", at)
    need(bb, "mlp_ratio", lambda v: v == 4 or v == 4.0, "4.0", at)
    need(bb, "qkv_bias", lambda v: v is True, "true", at)
    need(bb, "use_absolute_embeddings", lambda v: not v, "false (no absolute position embedding)", at)
    need(bb, "hidden_act", lambda v: v == "gelu", '"gelu"', at)
    need(bb, "layer_norm_eps", lambda v: isinstance(v, (int, float)) and abs(v - 1e-5) < 1e-12, "1e-05", at)
    stages = ["stage1", "stage2", "stage3", "stage4"]
    need(bb, "out_features", lambda v: v == stages, f"{stages} (all four stages to the decoder)", at)
    for i, h in enumerate(heads):
        if (embed_dim * 2**i) % h:
            raise CheckpointError(f"{path}: {at}num_heads[{i}] = {h} does not divide {embed_dim * 2**i} channels")
    need(config, "pool_scales", lambda v: v == [1, 2, 3, 6], "[1, 2, 3, 6]")
    channels = need(config, "hidden_size", small_int(1, 8192), "an integer 1..8192")
    names = _class_names_from_id2label(config.get("id2label"), path)
    if "num_labels" in config and config["num_labels"] != len(names):
        raise CheckpointError(
            f"{path}: num_labels {short_repr(config['num_labels'], 80)} but {len(names)} labels in id2label")
    return SwinArch(embed_dim, tuple(depths), tuple(heads), window, in_chans), channels, names


def _class_names_from_id2label(id2label, path: Path) -> list[str]:
    if not isinstance(id2label, dict) or not 1 <= len(id2label) <= 255:
        raise CheckpointError(f"{path}: id2label must map 1..255 class ids to names, got {short_repr(id2label, 80)}")
    if sorted(id2label) != sorted(str(i) for i in range(len(id2label))):
        raise CheckpointError(f"{path}: id2label keys must be 0..{len(id2label) - 1}")
    return [_class_name(id2label[str(i)], f"{path}: id2label[{i}]") for i in range(len(id2label))]


def _class_name(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CheckpointError(f"{where} is {short_repr(value, 80)}; expected a class name")
    name = " ".join(value.split())[:MAX_CLASS_NAME_CHARS]
    if not name.isprintable():  # terminal escapes would reach the legend, the tags and every message
        raise CheckpointError(f"{where} is {short_repr(value, 80)}: a class name holds a control character")
    return name


def _transformers_normalisation(path: Path, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Mean/std on values / 255 from ``preprocessor_config.json`` (ImageNet's without one).

    transformers computes ``(x * rescale_factor - mean) / std`` (or ``(x - mean) / std``
    without rescaling); on ``x / 255`` that is mean / (255 * factor), std / (255 * factor).
    """
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD, f"{IMAGENET_NOTE}; no preprocessor_config.json"
    pre = _read_json(path)

    def flag(key: str, default: bool) -> bool:
        value = pre.get(key, default)
        if not isinstance(value, bool):
            raise CheckpointError(f"{path}: {key} is {short_repr(value, 80)}; expected true or false")
        return value

    factor = 1.0
    if flag("do_rescale", True):
        factor = pre.get("rescale_factor", 1 / 255)
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 1e-6 <= factor <= 1:
            raise CheckpointError(f"{path}: rescale_factor is {short_repr(factor, 80)}; expected a number in (0, 1]")
    if not flag("do_normalize", True):
        mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    else:
        mean, std = (_numbers(pre.get(k), in_chans, f"{path}: {k}") for k in ("image_mean", "image_std"))
        if min(std) <= 0:
            raise CheckpointError(f"{path}: image_std must be positive, got {list(std)}")
    to_ours = 255.0 * factor
    return (tuple(m / to_ours for m in mean), tuple(s / to_ours for s in std),
            f"{path.name} (mean {list(mean)}, std {list(std)}, rescale {factor:g})")


def _numbers(value, n: int, where: str) -> tuple[float, ...]:
    if not (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise CheckpointError(f"{where} is {short_repr(value, 80)}; expected {n} numbers")
    return tuple(float(v) for v in value)


# --- mmsegmentation -------------------------------------------------------------------------


def _read_mmseg(path: Path) -> UperNetSource:
    try:
        obj = torch_load(path)
    except CheckpointError as e:  # mmsegmentation 1.x also pickles its training state
        raise CheckpointError(
            f"{e}; keep only the weights, e.g. torch.save({{'state_dict': ckpt['state_dict']}}, 'upernet.pth')"
        ) from None
    state = _float32_state(obj, path)
    if detect_format(state, str(path)) != "mmseg":
        raise CheckpointError(f"{path}: tensor names are not those of mmsegmentation's UPerNet-Swin")
    arch = _mmseg_arch(state, path)
    seg = state.get("decode_head.conv_seg.weight")
    if seg is None or seg.ndim != 4:
        raise CheckpointError(f"{path}: missing tensor 'decode_head.conv_seg.weight' (the classifier)")
    ppm = {int(m[1]) for k in state if (m := re.match(r"decode_head\.psp_modules\.(\d+)\.", k))}
    if ppm != {0, 1, 2, 3}:
        raise CheckpointError(f"{path}: {len(ppm)} pyramid pooling branches; caswit-geo needs 4 (scales 1, 2, 3, 6)")
    num_classes, channels = int(seg.shape[0]), int(seg.shape[1])
    names = _mmseg_class_names(obj, num_classes, path)
    notes = ["pyramid pooling scales taken as mmsegmentation's default (1, 2, 3, 6)"]
    return UperNetSource(path, "mmseg", state, arch, channels, num_classes, names, IMAGENET_MEAN, IMAGENET_STD,
                         f"{IMAGENET_NOTE}; an mmsegmentation checkpoint does not record it", notes)


def _mmseg_arch(state: dict[str, torch.Tensor], path: Path) -> SwinArch:
    """Swin architecture from the tensor shapes of an mmsegmentation checkpoint."""
    proj = state.get("backbone.patch_embed.projection.weight")
    if proj is None:
        raise CheckpointError(f"{path}: missing tensor 'backbone.patch_embed.projection.weight'")
    if proj.ndim != 4 or tuple(proj.shape[2:]) != (4, 4):
        raise CheckpointError(f"{path}: patch embedding of shape {tuple(proj.shape)}; caswit-geo needs 4 x 4 patches")
    blocks = {}
    for key in state:
        if m := re.match(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.", key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(blocks) != [0, 1, 2, 3] or any(b != set(range(len(b))) for b in blocks.values()):
        raise CheckpointError(f"{path}: Swin stages {sorted(blocks)}; caswit-geo needs 4 stages")
    depths = tuple(len(blocks[i]) for i in range(4))
    tables = [state.get(f"backbone.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table") for i in range(4)]
    if any(t is None or t.ndim != 2 for t in tables):
        raise CheckpointError(f"{path}: missing relative position bias tables")
    side = math.isqrt(int(tables[0].shape[0]))
    if side * side != tables[0].shape[0] or side % 2 == 0:
        raise CheckpointError(f"{path}: relative position table of {tables[0].shape[0]} rows is not a square window")
    return SwinArch(int(proj.shape[0]), depths, tuple(int(t.shape[1]) for t in tables), (side + 1) // 2,
                    int(proj.shape[1]))


def _mmseg_class_names(obj, num_classes: int, path: Path) -> list[str] | None:
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return None
    names = meta.get("CLASSES")  # mmsegmentation 0.x
    if names is None and isinstance(meta.get("dataset_meta"), dict):
        names = meta["dataset_meta"].get("classes")  # 1.x
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise CheckpointError(
            f"{path}: meta names {short_repr(names, 80)} classes for a {num_classes}-class classifier")
    return [_class_name(n, f"{path}: meta class {i}") for i, n in enumerate(names)]


# --- files ----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    data = load_json(path, what=path.name, max_bytes=MAX_JSON_BYTES, max_depth=MAX_JSON_DEPTH, error=CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = read_safetensors_tensors(path, read_safetensors_header(path, WEIGHT_DTYPES))
    return {k: _as_float32(v) for k, v in tensors.items()}


def _float32_state(loaded, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a :func:`torch_load` result, floats as float32."""
    return {k: _as_float32(v) for k, v in state_dict_of(loaded, path).items()}


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t
