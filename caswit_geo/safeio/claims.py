"""Claims on destinations: one run writes a given output at a time.

A claim is a small hidden file ``.<name>.caswit-claim`` beside the
destination, created exclusively (``O_EXCL``) and naming its owner's process
token. The owner holds its liveness lock in the same folder (see
``liveness.py``) for as long as the claim exists, so a claim whose owner cannot
be proved alive is stale and is taken over. Claims are taken when a command
starts, before any work, so that a second run stops at once with a message
saying who holds the destination, instead of replacing the first run's
output hours later.

A *job claim* belongs to a resumable job (``predict``'s job folder) rather
than to one process: it names the job folder, every process of that job
shares it, and it holds for as long as the job folder exists, across
interruptions, so that no other run writes the destination of an
interrupted job. It ends when the job commits its outputs or is discarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from caswit_geo.core.errors import OutputError
from caswit_geo.safeio import liveness

SUFFIX = ".caswit-claim"


def claim_path(dest: str | Path) -> Path:
    dest = Path(os.path.abspath(dest))
    return dest.with_name(f".{dest.name}{SUFFIX}")


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_owner(path: Path) -> str | None:
    """The process token of a claim (None for job claims and unreadable files)."""
    data = _read(path)
    token = data.get("token") if data else None
    return token if isinstance(token, str) else None


def read_job(path: Path) -> str | None:
    """The job folder a job claim names (None for process claims)."""
    data = _read(path)
    job = data.get("job") if data else None
    return job if isinstance(job, str) else None


def take(dest: str | Path, option: str = "--out") -> Path:
    """Claim ``dest`` for this process (the caller holds its folder); raise if a live run holds it.

    Returns the claim file's path, to pass to :func:`release`.
    """
    return _take(dest, option, None)[0]


def take_for_job(dest: str | Path, option: str, job: str | Path) -> tuple[Path, bool]:
    """Claim ``dest`` for the job of folder ``job`` (the caller holds the destination's folder).

    Another process of the same job shares the claim. Returns (claim path,
    True when this call created it).
    """
    return _take(dest, option, os.path.abspath(job))


def _take(dest: str | Path, option: str, job: str | None) -> tuple[Path, bool]:
    path = claim_path(dest)
    me = liveness.process_token()
    for _ in range(30):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            data = _read(path)
            if data is None and _young(path):  # being written by its creator right now
                time.sleep(0.1)
                continue
            held_job = data.get("job") if data else None
            if isinstance(held_job, str):
                if job is not None and held_job == job:
                    return path, False
                why = _job_claim_holds(path.parent, data)
                if why:
                    raise OutputError(f"{option} {dest}: {why}") from None
                _remove_if_unchanged(path, data)
                continue
            owner = read_owner(path)
            if owner == me:
                raise OutputError(f"{option} {dest}: named twice among the outputs") from None
            if owner is not None and liveness.owner_alive(path.parent, owner):
                raise OutputError(
                    f"{option} {dest}: another run is writing it ({liveness.describe_owner(path.parent, owner)}); "
                    "wait for it to finish or stop it"
                ) from None
            remove_claims_of(path.parent, owner)  # the owner is gone: its claims go (its litter: sweep.py)
            if path.exists() and read_owner(path) in (owner, None) and read_job(path) is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        body = {"token": me, "dest": str(dest)} if job is None else {"job": job, "created_by": me, "dest": str(dest)}
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        return path, True
    raise OutputError(f"{option} {dest}: could not claim it (another run keeps claiming it)")


def _job_claim_holds(folder: Path, data: dict) -> str | None:
    """Why the job claim ``data`` still holds its destination, or None when it is stale.

    It holds while its job folder exists (the job may be interrupted and
    resumed later), and while the process that created it is alive (it
    takes its claims before it creates the job folder).
    """
    job = Path(data["job"])
    if job.is_dir():
        live = liveness.live_owners(job)
        if live:
            return f"another run is writing it ({liveness.describe_owner(job, live[0])}); wait for it to finish or stop it"
        # the job may have other outputs and inputs than the command that meets it: only its own
        # command may continue or discard it (--overwrite here would not, and must not, discard it)
        return (f"an interrupted predict job holds it ({job}); continue that job with the command that "
                "started it and --resume, or write to another destination")
    creator = data.get("created_by")
    if isinstance(creator, str) and liveness.owner_alive(folder, creator):
        return f"another run is writing it ({liveness.describe_owner(folder, creator)}); wait for it to finish or stop it"
    return None


def _remove_if_unchanged(path: Path, data: dict) -> None:
    if _read(path) == data:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _young(path: Path, seconds: float = 2.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def release(path: Path) -> None:
    """Remove a claim this process holds."""
    if read_owner(path) == liveness.process_token():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def release_job(path: Path, job: str | Path) -> None:
    """Remove a job claim of the job of folder ``job`` (the job committed or was discarded)."""
    if read_job(path) == os.path.abspath(job):
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
