"""Checkpoints: safetensors weights with the JSON metadata in the file header.

One ``.safetensors`` file holds the tensors and, under the header key
``caswit_geo``, a JSON document: format version, kind (``segmentation`` or
``simmim``), model config, classes (ids, names, colours), input spec (bands,
scaling, normalisation, tile size, context factor, GSD) and free metadata
(provenance, training settings). Nothing is ever unpickled: ``.pt``/``.pth``
files are read with ``torch.load(weights_only=True)``, which refuses code.
"""

from __future__ import annotations

import datetime as _dt
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .atomic import atomic_path, usual_permissions
from .errors import CheckpointError
from .model.caswit import CASWiT, CaswitConfig
from .model.simmim import CaswitSimMIM
from .model.transfer import check_state_fits, transfer_backbone
from .spec import ClassTable, InputSpec

FORMAT = "caswit-geo"
FORMAT_VERSION = 1
HEADER_KEY = "caswit_geo"
KINDS = {"segmentation": CASWiT, "simmim": CaswitSimMIM}


@dataclass
class CheckpointMeta:
    name: str
    kind: str
    config: dict
    classes: ClassTable
    input_spec: InputSpec
    metadata: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def model_config(self) -> CaswitConfig:
        return CaswitConfig.from_dict(self.config)


def _kind_of(model: nn.Module) -> str:
    for kind, cls in KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"cannot checkpoint a {type(model).__name__}")


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / torch.compile wrappers keep the real module here; save that, not the wrapper's key names
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    classes: ClassTable | None = None,
    input_spec: InputSpec | None = None,
    include_aux: bool = False,
    **metadata,
) -> Path:
    """Write ``model`` and its metadata to ``path`` (atomically: temp file, then rename).

    ``include_aux``: keep the auxiliary LR head (training checkpoints); an
    inference checkpoint leaves it out and loads without it.
    """
    model = _unwrap(model)
    kind = _kind_of(model)
    config: CaswitConfig = model.config
    classes = classes or ClassTable.generic(config.num_classes)
    if kind == "segmentation" and len(classes) != config.num_classes:
        raise CheckpointError(f"{len(classes)} classes given for a {config.num_classes}-class model")
    input_spec = input_spec or InputSpec(
        bands=tuple(range(1, config.in_chans + 1)),
        mean=(0.5,) * config.in_chans if config.in_chans != 3 else InputSpec().mean,
        std=(0.25,) * config.in_chans if config.in_chans != 3 else InputSpec().std,
        tile_size=config.img_size,
    )
    if input_spec.tile_size != config.img_size or input_spec.in_chans != config.in_chans:
        raise CheckpointError(
            f"input spec (tile {input_spec.tile_size}, {input_spec.in_chans} bands) does not match the model "
            f"(tile {config.img_size}, {config.in_chans} bands)"
        )
    state = model.state_dict()
    cfg = config.to_dict()
    if kind == "segmentation" and not include_aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
        cfg["aux_head"] = False
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "name": config.name,
        "config": cfg,
        "classes": classes.to_dict(),
        "input_spec": input_spec.to_dict(),
        "metadata": metadata,
        "provenance": {
            "caswit_geo": __version__,
            "torch": torch.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header, default=_json_default)})
        usual_permissions(tmp)
    return path


def _json_default(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"metadata value {o!r} is not JSON serialisable")


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.pth`` file, never running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return read_checkpoint(path, require_header=False)[0]
    obj = torch_load(path)
    for key in ("state_dict", "model"):  # common wrappers of training scripts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return obj


def torch_load(path: str | Path):
    """The content of a ``.pt``/``.pth`` file read with ``weights_only=True``: tensors and plain
    Python values only; a file that would run code when unpickled is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load, the file holds more than tensors ({first[:160]})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(e).__name__})") from None


def read_checkpoint(path: str | Path, require_header: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors and parsed header of a safetensors checkpoint, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint (truncated or corrupt: {e})") from None
    if raw is None:
        if require_header:
            raise CheckpointError(f"{path}: safetensors file without caswit-geo metadata (not a caswit-geo checkpoint)")
        return tensors, None
    try:
        header = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a caswit-geo checkpoint")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {header['format_version']} is newer than this caswit-geo understands"
        )
    if header.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {header.get('kind')!r}")
    return tensors, header


def read_meta(path: str | Path) -> CheckpointMeta:
    """Metadata only (no model built)."""
    return _meta(read_checkpoint(path)[1], Path(path))


def stored_behaviour(path: str | Path) -> dict:
    """The model config fields a model built to continue the checkpoint at ``path`` must share.

    Fields added after a checkpoint was made (see ``LEGACY_DEFAULTS`` in
    ``model/caswit.py``) read as the values it was trained with, so that a
    resumed or initialised run keeps them.
    """
    try:
        return read_meta(path).model_config.behaviour()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None


def _meta(header: dict, path: Path) -> CheckpointMeta:
    try:
        return CheckpointMeta(
            name=header["name"],
            kind=header["kind"],
            config=header["config"],
            classes=ClassTable.from_dict(header["classes"]),
            input_spec=InputSpec.from_dict(header["input_spec"]),
            metadata=header.get("metadata", {}),
            provenance=header.get("provenance", {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: incomplete checkpoint metadata ({e})") from None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, train: bool = False
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint, load its weights, return ``(model, meta)``.

    The model is in eval mode (``train=True`` leaves it in train mode).
    """
    path = Path(path)
    tensors, header = read_checkpoint(path)
    meta = _meta(header, path)
    try:
        config = meta.model_config
    except Exception as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None
    model = KINDS[meta.kind](config)
    check_state_fits(model.state_dict(), tensors, str(path), f"weights do not match the {meta.name} config")
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.train(train)
    return model, meta


def load_pretrained_backbone(model: CASWiT, path: str | Path):
    """Initialise ``model``'s encoders and fusion blocks from a checkpoint.

    Accepts a ``pretrain`` (SimMIM) checkpoint or a segmentation checkpoint
    of the same architecture; returns a :class:`TransferReport` saying what
    was loaded, and refuses any mismatch.
    """
    tensors, header = read_checkpoint(path)
    return transfer_backbone(model, tensors, source=str(path))
