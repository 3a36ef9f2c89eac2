"""The weights registry: named checkpoints shipped under ``weights/``.

``weights/registry.json`` maps names to files (with their SHA-256) and names
the default used when ``--weights`` is not given. ``CASWIT_GEO_WEIGHTS_DIR``
points at another registry folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from caswit_geo.core.errors import CheckpointError

REGISTRY_FILE = "registry.json"


def weights_dir() -> Path:
    env = os.environ.get("CASWIT_GEO_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def load_registry(folder: Path | None = None) -> dict:
    path = (folder or weights_dir()) / REGISTRY_FILE
    if not path.is_file():
        return {"default": None, "models": {}}
    try:
        reg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    reg.setdefault("default", None)
    reg.setdefault("models", {})
    return reg


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
    if not path.is_file():
        known = ", ".join(reg["models"]) or "none"
        raise CheckpointError(f"--weights {path}: no such file (registered names: {known})")
    return path
