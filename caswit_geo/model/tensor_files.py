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
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from caswit_geo.core.errors import CheckpointError
from caswit_geo.core.jsonfile import size_text
from caswit_geo.core.limits import short_repr

# caswit-large is 1.9 GiB in float32 (4 GiB is the most checkpoint.py builds), UPerNet-Swin-L 0.9 GB
MAX_WEIGHTS_BYTES = 8 * 2**30
MAX_TENSORS = 20_000  # caswit-large has 878, UPerNet-Swin-L about 400
MAX_TENSOR_NAME_CHARS = 300
# the JSON header of a safetensors file (names, shapes, offsets, metadata): 20,000 tensors take about
# 3 MiB; the format itself allows 100 MB, which its reader would parse before we see a byte of it
MAX_SAFETENSORS_HEADER_BYTES = 16 * 2**20
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
        info = path.stat()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: not a regular file (a weights file is expected)")
    if info.st_size > max_bytes:
        raise CheckpointError(f"{path}: {size_text(info.st_size)}, more than the {size_text(max_bytes)} "
                              "caswit-geo reads from such a file")
    return path


def safetensors_header_size(path: Path) -> int | None:
    """The header length a safetensors file declares in its first 8 bytes, or None when the file
    does not start like one (8 bytes of little-endian length, then ``{``)."""
    try:
        with open(path, "rb") as f:
            start = f.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if len(start) < 9 or start[8:9] != b"{":
        return None
    return int.from_bytes(start[:8], "little")


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
    declared = safetensors_header_size(path)
    if declared is not None and declared > MAX_SAFETENSORS_HEADER_BYTES:
        raise CheckpointError(f"{path}: safetensors header of {size_text(declared)}, more than the "
                              f"{size_text(MAX_SAFETENSORS_HEADER_BYTES)} caswit-geo reads")
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
    if safetensors_header_size(Path(path)) is not None:
        raise CheckpointError(f"{path}: a safetensors file named {Path(path).suffix or 'without a suffix'} "
                              "(rename it to .safetensors)")
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
    for name, tensor in loaded.items():
        check_dense(tensor, name, path)
    return loaded


def check_dense(tensor: torch.Tensor, name: str, path: Path) -> None:
    """Refuse a tensor that claims more elements than its storage holds.

    A pickled tensor is a storage plus a view (shape, strides, offset): a
    stride-0 view of a few bytes can declare gigabytes, which the first copy
    (``contiguous``, ``clone``, a safetensors save) would allocate. Every
    element of a state dict tensor must have its own place in the storage.
    """
    if tensor.numel() == 0:
        return
    # elements the view spans in its storage: a dense view (transposed ones too) spans numel
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride()))
    held = tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()
    if span < tensor.numel() or span > held:
        needed = tensor.numel() * tensor.element_size()
        raise CheckpointError(
            f"{path}: tensor {short_repr(name, 80)} declares {tuple(tensor.shape)} "
            f"({size_text(needed)}) over {size_text(max(held, 0) * tensor.element_size())} of data "
            "(an expanded or overlapping view)"
        )
