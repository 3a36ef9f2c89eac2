"""train engine: run directory, checkpoints, metrics, exact resume, schedule, config files."""

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import caswit_geo
from caswit_geo.cli import main
from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.engine.train.config import load_config_file, make_config
from caswit_geo.engine.train.optim import CosineSchedule, build_optimizer
from caswit_geo.engine.train.runstate import load_state, rng_state, save_state, set_rng_state
from caswit_geo.engine.train.training import TrainConfig, best_row, train
from caswit_geo.model.checkpoint import read_checkpoint, read_meta
from tests.helpers import TILES_CLASSES, brute_force_miou, make_tiles_root, nano_train_config, stripes

SIZE = 128  # stripes() and the caswit-nano tile


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_tiles_root(tmp_path_factory.mktemp("data"), {"a": stripes(), "b": stripes()[::-1].copy()})


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    return train(nano_train_config(data_root, out, epochs=2, command="caswit-geo train --test")), out


def test_run_directory_files_and_logs(run):
    result, out = run
    assert result.completed and result.run_dir == out
    for name in ("config.json", "last.safetensors", "last.pt", "best.safetensors", "log.csv", "log.json", "curves.png"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "lr", "val_loss", "val_miou", "val_mf1", "val_oa", "time_s"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert [r["precision"] for r in rows] == ["fp32", "fp32"]  # auto: caswit-nano is too narrow for bf16
    assert json.loads((out / "config.json").read_text())["precision"] == "auto"
    with open(out / "log.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in csv_rows] == [1, 2]
    assert float(csv_rows[1]["val_miou"]) == pytest.approx(rows[1]["val_miou"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the cosine ends at 1e-6 after the last iteration: per-iteration steps, not per epoch
    assert rows[1]["lr"] < rows[0]["lr"] < 6e-5


def test_best_checkpoint_is_inference_only_with_training_metadata(run, data_root):
    result, out = run
    model, meta = caswit_geo.load_checkpoint(out / "best.safetensors")
    assert model.aux_head is None and meta.config["aux_head"] is False
    tensors, _ = read_checkpoint(out / "last.safetensors")
    assert any(k.startswith("aux_head.") for k in tensors)  # the training checkpoint keeps it
    md = meta.metadata
    assert md["training"]["dataset"] == "tiles" and md["training"]["epochs"] == 2
    assert md["training"]["lr"] == 6e-5 and md["training"]["seed"] == 0
    assert md["training"]["command"] == "caswit-geo train --test"
    assert md["training"]["precision_used"].startswith("fp32 (auto: ")
    best = best_row(result.history)
    assert md["best_epoch"] == best["epoch"] == result.best_epoch
    assert md["val_metrics"]["mIoU"] == best["val_miou"]
    spec = meta.input_spec
    assert (spec.tile_size, spec.context_factor, spec.gsd, spec.scale) == (128, 2, pytest.approx(0.2), 255.0)
    assert [c.name for c in meta.classes.classes] == ["class 0", "class 1", "class 2"]


def test_validation_miou_matches_brute_force(run, data_root):
    result, out = run
    best = best_row(result.history)
    assert brute_force_miou(out / "best.safetensors", data_root, "val") == pytest.approx(best["val_miou"], abs=1e-9)


def test_training_state_is_plain_and_loads_weights_only(run):
    _, out = run
    state = torch.load(out / "last.pt", weights_only=True)
    # 2 images x 2 crops, batches of 2: 2 iterations per epoch
    assert state["epoch"] == 2 and state["steps_per_epoch"] == 2 and state["step"] == 4
    assert state["world_size"] == 1
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    assert state["optimizer"]["state"]  # AdamW moments
    assert [r["epoch"] for r in state["history"]] == [1, 2]


def test_non_empty_run_dir_is_refused(run, data_root, capsys):
    _, out = run
    before = (out / "last.safetensors").read_bytes()
    with pytest.raises(OutputError, match="--overwrite"):
        train(nano_train_config(data_root, out))
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "tiles", "--root", str(data_root), "--out", str(out)])
    assert e.value.code == 1
    assert "run directory is not empty" in capsys.readouterr().err
    assert (out / "last.safetensors").read_bytes() == before


def test_resume_continues_exactly(data_root, tmp_path):
    # dropout, random crops and augmentation all draw random numbers
    base = nano_train_config(data_root, None, epochs=3, augment=True, warmup_epochs=0.5, crops_per_image=1,
                             grad_checkpointing=True)
    straight = train(replace(base, out=tmp_path / "straight"))
    assert all(layer.grad_checkpointing for layer in straight.model.backbone.hr_encoder.layers)
    first = train(replace(base, out=tmp_path / "resumed", stop_after=2))
    assert not first.completed and [r["epoch"] for r in first.history] == [1, 2]
    # a run directory from before --precision: "amp": true and no precision key; it resumes as it ran
    saved = json.loads((tmp_path / "resumed" / "config.json").read_text())
    del saved["precision"]
    (tmp_path / "resumed" / "config.json").write_text(json.dumps({**saved, "amp": True}))
    resumed = train(TrainConfig(resume=tmp_path / "resumed", workers=0, progress=False))
    assert resumed.completed
    a, _ = read_checkpoint(tmp_path / "straight" / "last.safetensors")
    b, _ = read_checkpoint(tmp_path / "resumed" / "last.safetensors")
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_state(tmp_path / "straight" / "last.pt"), load_state(tmp_path / "resumed" / "last.pt")
    assert sa["optimizer"]["state"] and sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for k, v in sa["optimizer"]["state"].items():
        assert all(torch.equal(v[n], sb["optimizer"]["state"][k][n]) for n in v)
    drop = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)


def test_class_weights_come_from_the_class_table(tmp_path, monkeypatch):
    import caswit_geo.engine.train.training as engine

    root = make_tiles_root(tmp_path / "data", {"a": stripes()})
    table = json.loads((root / "classes.json").read_text())
    (root / "classes.json").write_text(json.dumps({**table, "weights": [1.0, 2.0, 0.0]}))
    seen = []

    class Recording(engine.CaswitLoss):
        def forward(self, *args):
            seen.append(self.class_weights.tolist())
            return super().forward(*args)

    monkeypatch.setattr(engine, "CaswitLoss", Recording)
    result = train(nano_train_config(root, tmp_path / "run", alpha=0.0, val_split="none"))
    assert seen and seen[0] == [1.0, 2.0, 0.0]
    # alpha 0: no auxiliary head is built, and without validation the best epoch is the last
    assert result.model.aux_head is None and result.best_epoch == 1 and result.best_metrics == {}


def test_resume_refuses_setting_changes_and_missing_runs(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        train(TrainConfig(resume=tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="--batch-size 1"):
        train(TrainConfig(dataset="tiles", root=tmp_path, batch_size=1, out=tmp_path / "r"))
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(tmp_path), "--lr", "0.1"])
    assert e.value.code == 1


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 1.0),  # warmup: (step + 1) / 4 of the base rate
        (3, 4.0),
        (4, 4.0),  # cosine starts at the base rate
        (9, 0.5 * (4.0 - 0.5) * (1 + math.cos(math.pi * 5 / 6)) + 0.5),
        (10, 0.5),  # the end: min_lr
        (12, 0.5),
    ],
)
def test_cosine_schedule_with_warmup(step, expected):
    schedule = CosineSchedule(base_lr=4.0, min_lr=0.5, total_steps=10, warmup_steps=4)
    assert schedule.lr(step) == pytest.approx(expected)


def test_schedule_sets_every_group_and_no_decay_on_norms_biases_tables():
    model = caswit_geo.build_model("caswit-nano", num_classes=3)
    opt = build_optimizer(model, 1e-3, 0.01)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert any("relative_position_bias_table" in n for n in no_decay_names)
    assert any(n.endswith(".bias") for n in no_decay_names) and any("norm" in n for n in no_decay_names)
    assert all(p.ndim > 1 for p in decay["params"])
    CosineSchedule(1e-3, 0.0, 10).apply(opt, 5)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(5e-4)] * 2


def test_config_file_layers(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "caswit-nano"\nepochs = 7\nbands = [1, 2, 3]\n[train]\nlr = 1e-4\nfusion-stages = 4\n')
    values = load_config_file(toml, section="train")
    cfg = make_config(TrainConfig, values, {"lr": 3e-4, "epochs": None}, source=str(toml))
    assert cfg.lr == 3e-4 and cfg.fusion_stages == "4" and cfg.epochs == 20  # only the [train] table is read
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"model": "caswit-nano", "epochs": 7, "bands": [1, 2, 3], "root": "data", "val_split": "none"}))
    cfg = make_config(TrainConfig, load_config_file(js), {"epochs": 3})
    assert (cfg.model, cfg.epochs, cfg.bands, cfg.root, cfg.val_split) == ("caswit-nano", 3, (1, 2, 3), Path("data"), "none")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        make_config(TrainConfig, {"learning_rate": 1.0}, source="run.json")
    with pytest.raises(ConfigError, match="epochs must be a whole number"):
        make_config(TrainConfig, {"epochs": 2.5})
    # the resolved config of a run is itself a valid config file
    saved = make_config(TrainConfig, json.loads(json.dumps(cfg.to_dict())))
    assert saved == cfg


def test_cli_reads_a_config_file_and_records_the_command(run, data_root, tmp_path, capsys):
    from caswit_geo.cli.run_options import build_config

    _, out = run
    toml = tmp_path / "train.toml"
    toml.write_text(f'dataset = "tiles"\nroot = "{data_root}"\nmodel = "caswit-nano"\nout = "{out}"\n')
    with pytest.raises(SystemExit) as e:  # reaches the engine: the run directory is taken
        main(["train", "--config", str(toml)])
    assert e.value.code == 1 and "--out" in capsys.readouterr().err
    cfg = build_config(TrainConfig, "train", toml, {"epochs": 3, "bands": [1, 2, 3], "gate": False, "lr": None})
    assert (cfg.dataset, cfg.root, cfg.epochs, cfg.bands, cfg.gate, cfg.lr) == ("tiles", data_root, 3, (1, 2, 3), False, 6e-5)
    assert cfg.command == f"caswit-geo train --config {toml} --epochs 3 --bands 1,2,3 --no-gate"
    saved = json.loads((out / "config.json").read_text())
    assert Path(saved["root"]).is_absolute()  # resumable from any working directory


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    import random

    save_state(tmp_path / "s.pt", {"epoch": 1, "rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_state(tmp_path / "s.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_checkpoint_stays_loadable_by_info(run):
    _, out = run
    meta = read_meta(out / "best.safetensors")
    assert meta.kind == "segmentation" and meta.model_config.name == "caswit-nano"


def test_checkpoints_train_wrote_load_in_info_and_predict(run, data_root, tmp_path, capsys):
    """The schema a checkpoint is saved with is the one it is loaded with: train -> info -> predict."""
    _, out = run
    for name in ("best.safetensors", "last.safetensors"):
        with pytest.raises(SystemExit) as e:
            main(["info", str(out / name), "--json"])
        assert e.value.code == 0 and json.loads(capsys.readouterr().out)["tile_size"] == SIZE
    with pytest.raises(SystemExit) as e:
        main(["predict", str(data_root / "images" / "a.tif"), "--weights", str(out / "best.safetensors"),
              "--out", str(tmp_path / "map.tif"), "--device", "cpu", "--quiet"])
    assert e.value.code == 0, capsys.readouterr().err
    with rasterio.open(tmp_path / "map.tif") as src:
        assert src.read(1).max() < TILES_CLASSES and (src.width, src.height) == (SIZE, SIZE)


def test_overwrite_replaces_the_old_run_only_when_the_new_one_saves(run, data_root, tmp_path):
    """--overwrite: the old run stays whole until the first save, then its files all go; other files stay."""
    import shutil

    import caswit_geo.engine.train.loop as loop

    _, finished = run
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "reconstructions.png").write_bytes(b"an old figure")  # a run file the new run does not write
    (out / "slurm.out").write_text("job log")  # not a run file
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seen = []
    real = loop.save_state

    def save_state(path, state):  # what the run directory holds when the first save begins
        seen.append(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
        assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
        return real(path, state)

    loop.save_state = save_state
    try:
        result = train(nano_train_config(data_root, out, overwrite=True, val_split="none"))
    finally:
        loop.save_state = real
    assert seen and result.completed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.safetensors", "config.json", "curves.png", "last.pt", "last.safetensors", "log.csv",
                     "log.json", "slurm.out"]
    assert (out / "slurm.out").read_text() == "job log"
    assert json.loads((out / "config.json").read_text())["val_split"] == "none"
    assert (out / "last.safetensors").read_bytes() != before["last.safetensors"]
