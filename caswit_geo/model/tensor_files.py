"""Tensor files read without trusting them: safetensors files and ``.pt``/``.pth`` state dicts.

One reader serves caswit-geo checkpoints (``checkpoint.py``) and the
UPerNet-Swin checkpoints made elsewhere (``upernet/source.py``). What a file
can make us allocate is bounded before anything is built from it: its size,
its number of tensors, the length of their names. A safetensors header
(names, shapes, data types, metadata) is read and checked before any tensor
data, so that a caller can compare it with the model it expects first. A
``.pt``/``.pth`` file is read with ``torch.load(weights_only=True)``, which
refuses pickled code. Every error is a one-line ``CheckpointError`` naming
the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from caswit_geo.core.errors import CheckpointError
from caswit_geo.core.limits import short_repr

# caswit-large is 1.9 GiB in float32 (4 GiB is the most checkpoint.py builds), UPerNet-Swin-L 0.9 GB
MAX_WEIGHTS_BYTES = 8 * 2**30
MAX_TENSORS = 20_000  # caswit-large has 878, UPerNet-Swin-L about 400
MAX_TENSOR_NAME_CHARS = 300
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
# keys under which training scripts save the weights, beside their optimiser state and metadata
STATE_DICT_WRAPPERS = ("state_dict", "model")
# what safetensors and the file system raise on a truncated, corrupt or unreadable file
_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


def check_file_size(path: Path, max_bytes: int = MAX_WEIGHTS_BYTES) -> Path:
    """``path``, unless the file is larger than ``max_bytes`` (or cannot be read)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if size > max_bytes:
        raise CheckpointError(f"{path}: {_size_text(size)}, more than the {_size_text(max_bytes)} "
                              "caswit-geo reads from such a file")
    return path


def _size_text(size: int) -> str:
    for unit, name in ((2**30, "GiB"), (2**20, "MiB")):
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def check_tensor_names(names: list, path: Path) -> None:
    """Few enough tensors, each named by a short text."""
    if len(names) > MAX_TENSORS:
        raise CheckpointError(f"{path}: {len(names)} tensors, more than the {MAX_TENSORS} caswit-geo reads")
    bad = next((n for n in names if not isinstance(n, str) or len(n) > MAX_TENSOR_NAME_CHARS), None)
    if bad is not None:
        raise CheckpointError(f"{path}: invalid tensor name {short_repr(bad, 80)}")


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------


@dataclass
class SafetensorsHeader:
    """What a safetensors file says before its data is read."""

    metadata: dict[str, str]  # the free text entries of the header
    layout: dict[str, torch.Tensor]  # tensor name -> a meta tensor: shape and dtype, no data


def read_safetensors_header(path: Path, dtypes: Collection[str] = tuple(SAFETENSORS_DTYPES)) -> SafetensorsHeader:
    """The checked header of a safetensors file: size, tensor names and data types (among ``dtypes``)."""
    check_file_size(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
            check_tensor_names(names, path)
            layout = {name: _meta_tensor(f.get_slice(name), name, dtypes, path) for name in names}
    except _READ_ERRORS as e:
        raise _corrupt(path, e) from None
    return SafetensorsHeader(metadata, layout)


def _meta_tensor(tensor_slice, name: str, dtypes: Collection[str], path: Path) -> torch.Tensor:
    dtype = tensor_slice.get_dtype()
    if dtype not in dtypes:
        raise CheckpointError(f"{path}: tensor {name!r} has the unsupported data type {dtype}")
    return torch.empty(tensor_slice.get_shape(), dtype=SAFETENSORS_DTYPES[dtype], device="meta")


def read_safetensors_tensors(path: Path, header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """The tensors of ``header`` (read from ``path`` by :func:`read_safetensors_header`), with their data."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in header.layout}
    except _READ_ERRORS as e:
        raise _corrupt(path, e) from None


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid safetensors checkpoint (truncated or corrupt: {error})")


# ---------------------------------------------------------------------------
# .pt / .pth
# ---------------------------------------------------------------------------


def torch_load(path: str | Path):
    """The content of a ``.pt``/``.pth`` file read with ``weights_only=True``: tensors and plain
    Python values only; a file that would run code when unpickled is refused."""
    check_file_size(Path(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load, the file holds more than tensors ({first[:160]})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(e).__name__})") from None


def state_dict_of(loaded, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a :func:`torch_load` result: bare, or under the keys of ``STATE_DICT_WRAPPERS``."""
    for key in STATE_DICT_WRAPPERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    check_tensor_names(list(loaded), path)
    bad = next((k for k, v in loaded.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: state dict entry {short_repr(bad, 80)} is not a tensor")
    return loaded
