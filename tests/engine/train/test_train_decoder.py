"""train with the SegFormer decoder: options, exact resume, SimMIM initialisation, and the
checkpoints it writes through predict, eval and explain."""

import json
import math
import re
from dataclasses import replace

import pytest
import rasterio
import torch

import caswit_geo
from caswit_geo.cli import main
from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.train.runstate import load_state
from caswit_geo.engine.train.training import TrainConfig, train
from caswit_geo.model import get_config
from caswit_geo.model.checkpoint import read_checkpoint
from caswit_geo.model.segformer import SegFormerDecoder
from caswit_geo.model.simmim import CaswitSimMIM
from tests.helpers import NANO_TILE, TILES_CLASSES, brute_force_miou, make_tiles_root, nano_train_config, stripes

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiles_root(tmp_path_factory.mktemp("data"), {"a": stripes(), "b": stripes()[::-1].copy()})


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """The same SegFormer run straight through and stopped after epoch 1, then resumed."""
    out = tmp_path_factory.mktemp("runs")
    # dropout, random crops and augmentation all draw random numbers
    base = nano_train_config(data_root, None, epochs=2, augment=True, crops_per_image=1, decoder="segformer",
                       decoder_dim=32)
    straight = train(replace(base, out=out / "straight"))
    first = train(replace(base, out=out / "resumed", stop_after=1))
    assert not first.completed
    resumed = train(TrainConfig(resume=out / "resumed", workers=0, progress=False))
    return straight, resumed


def test_segformer_run_resumes_exactly(runs):
    straight, resumed = runs
    assert resumed.completed and isinstance(resumed.model.decoder, SegFormerDecoder)
    a, _ = read_checkpoint(straight.run_dir / "last.safetensors")
    b, _ = read_checkpoint(resumed.run_dir / "last.safetensors")
    assert any(k.startswith("aux_head.projections.") for k in a) and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_state(straight.run_dir / "last.pt"), load_state(resumed.run_dir / "last.pt")
    for k, v in sa["optimizer"]["state"].items():
        assert all(torch.equal(v[n], sb["optimizer"]["state"][k][n]) for n in v)
    drop = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)


def test_best_checkpoint_is_a_segformer_and_scores_as_validated(runs, data_root):
    straight, _ = runs
    model, meta = caswit_geo.load_checkpoint(straight.best_checkpoint)
    assert isinstance(model.decoder, SegFormerDecoder) and model.aux_head is None
    assert (meta.config["decoder"], meta.config["decoder_dim"]) == ("segformer", 32)
    assert brute_force_miou(straight.best_checkpoint, data_root, "val") == pytest.approx(
        straight.best_metrics["mIoU"], abs=1e-9)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segformer_checkpoint_predicts(runs, data_root, tmp_path, capsys, precision):
    straight, _ = runs
    out = tmp_path / "map.tif"
    with pytest.raises(SystemExit) as e:
        main(["predict", str(data_root / "images" / "a.tif"), "--weights", str(straight.best_checkpoint),
              "--out", str(out), "--device", "cpu", "--precision", precision, "--quiet"])
    assert e.value.code == 0, capsys.readouterr().err
    with rasterio.open(out) as src:
        pred = src.read(1)
        assert pred.max() < TILES_CLASSES and (src.width, src.height) == (NANO_TILE, NANO_TILE)
        assert src.tags()["CASWIT_PRECISION"].startswith(precision)
    # the class map is the model's own argmax on the tile
    model, meta = caswit_geo.load_checkpoint(straight.best_checkpoint)
    from caswit_geo.data import build_dataset

    sample = build_dataset("tiles", data_root, "val", meta.input_spec)[0]
    if precision == "fp32":
        with torch.no_grad():
            expected = model(sample["hr"][None], sample["lr"][None])[0].argmax(0).numpy()
        assert (pred == expected).mean() > 0.999


def test_segformer_checkpoint_evaluates_and_explains(runs, data_root, tmp_path, capsys):
    from caswit_geo.engine.explain import ExplainConfig, explain

    straight, _ = runs
    with pytest.raises(SystemExit) as e:
        main(["eval", "--dataset", "tiles", "--root", str(data_root), "--split", "val", "--weights",
              str(straight.best_checkpoint), "--device", "cpu", "--workers", "0", "--out-dir", str(tmp_path / "ev"),
              "--no-progress"])
    assert e.value.code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["metrics"]["mIoU"] == pytest.approx(straight.best_metrics["mIoU"], abs=1e-9)
    res = explain(ExplainConfig(image=data_root / "images" / "a.tif", out=tmp_path / "attn.png",
                                weights=straight.best_checkpoint))
    assert (tmp_path / "attn.png").stat().st_size > 1000 and res is not None


def test_decoder_options_on_the_command_line(data_root, tmp_path, capsys):
    args = ["train", "--dataset", "tiles", "--root", str(data_root), "--model", "caswit-nano", "--epochs", "1",
            "--batch-size", "2", "--workers", "0", "--crops-per-image", "1", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--decoder", "segformer", "--decoder-dim", "24", "--out", str(tmp_path / "run")])
    assert e.value.code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["decoder"], saved["decoder_dim"]) == ("segformer", 24)
    assert "--decoder segformer --decoder-dim 24" in saved["command"]
    model, _ = caswit_geo.load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert model.decoder.embed_dim == 24
    for extra, message in ((["--decoder", "SegFormer"], "--decoder must be one of upernet, segformer"),
                           (["--decoder-dim", "0"], "--decoder-dim must be an integer >= 1"),
                           (["--decoder-dim", "4096"], "--decoder-dim must be an integer .*<= 2048")):
        with pytest.raises(SystemExit) as e:
            main(args + extra + ["--out", str(tmp_path / "bad")])
        assert e.value.code == 1
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="--decoder must be one of"):
        train(nano_train_config(data_root, tmp_path / "bad", decoder="mlp"))


def test_simmim_checkpoint_initialises_a_segformer_caswit(data_root, tmp_path, capsys):
    torch.manual_seed(1)
    pre = CaswitSimMIM(get_config("caswit-nano", num_classes=1))
    pretrained = caswit_geo.save_checkpoint(pre, tmp_path / "pre.safetensors")
    # a learning rate of ~0 leaves the initial weights in place: they must be the pretrained ones
    result = train(nano_train_config(data_root, tmp_path / "fine", init=pretrained, decoder="segformer", lr=1e-12,
                               min_lr=0.0))
    assert re.match(r"loaded [1-9]\d* HR encoder, [1-9]\d* LR encoder and [1-9]\d* fusion tensors",
                    result.init_report)
    assert f"--init {pretrained}: {result.init_report}" in capsys.readouterr().out
    pre_state, _ = read_checkpoint(pretrained)
    fine, _ = read_checkpoint(tmp_path / "fine" / "last.safetensors")
    backbone = [k for k in fine if k.startswith("backbone.")]
    assert any(k.startswith("backbone.fusion.") for k in backbone)
    assert all(torch.allclose(fine[k], pre_state[k], atol=1e-8) for k in backbone)
    assert any(k.startswith("decoder.projections.") for k in fine)


def test_segformer_trains_one_tile_per_batch(data_root, tmp_path):
    # UPerNet's pyramid pooling leaves BatchNorm one value per channel with one tile; SegFormer's does not
    with pytest.raises(ConfigError, match="--batch-size 1: training needs at least 2 tiles"):
        train(nano_train_config(data_root, tmp_path / "upernet", batch_size=1))
    result = train(nano_train_config(data_root, tmp_path / "segformer", batch_size=1, decoder="segformer"))
    assert result.completed and all(math.isfinite(r["train_loss"]) for r in result.history)
