"""The weights registry: named checkpoints shipped under ``weights/``.

``weights/registry.json`` maps names to files (with their SHA-256) and names
the default used when ``--weights`` is not given. ``CASWIT_GEO_WEIGHTS_DIR``
points at another registry folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from caswit_geo.core.errors import CheckpointError
from caswit_geo.core.jsonfile import load_json
from caswit_geo.core.limits import short_repr

REGISTRY_FILE = "registry.json"
MAX_REGISTRY_BYTES = 1 * 2**20
MAX_REGISTRY_DEPTH = 4  # {"models": {name: {key: value}}}
MAX_REGISTRY_MODELS = 1000
ENTRY_TYPES = {"file": str, "sha256": str, "bytes": int, "model": str, "classes": int, "tile_size": int,
               "context_factor": int, "gsd_m": (int, float), "description": str}


def weights_dir() -> Path:
    env = os.environ.get("CASWIT_GEO_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def load_registry(folder: Path | None = None) -> dict:
    """The checked registry of ``folder``: ``{"default": name or None, "models": {name: entry}}``.

    The file is untrusted like a checkpoint header: read through the bounded
    JSON loader, every key whitelisted, every value typed, and each entry's
    ``file`` a plain name inside the registry folder (no ``..``, no absolute
    path, no link out of it).
    """
    folder = folder or weights_dir()
    path = folder / REGISTRY_FILE
    if not path.exists():
        return {"default": None, "models": {}}
    reg = load_json(path, what="the weights registry", max_bytes=MAX_REGISTRY_BYTES, max_depth=MAX_REGISTRY_DEPTH,
                    error=CheckpointError)
    if not isinstance(reg, dict):
        raise CheckpointError(f"{path}: the weights registry must be a JSON object")
    unknown = sorted(str(k) for k in reg if k not in ("default", "models"))
    if unknown:
        raise CheckpointError(f"{path}: unknown registry key {short_repr(unknown[0], 60)}")
    models = reg.get("models", {})
    if not isinstance(models, dict) or len(models) > MAX_REGISTRY_MODELS:
        raise CheckpointError(f"{path}: \"models\" must be an object of at most {MAX_REGISTRY_MODELS} entries")
    checked = {}
    for name, entry in models.items():
        checked[_model_name(name, path)] = _entry(entry, name, folder, path)
    default = reg.get("default")
    if default is not None and (not isinstance(default, str) or default not in checked):
        raise CheckpointError(f"{path}: default {short_repr(default, 60)} is not a registered model")
    return {"default": default, "models": checked}


def _model_name(name: str, path: Path) -> str:
    if not (0 < len(name) <= 64 and name.isprintable()):
        raise CheckpointError(f"{path}: invalid model name {short_repr(name, 60)}")
    return name


def _entry(entry, name: str, folder: Path, path: Path) -> dict:
    where = f"{path}: models.{name}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} must be an object")
    unknown = sorted(str(k) for k in entry if k not in ENTRY_TYPES)
    if unknown:
        raise CheckpointError(f"{where}: unknown key {short_repr(unknown[0], 60)}")
    for key, types in ENTRY_TYPES.items():
        value = entry.get(key)
        if value is None and key != "file":
            continue
        if not isinstance(value, types) or isinstance(value, bool) or (isinstance(value, str) and len(value) > 1000):
            raise CheckpointError(f"{where}.{key} is {short_repr(value, 60)}")
    file = entry["file"]
    relative = Path(file)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise CheckpointError(f"{where}.file {short_repr(file, 80)} must be a file name inside {folder}")
    real_folder = folder.resolve()
    if real_folder not in (folder / relative).resolve().parents:  # a link out of the folder
        raise CheckpointError(f"{where}.file {short_repr(file, 80)} leads out of {folder}")
    sha = entry.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise CheckpointError(f"{where}.sha256 is not 64 lowercase hexadecimal digits")
    return dict(entry)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(value: str | Path | None, verify: bool = True) -> Path:
    """A ``--weights`` value (file path, registry name or None for the default) -> checkpoint path."""
    folder = weights_dir()
    reg = load_registry(folder)
    if value is None:
        if not reg["default"]:
            raise CheckpointError("no default weights: pass --weights PATH")
        value = reg["default"]
    name = str(value)
    if name in reg["models"]:
        entry = reg["models"][name]
        path = folder / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: registered weights {name!r} are missing")
        if verify and entry.get("sha256") and sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: checksum differs from the registry (corrupt or replaced file)")
        return path
    path = Path(value)
    if path.is_dir():
        raise CheckpointError(f"--weights {path}: is a folder, expected a checkpoint file")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"--weights {path}: not a regular file (a device or a pipe), expected a checkpoint file")
    if not path.is_file():
        known = ", ".join(reg["models"]) or "none"
        raise CheckpointError(f"--weights {path}: no such file (registered names: {known})")
    return path
