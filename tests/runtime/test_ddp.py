"""Two CPU processes under torchrun (gloo): synchronised weights, rank-0 files, metrics over both shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from caswit_geo.model.checkpoint import read_checkpoint
from tests.helpers import brute_force_miou, make_tiles_root, stripes

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize("decoder", ["upernet", "segformer"])
def test_two_processes_hold_identical_weights_after_training(tmp_path, decoder):
    # the two validation images differ (stripes / one class), so metrics of one shard differ from the whole
    labels = {"a": stripes(), "b": stripes()[::-1].copy(), "c": stripes() * 0 + 2}
    root = make_tiles_root(tmp_path / "data", labels, val=("a", "c"))
    run_dir, weights = tmp_path / "run", tmp_path / "weights"
    weights.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}  # the repository root
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(WORKER), str(root), str(run_dir), str(weights), decoder]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rank0, rank1 = load_file(str(weights / "rank0.safetensors")), load_file(str(weights / "rank1.safetensors"))
    assert rank0 and rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # parameters and BatchNorm statistics
    saved, header = read_checkpoint(run_dir / "last.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert header["config"]["decoder"] == decoder

    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # 3 images x 2 crops over 2 processes: 3 tiles each, one full batch of 2
    assert state["steps_per_epoch"] == 1
    assert not any(p.name.startswith(".") for p in run_dir.iterdir())  # no temporary files left by rank 1
    rows = json.loads((run_dir / "log.json").read_text())
    assert len(rows) == 1
    # the logged mIoU is the whole split's (both shards), not rank 0's half
    assert brute_force_miou(run_dir / "best.safetensors", root, "val") == pytest.approx(rows[0]["val_miou"], abs=1e-9)
