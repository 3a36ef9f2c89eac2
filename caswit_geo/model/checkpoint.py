"""Checkpoints: safetensors weights with the JSON metadata in the file header.

One ``.safetensors`` file holds the tensors and, under the header key
``caswit_geo``, a JSON document: format version, kind (``segmentation`` or
``simmim``), model config, classes (ids, names, colours), input spec (bands,
scaling, normalisation, tile size, context factor, GSD) and free metadata
(provenance, training settings). Nothing is ever unpickled: ``.pt``/``.pth``
files are read with ``torch.load(weights_only=True)``, which refuses code.
Files are read, sizes bounded, by ``tensor_files.py``.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from caswit_geo import __version__
from caswit_geo.core.errors import CaswitError, CheckpointError, ConfigError
from caswit_geo.core.jsonfile import nesting_depth, parse_json, size_text
from caswit_geo.core.limits import Keys, Text
from caswit_geo.core.spec import ClassTable, InputSpec
from caswit_geo.model.caswit import CASWiT, CaswitConfig
from caswit_geo.model.simmim import CaswitSimMIM
from caswit_geo.model.tensor_files import (
    SafetensorsHeader,
    read_safetensors_header,
    read_safetensors_tensors,
    safetensors_header_size,
    state_dict_of,
    torch_load,
)
from caswit_geo.model.transfer import check_state_fits, transfer_backbone
from caswit_geo.safeio.files import usual_permissions
from caswit_geo.safeio.writes import atomic_path

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
    text = json.dumps(header, default=_json_default)
    check_header(json.loads(text), path)  # what the file will say must load again (predict, info, eval)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: text})
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
    return state_dict_of(torch_load(path), path)


# ---------------------------------------------------------------------------
# Reading: the header is untrusted input, checked before anything is built
# ---------------------------------------------------------------------------

# a header holds a config, 255 classes, an input spec and small free dicts: a few KiB
MAX_HEADER_BYTES = 1 * 2**20
MAX_HEADER_DEPTH = 12
# the free "metadata" and "provenance" objects (training settings, origin): each bounded on its own,
# and only a summary of them (:func:`free_dict_summary`) is copied into outputs
MAX_FREE_BYTES = 64 * 2**10
MAX_FREE_DEPTH = 6
MAX_SUMMARY_KEYS = 32
MAX_SUMMARY_VALUE_CHARS = 200
HEADER_KEYS = ("format", "format_version", "kind", "name", "config", "classes", "input_spec", "metadata", "provenance")
MAX_MODEL_BYTES = 4 * 2**30  # parameters and buffers (caswit-large: 1.9 GiB)


def _open_file(path: Path) -> SafetensorsHeader:
    """The file's checked safetensors header: metadata and tensor layout, no tensor data read."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    if path.is_file() and safetensors_header_size(path) is None:
        if path.suffix in (".pth", ".pt", ".bin"):
            raise CheckpointError(f"{path}: not a caswit-geo checkpoint (a PyTorch file, not a safetensors file; "
                                  "import a UPerNet-Swin one with 'caswit-geo convert')")
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint (it does not start with a safetensors "
                              "header: truncated, or another format)")
    return read_safetensors_header(path)


def _parse_header(raw: str, path: Path) -> dict:
    header = parse_json(raw, source=path, what="the caswit-geo header", max_bytes=MAX_HEADER_BYTES,
                        max_depth=MAX_HEADER_DEPTH, error=CheckpointError)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a caswit-geo checkpoint")
    version = header.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this caswit-geo understands")
    if header.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {header.get('kind')!r}")
    return header


def check_header(header: dict, source: str | Path) -> CheckpointMeta:
    """The metadata of a parsed header, every key and value checked against the schema.

    Only the keys of :data:`HEADER_KEYS` are accepted; the model config, the
    input spec and the class table are checked field by field against the
    bounds declared beside their fields (``CaswitConfig``, ``InputSpec``,
    ``ClassInfo``), then against each other: one class per model output, the
    spec's tile size and band count those of the model.
    """
    unknown = sorted(str(k) for k in header if k not in HEADER_KEYS)
    if unknown:
        raise CheckpointError(f"{source}: unknown checkpoint header key {unknown[0]!r}")
    missing = [k for k in ("name", "config", "classes", "input_spec") if k not in header]
    if missing:
        raise CheckpointError(f"{source}: incomplete checkpoint metadata ({missing[0]!r} missing)")
    try:
        name = Text(64)(header["name"], "name")
        config = CaswitConfig.from_dict(header["config"], "config")
        Keys(classes=lambda v, n: v, weights=lambda v, n: v)(header["classes"], "classes")  # no other key
        classes = ClassTable.from_dict(header["classes"], "classes")
        spec = InputSpec.from_dict(header["input_spec"], "input_spec")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    for key in ("metadata", "provenance"):
        check_free_dict(header.get(key, {}), key, source)
    kind = header["kind"]
    if kind == "segmentation" and len(classes) != config.num_classes:
        raise CheckpointError(
            f"{source}: {len(classes)} class names for a model with {config.num_classes} outputs "
            "(classes must name every output)"
        )
    if spec.tile_size != config.img_size or spec.in_chans != config.in_chans:
        raise CheckpointError(
            f"{source}: input spec (tile {spec.tile_size}, {spec.in_chans} bands) does not match the model "
            f"(tile {config.img_size}, {config.in_chans} bands)"
        )
    return CheckpointMeta(name, kind, config.to_dict(), classes, spec, header.get("metadata", {}),
                          header.get("provenance", {}))


def check_free_dict(value, key: str, source: str | Path) -> None:
    """A header's free ``metadata``/``provenance``: an object, bounded in size and depth."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: {key} must be an object")
    size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    if size > MAX_FREE_BYTES:
        raise CheckpointError(f"{source}: {key} is {size_text(size)}, more than the {size_text(MAX_FREE_BYTES)} "
                              "a checkpoint header may carry")
    depth = nesting_depth(json.dumps(value, default=str))
    if depth > MAX_FREE_DEPTH:
        raise CheckpointError(f"{source}: {key} nests {depth} levels deep, more than {MAX_FREE_DEPTH}")


def free_dict_summary(value: dict) -> dict:
    """At most ``MAX_SUMMARY_KEYS`` entries of a free dict, each value as short text: what outputs carry.

    A map's tags say where its model came from; they are no archive of the
    checkpoint, whose own header stays the full record.
    """
    out = {}
    for key in list(value)[:MAX_SUMMARY_KEYS]:
        v = value[key]
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        if len(text) > MAX_SUMMARY_VALUE_CHARS:
            text = text[: MAX_SUMMARY_VALUE_CHARS - 3] + "..."
        out[str(key)[:MAX_SUMMARY_VALUE_CHARS]] = text
    if len(value) > MAX_SUMMARY_KEYS:
        out["..."] = f"{len(value) - MAX_SUMMARY_KEYS} more entries in the checkpoint"
    return out


def shape_model(meta: CheckpointMeta, source: str | Path) -> nn.Module:
    """The model of ``meta`` built on the ``meta`` device: shapes and dtypes, no memory, no initialisation."""
    try:
        with torch.device("meta"):
            model = KINDS[meta.kind](meta.model_config)
    except CaswitError:
        raise
    except Exception as e:  # timm asserts on inconsistent sizes (e.g. a width not divisible by the heads)
        raise CheckpointError(f"{source}: the model config cannot be built ({type(e).__name__}: {e})") from None
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if size > MAX_MODEL_BYTES:
        raise CheckpointError(
            f"{source}: the model config describes {size / 2**30:.1f} GiB of weights, more than the "
            f"{MAX_MODEL_BYTES / 2**30:.0f} GiB caswit-geo accepts"
        )
    return model


def read_checkpoint(path: str | Path, require_header: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors and parsed header of a safetensors checkpoint, with clear errors.

    With a header, the header is checked (:func:`check_header`) and every
    tensor's name, shape and dtype compared with the model it describes,
    built on the ``meta`` device, before any tensor data is read.
    """
    path = Path(path)
    file_header = _open_file(path)
    raw = file_header.metadata.get(HEADER_KEY)
    header = None
    if raw is None:
        if require_header:
            raise CheckpointError(f"{path}: safetensors file without caswit-geo metadata (not a caswit-geo checkpoint)")
    else:
        header = _parse_header(raw, path)
        meta = check_header(header, path)
        expected = shape_model(meta, path).state_dict()
        check_state_fits(expected, file_header.layout, str(path), f"weights do not match the {meta.name} config")
    return read_safetensors_tensors(path, file_header), header


def read_meta(path: str | Path) -> CheckpointMeta:
    """Metadata only, checked against the schema (no model built, no tensor read)."""
    path = Path(path)
    raw = _open_file(path).metadata.get(HEADER_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without caswit-geo metadata (not a caswit-geo checkpoint)")
    return check_header(_parse_header(raw, path), path)


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


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, train: bool = False
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint, load its weights, return ``(model, meta)``.

    The model is in eval mode (``train=True`` leaves it in train mode).
    """
    path = Path(path)
    tensors, header = read_checkpoint(path)
    meta = check_header(header, path)
    model = KINDS[meta.kind](meta.model_config)
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
