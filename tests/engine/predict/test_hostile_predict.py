"""Hostile inputs of ``predict``: runs that collide, jobs that differ, failed runs, bad option values.

Review items 4 (two runs, one destination) and 5 (failed runs leave
outputs or litter), and the values of the job options. Every case: exit
code, one error line naming the file or option, no traceback, nothing
changed (``hostile.py``).
"""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from caswit_geo.engine.predict import finalize as finalize_module
from caswit_geo.safeio.liveness import MARK, live_owners
from tests.helpers import interrupted_job, nano_checkpoint, predict_inputs, run_cli, run_predict
from tests.hostile import REPO, Case, run_case

T = 128
_PROCS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def stop_holders():
    yield
    while _PROCS:
        proc = _PROCS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


checkpoint, inputs = nano_checkpoint, predict_inputs


HOLDER = textwrap.dedent(
    """
    import sys, time
    from caswit_geo.engine.predict import units
    units.predict_probabilities = lambda *a, **k: time.sleep(600)  # a run that is busy for a long time
    from caswit_geo.engine.predict import PredictConfig, predict
    predict(PredictConfig(inputs=[sys.argv[1]], out=sys.argv[2], weights=sys.argv[3], workers=0, progress=False))
    """
)


def live_run(folder: Path) -> None:
    """Another predict to map.tif, alive and busy while the case runs."""
    inputs(folder)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / "in.tif"), str(folder / "map.tif"),
                             str(folder / "nano.safetensors")], env=env, stderr=subprocess.PIPE)
    _PROCS.append(proc)
    job = folder / ".map.tif.caswit-job"
    deadline = time.time() + 120
    while not (job.is_dir() and live_owners(job)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the other run did not start"
        time.sleep(0.05)


def changed_checkpoint(folder: Path) -> None:
    interrupted_job(folder)
    checkpoint(folder, "other.safetensors", seed=1)


def touched_input(folder: Path) -> None:
    interrupted_job(folder)
    st = os.stat(folder / "in.tif")
    os.utime(folder / "in.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


BASE = ["predict", "{tmp}/in.tif", "--out", "{tmp}/map.tif", "--weights", "{tmp}/nano.safetensors", "--workers", "0",
        "--quiet", "--unit-size", str(T)]
JOB = (".map.tif.caswit-job",)  # the other run's job folder changes while the case runs

# 4: two runs to one destination; the three cases meet the same live run (one process started)
LIVE_CASES = [
    Case("4-predict-live-run-holds-the-destination", BASE,
         expect=("--out", "map.tif", "another run is writing it", "caswit-geo pid"), changes=JOB),
    Case("4-predict-overwrite-never-takes-a-live-run", BASE + ["--overwrite"],
         expect=("--out", "map.tif", "another run is writing it"), changes=JOB),
    Case("4-predict-resume-of-a-live-job", BASE + ["--resume"],
         expect=("--resume", "another run is working on this job", "caswit-geo pid"), changes=JOB),
]

CASES = [
    Case("4-predict-interrupted-job-needs-resume-or-overwrite", BASE, interrupted_job,
         expect=("--out", "map.tif", "interrupted job exists", "--resume", "--overwrite")),
    # a job continues only as it was planned
    Case("job-resume-other-checkpoint", BASE[:5] + ["{tmp}/other.safetensors"] + BASE[6:] + ["--resume"],
         changed_checkpoint, expect=("--resume", "--weights", "other.safetensors", "not the checkpoint")),
    Case("job-resume-other-overlap", BASE + ["--resume", "--overlap", "32"], interrupted_job,
         expect=("--resume", "--overlap is 32", "used 0")),
    Case("job-resume-input-changed", BASE + ["--resume"], touched_input,
         expect=("--resume", "in.tif", "changed since the job started")),
    Case("job-shard-other-confidence", BASE + ["--shard", "1/2", "--confidence", "{tmp}/conf.tif"],
         interrupted_job, expect=("--shard 1/2", "--confidence")),
    Case("job-shard-other-count", BASE + ["--shard", "1/3"], interrupted_job,
         expect=("--shard 1/3", "planned for 2 shard(s)")),
    Case("job-finalize-with-units-left", BASE + ["--finalize"], interrupted_job,
         expect=("--finalize", "units are not done", "shard 1/2")),
    Case("job-finalize-without-a-job", BASE + ["--finalize"], inputs, expect=("--finalize", "no job to assemble")),
    # values of the job options
    Case("value-shard-out-of-range", BASE + ["--shard", "3/3"], inputs, expect=("--shard 3/3", "0 <= I < N")),
    Case("value-shard-not-a-fraction", BASE + ["--shard", "two"], inputs, expect=("--shard two", "expected I/N")),
    Case("value-shard-zero", BASE + ["--shard", "0/0"], inputs, expect=("--shard 0/0",)),
    Case("value-format", BASE + ["--format", "png"], inputs, expect=("--format", "cog, gtiff", "png")),
    Case("value-stop-after", BASE + ["--stop-after", "soon"], inputs, expect=("--stop-after soon", "duration")),
    Case("value-unit-size", BASE + ["--unit-size", "0"], inputs, expect=("--unit-size", ">= 1")),
    Case("value-finalize-and-shard", BASE + ["--finalize", "--shard", "0/2"], inputs, expect=("--finalize", "--shard")),
    Case("value-finalize-and-no-finalize", BASE + ["--finalize", "--no-finalize"], inputs,
         expect=("--finalize", "--no-finalize")),
    Case("value-dry-run-checks-too", BASE + ["--dry-run", "--shard", "5/2"], inputs, expect=("--shard 5/2",)),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_predict(case, tmp_path, capsys):
    run_case(case, tmp_path / "case", capsys)


def test_hostile_predict_against_a_live_run(tmp_path, capsys):
    live_run(tmp_path)
    for case in LIVE_CASES:
        run_case(case, tmp_path, capsys)


# -- 4 and 5 with a failure injected during the run ------------------------------------------------------


def _argv(folder: Path, *extra) -> list[str]:
    return [a.format(tmp=folder) for a in BASE] + [str(e) for e in extra]


def test_5_a_preview_failure_leaves_no_output_and_the_job_to_finish(tmp_path, capsys, monkeypatch):
    inputs(tmp_path)

    def no_space(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finalize_module, "write_preview", no_space)
    code, _, err = run_cli(_argv(tmp_path, "--preview", tmp_path / "map.png", "--confidence", tmp_path / "conf.tif"),
                           capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"no space left on {tmp_path}" in err and "units are done and kept in" in err and "--resume" in err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "map.tif" not in names and "conf.tif" not in names and not [n for n in names if ".part" in n]
    assert ".map.tif.caswit-job" in names  # every unit is done: only the assembly is left
    monkeypatch.undo()
    code, _, err = run_cli(_argv(tmp_path, "--resume", "--confidence", tmp_path / "conf.tif"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.qml", "conf.tif", "in.tif", "map.qml", "map.tif",
                                                          "map.tif.aux.xml", "nano.safetensors"]


def test_4_a_destination_that_appears_meanwhile_is_not_replaced(tmp_path, capsys, monkeypatch):
    inputs(tmp_path)
    real = finalize_module.write_raster

    def someone_else_writes_it(source, dest, **kw):
        (tmp_path / "map.tif").write_bytes(b"another tool's map")
        real(source, dest, **kw)

    monkeypatch.setattr(finalize_module, "write_raster", someone_else_writes_it)
    code, _, err = run_cli(_argv(tmp_path), capsys)
    assert code == 1 and "map.tif: appeared while this run worked; not replaced" in err
    assert (tmp_path / "map.tif").read_bytes() == b"another tool's map"
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name or p.suffix == ".lock"]


def test_5_litter_of_a_dead_run_is_removed_and_a_live_run_s_is_not(tmp_path):
    """kill -9 leaves temporaries named by the dead process's token; the next run removes them."""
    inputs(tmp_path)
    dead = "deadhost-999999-abcdef"
    litter = [tmp_path / f".map.tif{MARK}{dead}.0.part.tif", tmp_path / f".map.tif{MARK}{dead}.1.part.tif.ovr.tmp",
              tmp_path / f"{MARK}{dead}.lock"]  # a lock nobody holds: its owner is gone
    for p in litter:
        p.write_bytes(b"half")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from caswit_geo.safeio.outputs import OutputSet
        outs = OutputSet()
        d = outs.add(Path({str(tmp_path / 'other.tif')!r}))
        outs.temp(d).write_bytes(b"live")
        print("ready", flush=True)
        time.sleep(600)
    """)], env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    _PROCS.append(holder)
    assert holder.stdout.readline().strip() == "ready"
    live = [p for p in tmp_path.iterdir() if p.name.startswith(".other.tif")]
    run_predict(tmp_path / "nano.safetensors", [tmp_path / "in.tif"], tmp_path / "map.tif")
    assert not any(p.exists() for p in litter)
    assert live and all(p.exists() for p in live)  # the live run's temporary is untouched
    assert (tmp_path / "map.tif").exists()
