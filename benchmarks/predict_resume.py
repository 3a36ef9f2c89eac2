"""Benchmark of resumable predict jobs on a generated mosaic (default 8192 x 8192, caswit-nano).

Reports:

(a) resume overhead: wall time of a run killed (SIGKILL) once about half of
    its units are done, plus the wall time of its ``--resume``, over the wall
    time of an uninterrupted run. Goal <= 1.05. Printed twice: with the
    interpreter start-up of each process, and counting from the call of
    ``predict()`` only.
(b) assembly share: the finalize step (parts -> COG class and confidence
    rasters, commit, job removal) as a share of the uninterrupted run.
    Goal <= 5 %.
(c) peak RSS of the uninterrupted run (the process and its readers), on this
    mosaic and on one of a quarter of its area: bounded, flat in the mosaic
    size. With ``--baseline SRC`` (a source tree of another caswit-geo
    version, e.g. a worktree of the main branch) the same run of that
    version is measured beside it: RSS and wall-time ratios.

Every run is its own subprocess (``--measure``) that reads its own
``ru_maxrss``. Mosaics are grids of 1024 px GeoTIFFs (see
``predict_pipeline.py``); random-weight checkpoints (speed and memory do
not depend on the weights). Usage::

    python benchmarks/predict_resume.py                       # 8192 px, the figures of the issue
    python benchmarks/predict_resume.py --size 2048           # a quick smoke run
    python benchmarks/predict_resume.py --baseline ../main    # compare with another version
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def measure(args: dict) -> dict:
    """One predict() in this process (a fresh interpreter): wall time, phases, peak RSS."""
    import torch

    from caswit_geo.engine.predict import PredictConfig, predict

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    print("started", flush=True)  # the parent times a killed run from here
    kwargs = dict(inputs=[args["mosaic"]], out=args["out"], weights=args["weights"], batch_size=args["batch_size"],
                  workers=args["workers"], overwrite=True, progress=False, confidence=args["confidence"])
    if args.get("resume"):
        kwargs["resume"] = True
    if args.get("unit_size"):
        kwargs["unit_size"] = args["unit_size"]
    t0 = time.perf_counter()
    res = predict(PredictConfig(**kwargs))
    seconds = time.perf_counter() - t0
    return dict(
        seconds=seconds, phases=getattr(res, "phases", {}), tiles=res.tiles, units=getattr(res, "units", None),
        units_run=getattr(res, "units_run", None),
        rss_self_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_children_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


def _env(src: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(src))


def run_measure(args: dict, src: Path = REPO) -> tuple[dict, float]:
    """``measure`` in a subprocess; (its report, wall seconds with interpreter start-up)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(args)], capture_output=True, text=True,
                          env=_env(src))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def killed_run(args: dict, job_units: Path, total_units: int, fraction: float) -> tuple[float, float, int]:
    """Start a run, SIGKILL it once ``fraction`` of its units are done.

    Returns (wall seconds with start-up, seconds since predict() started, units done at the kill).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--measure", json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(REPO))
    assert proc.stdout.readline().strip() == "started", proc.stderr.read()
    t_started = time.perf_counter()
    target = max(1, round(fraction * total_units))
    while True:
        done = len(list(job_units.glob("u??????.tif"))) if job_units.exists() else 0  # parts, not pyramids
        if done >= target or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t_end = time.perf_counter()
    return t_end - t0, t_end - t_started, done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=8192, help="mosaic side in pixels (a multiple of 1024)")
    p.add_argument("--model", default="caswit-nano")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="reader processes of predict")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    p.add_argument("--unit-size", type=int, default=0, help="unit side in pixels (0 = predict's default)")
    p.add_argument("--kill-at", type=float, default=0.5, help="share of the units done when the run is killed")
    p.add_argument("--baseline", type=Path, default=None, help="source tree of another caswit-geo to compare (c) with")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(json.loads(a.measure))))
        return
    sys.path.insert(0, str(HERE))
    from predict_pipeline import make_checkpoint, make_mosaic

    work = Path(a.workdir or tempfile.mkdtemp(prefix="caswit-resume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    ckpt = work / f"{a.model}.safetensors"
    if not ckpt.exists():
        make_checkpoint(ckpt, a.model)
    mosaics = {}
    for size in (a.size // 2, a.size):
        mosaics[size] = work / f"mosaic_{size}"
        if not mosaics[size].exists():
            make_mosaic(mosaics[size], size)

    def args_for(size: int, name: str, **extra) -> dict:
        out = work / name
        out.mkdir(exist_ok=True)
        return dict(mosaic=str(mosaics[size]), out=str(out / "map.tif"), confidence=str(out / "conf.tif"),
                    weights=str(ckpt), batch_size=a.batch_size, workers=a.workers, threads=a.threads,
                    unit_size=a.unit_size, **extra)

    # uninterrupted runs: the reference for (a), (b) on the large mosaic, (c) at both sizes
    small, _ = run_measure(args_for(a.size // 2, "small"))
    full, full_wall = run_measure(args_for(a.size, "full"))
    print(f"uninterrupted {a.size}^2: {full['tiles']} tiles, {full['units']} units, {full['seconds']:.1f} s "
          f"({full_wall:.1f} s with start-up) [phases {', '.join(f'{k} {v:.2f}' for k, v in full['phases'].items())}]",
          flush=True)

    # (a) killed at about half, then resumed
    resumed_args = args_for(a.size, "resumed")
    job_units = Path(resumed_args["out"]).with_name(".map.tif.caswit-job") / "units"
    kill_wall, kill_s, done = killed_run(resumed_args, job_units, full["units"], a.kill_at)
    resume, resume_wall = run_measure(dict(resumed_args, resume=True))
    print(f"killed after {kill_s:.1f} s with {done} of {full['units']} units done; resume {resume['seconds']:.1f} s "
          f"({resume['units_run']} units)", flush=True)
    print(f"(a) (killed + resume) / uninterrupted = {(kill_s + resume['seconds']) / full['seconds']:.3f} "
          f"(from predict(); with interpreter start-up: {(kill_wall + resume_wall) / full_wall:.3f}); goal <= 1.05")

    # (b) assembly share of the uninterrupted run
    phases = full["phases"]
    assemble = sum(phases.get(k, 0.0) for k in ("assemble", "vector", "preview", "commit"))
    print(f"(b) assembly (parts -> COG, commit) {assemble:.2f} s of {full['seconds']:.1f} s = "
          f"{100 * assemble / full['seconds']:.1f} %; goal <= 5 %")

    # (c) peak RSS, flat in the mosaic size; against another version when asked
    def rss(r: dict) -> str:
        return f"{r['rss_self_mb']:.0f} MB + readers {r['rss_children_mb']:.0f} MB"

    print(f"(c) peak RSS {a.size}^2: {rss(full)}; {a.size // 2}^2: {rss(small)}; ratio "
          f"{full['rss_self_mb'] / small['rss_self_mb']:.3f} (main process)")
    if a.baseline is not None:
        base_args = args_for(a.size, "baseline")
        base_args.pop("unit_size")
        base, _ = run_measure(base_args, src=a.baseline.resolve())
        print(f"(c) baseline {a.baseline}: {rss(base)}, {base['seconds']:.1f} s; this version / baseline: RSS "
              f"{full['rss_self_mb'] / base['rss_self_mb']:.3f}, wall {full['seconds'] / base['seconds']:.3f}")
    (work / "results.json").write_text(json.dumps(dict(full=full, small=small, resume=resume, killed_s=kill_s,
                                                       killed_units=done), indent=2))


if __name__ == "__main__":
    main()
