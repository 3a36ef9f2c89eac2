"""What a run needs to continue exactly: model, optimiser, scaler, schedule step, RNG.

All of it lives in ``last.pt`` (one file, renamed into place in one step:
a kill never leaves half of it), written with ``torch.save`` but holding
only tensors, numbers, strings, lists and dicts, so that it loads with
``torch.load(weights_only=True)`` (nothing is unpickled). Format 1 (older
runs) kept the model in ``last.safetensors`` only. RNG states (torch,
CUDA, numpy, Python) are kept for every rank: dropout, random crops,
augmentation, SimMIM masks and the DataLoader workers' seeds all draw from
them.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from caswit_geo.core.errors import CheckpointError
from caswit_geo.safeio.writes import atomic_path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """This process's RNG states as plain tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_state(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_state(path: str | Path) -> dict:
    """Read a state file written by :func:`save_state` (``weights_only``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused to load, the file holds more than plain training state") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable training state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"{path}: not a caswit-geo training state")
    return state
