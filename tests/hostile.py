"""Harness of the hostile-input suite: one table row per bad input, one contract for all.

A :class:`Case` builds its fixtures in a fresh folder, runs one command (in
this process through ``caswit_geo.cli.main``, or as a real subprocess when
signals, start-up or terminal behaviour matter) and checks the contract every
command owes a user who gave it bad input:

- the exit code (1 for a bad file or value, 2 for a usage error);
- exactly one error line on stderr (warnings may precede it), that names the
  file or option and the problem (``expect``: substrings, all required), and
  is not an "internal error" (bad input is never a bug);
- no traceback, and nothing unprintable (control characters other than tab,
  newline and carriage return: a terminal escape read from a file must not
  reach the terminal);
- nothing written, nothing replaced, nothing removed: the folder holds the
  same files with the same bytes afterwards (``changes`` lists the paths a
  case may legitimately create, e.g. a run directory's resumable state).

A hostile input that a command must *accept* (a class name holding escape
sequences, a rotated raster) is a case with ``code=0``: then no error line
may appear, ``expect`` is looked for in stdout and stderr, and ``changes``
names the outputs it writes; a case that checks a hostile situation is
*handled* (a resume after a kill, litter swept, a gap scored) adds its
``check``. ``patch`` injects a fault in-process (e.g. a write failing with
ENOSPC) through a MonkeyPatch undone after the run; ``inject`` wraps the
command in a context manager (a signal at a given step, a write that fails).

The suites (``tests/**/test_hostile_*.py``) are tables of cases; the item
numbers are those of the hostile-input review (issue "Nothing lost, nothing
trusted").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One hostile input and what the command must answer.

    Args:
        id: short unique name, prefixed with the review item, e.g. ``"3-eval-over-images"``.
        argv: command line after ``caswit-geo``; ``{tmp}`` in an argument is the case folder.
        setup: builds the fixtures in the case folder (may return extra format fields for argv).
        expect: substrings the error line must contain (file or option name, and the problem).
        code: expected exit code.
        subprocess: run ``python -m caswit_geo`` in a child process instead of in-process.
        timeout: seconds before a subprocess case counts as hung.
        changes: glob patterns (relative to the case folder) that may change.
        check: extra assertion on (folder, stdout, stderr) after the run.
        patch: in-process fault injection, ``patch(monkeypatch, folder)`` before the run.
        inject: in-process cases: ``inject(folder)`` is a context manager entered around the command.
    """

    id: str
    argv: list[str]
    setup: Callable[[Path], dict | None] | None = None
    expect: tuple[str, ...] = ()
    code: int = 1
    subprocess: bool = False
    timeout: float = 120.0
    changes: tuple[str, ...] = ()
    check: Callable[[Path, str, str], None] | None = None
    marks: tuple = field(default_factory=tuple)
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    inject: Callable[[Path], contextlib.AbstractContextManager] | None = None

    def param(self):
        return pytest.param(self, id=self.id, marks=list(self.marks))


def snapshot(folder: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 (or ``<dir>``) of everything under ``folder``, hidden files included."""
    ignored = {p for pattern in ignore for p in folder.glob(pattern)}
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            if p in ignored or any(q in p.parents for q in ignored):
                continue
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "<link>" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "<dir>"
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "<special>"
    return out


def run_case(case: Case, folder: Path, capsys=None) -> tuple[int, str, str]:
    """Build, run and check ``case`` in ``folder``; returns (exit code, stdout, stderr)."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"tmp": str(folder)}
    if case.setup is not None:
        extra = case.setup(folder)
        if isinstance(extra, dict):
            fields.update(extra)
    argv = [a.format(**fields) for a in case.argv]
    before = snapshot(folder, case.changes)
    if case.subprocess:
        env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
        proc = subprocess.run(
            [sys.executable, "-m", "caswit_geo", *argv],
            cwd=folder, env=env, capture_output=True, text=True, timeout=case.timeout,
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        from caswit_geo.cli import main

        cwd = os.getcwd()
        os.chdir(folder)
        try:
            with pytest.MonkeyPatch.context() as mp:
                if case.patch is not None:
                    case.patch(mp, folder)
                with case.inject(folder) if case.inject is not None else contextlib.nullcontext():
                    with pytest.raises(SystemExit) as exc:
                        main(argv)
        finally:
            os.chdir(cwd)
        out, err = capsys.readouterr() if capsys is not None else ("", "")
        code = exc.value.code
    assert_contract(case, code, out, err)
    after = snapshot(folder, case.changes)
    assert after == before, f"{case.id}: files changed: {_diff(before, after)}"
    if case.check is not None:
        case.check(folder, out, err)
    return code, out, err


def assert_contract(case: Case, code: int, out: str, err: str) -> None:
    assert code == case.code, f"{case.id}: exit code {code}, expected {case.code}; stderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out, f"{case.id}: traceback shown: {err!r}"
    unprintable = _UNPRINTABLE.search(out + err)
    assert unprintable is None, f"{case.id}: unprintable {unprintable.group()!r} in the output: {(out + err)!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 0:
        failed = [line for line in lines if line.startswith("caswit-geo: ") and "warning:" not in line]
        assert not failed, f"{case.id}: error reported: {failed!r}"
        for text in case.expect:
            assert text in out + err, f"{case.id}: {text!r} missing from the output {(out + err)!r}"
        return
    errors = [line for line in lines if not line.startswith("caswit-geo: warning:")]
    assert errors, f"{case.id}: no error line on stderr"
    if case.code == 2 and len(errors) > 1:  # usage errors: the parser's usage line, then its message
        errors = errors[-1:]
    assert len(errors) == 1, f"{case.id}: expected one error line, got {errors!r}"
    assert "internal error" not in errors[0], f"{case.id}: bad input reported as a bug: {errors[0]!r}"
    for text in case.expect:
        assert text in errors[0], f"{case.id}: {text!r} missing from {errors[0]!r}"


_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"
