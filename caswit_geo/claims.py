"""Claims on destinations: one run writes a given output at a time.

A claim is a small hidden file ``.<name>.caswit-claim`` beside the
destination, created exclusively (``O_EXCL``) and naming its owner's process
token. The owner holds its liveness lock in the same folder (see
``atomic.py``) for as long as the claim exists, so a claim whose owner cannot
be proved alive is stale and is taken over. Claims are taken when a command
starts, before any work, so that a second run stops at once with a message
saying who holds the destination, instead of replacing the first run's
output hours later.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from . import atomic
from .errors import OutputError

SUFFIX = ".caswit-claim"


def claim_path(dest: str | Path) -> Path:
    dest = Path(os.path.abspath(dest))
    return dest.with_name(f".{dest.name}{SUFFIX}")


def read_owner(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def take(dest: str | Path, option: str = "--out") -> Path:
    """Claim ``dest`` for this process (the caller holds its folder); raise if a live run holds it.

    Returns the claim file's path, to pass to :func:`release`.
    """
    path = claim_path(dest)
    me = atomic.process_token()
    for _ in range(30):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = read_owner(path)
            if owner is None and _young(path):  # being written by its creator right now
                time.sleep(0.1)
                continue
            if owner == me:
                raise OutputError(f"{option} {dest}: named twice among the outputs") from None
            if owner is not None and atomic.owner_alive(path.parent, owner):
                raise OutputError(
                    f"{option} {dest}: another run is writing it ({atomic.describe_owner(path.parent, owner)}); "
                    "wait for it to finish or stop it"
                ) from None
            atomic.sweep_stale(path.parent)  # the owner is gone: its claim and litter go too
            if path.exists() and read_owner(path) in (owner, None):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"token": me, "dest": str(dest)}, f)
        return path
    raise OutputError(f"{option} {dest}: could not claim it (another run keeps claiming it)")


def _young(path: Path, seconds: float = 2.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def release(path: Path) -> None:
    """Remove a claim this process holds."""
    if read_owner(path) == atomic.process_token():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_claims_of(folder: Path, token: str) -> list[Path]:
    """Remove the claims in ``folder`` owned by ``token`` (whose owner is proved dead)."""
    removed = []
    for p in folder.glob(f".*{SUFFIX}"):
        if read_owner(p) == token:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed
