"""How fast a training run stops on a signal, and that it resumes, on this machine's device.

    python benchmarks/train_signals.py [--device cuda] [--workers 2]

Trains caswit-nano on a generated two-image ``tiles`` set, in a child
process, and stops it twice in the middle of epoch 1: SIGTERM to the process
(a job scheduler) and SIGINT to its process group (Ctrl-C in a terminal,
DataLoader workers included). Prints, per signal, the exit code, the
seconds from the signal to the exit, and the resume's exit code, time and
final state; then predicts with the resumed run's best checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_train import make_tiles_root, stripes  # noqa: E402

SLOW_STEPS = """
import sys, time
from caswit_geo.engine.train.optim import CosineSchedule
from caswit_geo.cli import main
real = CosineSchedule.apply
def apply(self, optimizer, step):
    print("step", step, flush=True)
    time.sleep(0.3)  # room for the signal to land inside a step
    return real(self, optimizer, step)
CosineSchedule.apply = apply
main(sys.argv[1:])
"""


def stop_and_resume(train_args: list[str], out: Path, sig: int, group: bool, env: dict) -> None:
    child = subprocess.Popen([sys.executable, "-c", SLOW_STEPS, *train_args, "--out", str(out)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    for _ in range(3):  # let two steps finish
        child.stdout.readline()
    t0 = time.perf_counter()
    os.killpg(child.pid, sig) if group else child.send_signal(sig)
    _, err = child.communicate(timeout=600)
    stop_s = time.perf_counter() - t0
    name = signal.Signals(sig).name + (" to the process group" if group else "")
    print(f"{name}: exit {child.returncode} after {stop_s:.2f} s; {err.strip().splitlines()[-1] if err.strip() else ''}")
    t0 = time.perf_counter()
    resumed = subprocess.run([sys.executable, "-m", "caswit_geo", "train", "--resume", str(out), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=1200)
    state = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
    print(f"  resume: exit {resumed.returncode} in {time.perf_counter() - t0:.1f} s; epoch {state['epoch']}, "
          f"iterations {state['step']}, stopped epoch left: {state['partial']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    make_tiles_root(tmp / "data", {"a": stripes(256), "b": stripes(256)[::-1].copy()})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    train_args = ["train", "--dataset", "tiles", "--root", str(tmp / "data"), "--model", "caswit-nano",
                  "--epochs", "2", "--batch-size", "2", "--crops-per-image", "8", "--workers", str(args.workers),
                  "--device", args.device, "--no-progress"]
    print(f"device {args.device}, torch {torch.__version__}, {args.workers} loader workers")
    stop_and_resume(train_args, tmp / "sigterm", signal.SIGTERM, False, env)
    stop_and_resume(train_args, tmp / "sigint", signal.SIGINT, True, env)
    p = subprocess.run([sys.executable, "-m", "caswit_geo", "predict", str(tmp / "data/images/a.tif"), "--weights",
                        str(tmp / "sigterm/best.safetensors"), "--out", str(tmp / "map.tif"), "--device", args.device,
                        "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    print(f"predict with the resumed run's best checkpoint: exit {p.returncode}")


if __name__ == "__main__":
    main()
