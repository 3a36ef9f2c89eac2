"""The outputs of one command: checked and claimed at start, committed together at the end.

Every command that writes files goes through an :class:`OutputSet`:

1. ``add`` each destination when the command starts, before any work: it
   must not be a folder (unless declared one), must not exist unless
   ``--overwrite``, must never be one of the command's inputs (not even with
   ``--overwrite``), its folder must be writable, and no other live run may
   hold it (a claim, see ``claims.py``);
2. write each output to ``temp(dest)``, a hidden name beside it;
3. ``commit()`` renames them all into place at the end: new files with a
   no-replace rename (a destination that appeared meanwhile is never
   replaced), replaced ones only after every new file is ready, so that the
   outputs appear together or not at all; on any failure, or when the
   command stops early (error, Ctrl-C, SIGTERM), ``abort()`` removes the
   temporaries and the claims and leaves the destinations as they were.

A destination whose folder does not exist yet (``create_parents``) has its
temporary in the nearest existing folder and its claim on the topmost missing
folder; the missing folders are created at commit (and removed again on
rollback). A ``clear`` destination that the command ends up not writing is
removed at commit, so that no file of an older run outlives it.

Litter of a killed run (kill -9, power loss) is removed by the next run that
writes in the same folder (``safeio/sweep.py``).

A resumable job (``predict``) passes ``job=`` its job folder: its claims are
job claims (``claims.py``), shared by the job's processes and kept when one
process stops, until the job commits.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from caswit_geo.core.errors import OutputError
from caswit_geo.safeio import claims
from caswit_geo.safeio.files import BACKUP_SUFFIX, check_name_length, remove_path, rename_noreplace, temp_path
from caswit_geo.safeio.sweep import hold_folder, release_folder


@dataclass
class _Dest:
    path: Path
    option: str
    folder: bool
    anchor: Path  # the existing folder its temporary lives in (its parent, or the nearest existing ancestor)
    clear: bool = False
    update: bool = False  # an existing file that the command rewrites from a copy (a GeoPackage's other layers)
    claim: Path | None = None
    claim_fresh: bool = False  # this process created the (job) claim
    temp: Path | None = None
    backup: Path | None = None
    committed: bool = False


# folders no command output belongs in: device and kernel trees (and everything under them) ...
SYSTEM_TREES = ("/dev", "/proc", "/sys")
# ... and the system's own folders themselves (their subfolders, e.g. /var/tmp, are fine)
SYSTEM_FOLDERS = frozenset({"/", "/bin", "/sbin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/usr",
                            "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/var", "/run"})


def system_folder(folder: str | Path) -> str | None:
    """The system folder ``folder`` resolves to or lies in (see ``SYSTEM_TREES``), or None."""
    real = os.path.realpath(folder)
    for tree in SYSTEM_TREES:
        if real == tree or real.startswith(tree + "/"):
            return tree
    return real if real in SYSTEM_FOLDERS else None


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def claim_point(path: str | Path) -> Path:
    """What claims ``path``: itself when its folder exists, else its topmost missing ancestor."""
    path = _key(Path(path))
    top = path
    while not top.parent.exists() and top.parent != top.parent.parent:
        top = top.parent
    return top


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class OutputSet:
    """Destinations of one command (see the module docstring).

    Args:
        overwrite: existing destinations may be replaced (``--overwrite``).
        inputs: files (or folders) the command reads; no output may replace
            one, and a folder output may not contain one.
    """

    def __init__(
        self, *, overwrite: bool = False, inputs: Iterable[str | Path] = (), job: str | Path | None = None
    ) -> None:
        self.overwrite = overwrite
        self.job = None if job is None else Path(os.path.abspath(job))
        self.inputs = [Path(p) for p in inputs]
        self._input_ids: set[tuple[int, int]] | None = None
        self.dests: dict[Path, _Dest] = {}
        self.folders: list[Path] = []  # folders whose liveness lock we hold
        self._claims: dict[Path, Path] = {}  # claimed path -> its claim file
        self._created: list[Path] = []  # folders made at commit, outermost first
        self.closed = False

    # -- start: checks and claims --------------------------------------------

    def add(
        self,
        dest: str | Path,
        option: str = "--out",
        *,
        folder: bool = False,
        claim: bool = True,
        create_parents: bool = False,
        clear: bool = False,
        update: bool = False,
    ) -> Path:
        """Check and claim ``dest`` (see the module docstring); returns it as a Path.

        ``folder``: the output is a folder written as a whole (staged, then
        renamed). ``claim=False`` for files inside a folder already claimed,
        or sidecars of a claimed file.
        ``create_parents``: its missing folders are created at commit.
        ``clear``: removed at commit when this command does not write it.
        ``update``: it may exist without ``--overwrite``: the command writes an
        updated copy of it (what it holds besides the command's part stays).
        """
        dest, key, point = self._check(dest, option, folder, create_parents, update)
        self._hold(point.parent, option)
        entry = _Dest(dest, option, folder, point.parent, clear, update)
        if claim and self.job is not None:
            entry.claim, entry.claim_fresh = claims.take_for_job(dest, option, self.job)
        elif claim:
            entry.claim = self._claims.get(point) or claims.take(point, option)
            self._claims[point] = entry.claim
        self.dests[key] = entry
        return dest

    def check(
        self, dest: str | Path, option: str = "--out", *, folder: bool = False, create_parents: bool = False,
        update: bool = False,
    ) -> Path:
        """The checks of :meth:`add` that change nothing (no lock, no claim, no sweep)."""
        return self._check(dest, option, folder, create_parents, update)[0]

    def _check(self, dest: str | Path, option: str, folder: bool, create_parents: bool,
               update: bool = False) -> tuple[Path, Path, Path]:
        """``(dest, key, claim point)`` after :meth:`check`'s checks."""
        dest = Path(dest)
        check_name_length(dest, option)
        key = _key(dest)
        if key in self.dests:
            raise OutputError(f"{option} {dest}: named twice among the outputs")
        if dest.is_dir() and not folder:
            raise OutputError(f"{option} {dest}: is a folder")
        if dest.exists() and folder and not dest.is_dir():
            raise OutputError(f"{option} {dest}: exists and is not a folder")
        self._check_not_input(dest, option, folder)
        if dest.exists() and not self.overwrite and not update:
            raise OutputError(f"{option} {dest}: exists (pass --overwrite to replace it)")
        if dest.exists() and not dest.is_dir() and not dest.is_file():
            raise OutputError(f"{option} {dest}: exists and is a device, FIFO or socket, not a file")
        point = claim_point(key) if create_parents else key
        anchor = point.parent
        system = system_folder(anchor)
        if system is not None:
            raise OutputError(f"{option} {dest}: {system} is a system folder, not a place for outputs; "
                              "write them to a folder of yours")
        if not anchor.is_dir():
            if anchor.exists():
                raise OutputError(f"{option}: {anchor} is not a folder")
            raise OutputError(f"{option}: folder {dest.parent} does not exist")
        return dest, key, point

    def claim(self, path: str | Path, option: str = "--out") -> None:
        """Claim ``path`` (e.g. a folder this command fills) without making it a destination."""
        point = claim_point(path)
        if point not in self._claims:
            self._hold(point.parent, option)
            self._claims[point] = claims.take(point, option)

    def _hold(self, folder: Path, option: str) -> None:
        if folder in self.folders:
            return
        try:
            hold_folder(folder)
        except OSError as e:
            raise OutputError(f"{option}: cannot write in {folder} ({e.strerror or e})") from None
        self.folders.append(folder)

    def _check_not_input(self, dest: Path, option: str, folder: bool) -> None:
        if not dest.exists() or not self.inputs:
            return
        if self._input_ids is None:
            self._input_ids = {i for i in map(_file_id, self.inputs) if i is not None}
        targets = [dest]
        if folder:  # replacing a folder replaces everything in it
            top = _key(dest).resolve()
            targets += [p for p in self.inputs if top in _key(p).resolve().parents]
        for target in targets:
            if _file_id(target) in self._input_ids or (folder and target is not dest):
                name = target if target is dest else f"{dest} (it holds the input {target})"
                raise OutputError(f"{option} {name}: an output may never replace an input, even with --overwrite")

    # -- work: temporaries -----------------------------------------------------

    def temp(self, dest: str | Path, suffix: str | None = None) -> Path:
        """The temporary path to write ``dest`` to (a file, or a folder the caller creates)."""
        entry = self.dests.get(_key(Path(dest)))
        if entry is None:
            raise KeyError(f"{dest} is not among the outputs")
        if entry.temp is None:
            entry.temp = temp_path(entry.anchor / entry.path.name, suffix)
        return entry.temp

    # -- end: commit or abort ---------------------------------------------------

    def commit(self) -> list[Path]:
        """Rename every written temporary onto its destination, all or nothing; returns the destinations."""
        ready = [d for d in self.dests.values() if d.temp is not None and os.path.lexists(d.temp)]
        cleared = [d for d in self.dests.values() if d.clear and d not in ready and os.path.lexists(d.path)]
        try:
            for d in ready + cleared:  # move replaced outputs aside first: nothing is lost if a rename fails
                if (self.overwrite or d.update) and os.path.lexists(d.path):
                    d.backup = temp_path(_key(d.path), BACKUP_SUFFIX)
                    os.rename(d.path, d.backup)
            for d in ready:
                self._make_parents(d.path.parent)
                try:
                    rename_noreplace(d.temp, d.path)
                except FileExistsError:
                    raise OutputError(
                        f"{d.option} {d.path}: appeared while this run worked; not replaced (pass --overwrite)"
                    ) from None
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise OutputError(f"no space left on {d.path.parent}") from None
                    raise
                d.committed = True
        except BaseException:
            self._roll_back(ready + cleared)
            self.abort()
            raise
        for d in ready + cleared:
            if d.backup is not None:
                remove_path(d.backup)
        self._release(committed=True)
        return [d.path for d in ready]

    def _make_parents(self, folder: Path) -> None:
        missing = []
        folder = _key(folder)
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            os.mkdir(f)
            self._created.append(f)

    def _roll_back(self, ready: list[_Dest]) -> None:
        for d in ready:
            if d.committed:
                with contextlib.suppress(OSError):
                    os.rename(d.path, d.temp)
                d.committed = False
            if d.backup is not None and os.path.lexists(d.backup):
                with contextlib.suppress(OSError):
                    os.rename(d.backup, d.path)
                d.backup = None
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._created.clear()

    def abort(self) -> None:
        """Remove every temporary and claim; the destinations stay as they were."""
        for d in self.dests.values():
            if d.temp is not None and not d.committed:
                remove_path(d.temp)
        self._release()

    def _release(self, committed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for claim in self._claims.values():  # a command's own claims
            claims.release(claim)
        for d in self.dests.values():  # a job's claims
            if d.claim is None or self.job is None:
                continue
            if committed or (d.claim_fresh and not self.job.is_dir()):
                # the job is over, or never came to be: else its claims outlive this process
                claims.release_job(d.claim, self.job)
        for folder in self.folders:
            release_folder(folder)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            self.abort()
