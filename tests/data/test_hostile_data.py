"""Hostile inputs, part "data": nothing lost, checkpoints untrusted, scores right (review items 1-3, 5-7, 9, 10, 17, 18).

One table row per bad input (``hostile.Case``); every row checks the exit
code, the one error line naming the file or option, no traceback, and that
nothing was written, replaced or removed (``changes`` names what a row may
legitimately create, e.g. the resumable state of a stopped run). Rows with
``code=0`` check that a hostile situation is handled (a resume after a kill,
dead litter swept, gaps scored). Fixtures are tiny: caswit-nano, 128 px
tiles, two images; they are built once and copied into each row's folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import caswit_geo
from caswit_geo.core.errors import OutputError
from caswit_geo.core.spec import InputSpec
from caswit_geo.engine.train.runstate import load_state
from caswit_geo.engine.train.training import TrainConfig, train
from caswit_geo.model.checkpoint import read_meta
from tests.helpers import make_tiles_root, stripes, write_geotiff, write_on_grid
from tests.hostile import REPO, Case, run_case

ASSETS: dict[str, Path] = {}
DEAD = "deadhost-999999-abcdef"  # the token of a process that no longer exists


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """data/ (tiles, 2 images), ckpt.safetensors (nano, untrained), run/ (stopped after 1 of 3 epochs)."""
    base = tmp_path_factory.mktemp("hostile-assets")
    make_tiles_root(base / "data", {"a": stripes(), "b": stripes()[::-1].copy()})
    torch.manual_seed(0)
    caswit_geo.save_checkpoint(caswit_geo.build_model("caswit-nano", 3), base / "ckpt.safetensors",
                               input_spec=InputSpec(tile_size=128, gsd=0.2))
    train(TrainConfig(model="caswit-nano", dataset="tiles", root=base / "data", out=base / "run", epochs=3,
                      stop_after=1, batch_size=2, crops_per_image=2, workers=0, progress=False, device="cpu"))
    ASSETS.update(base=base)
    return base


def use(*names):
    """Setup: copy these assets into the case folder."""

    def setup(folder: Path):
        for name in names:
            src = ASSETS["base"] / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, folder / name)

    return setup


def chain(*steps):
    def setup(folder: Path):
        for step in steps:
            step(folder)

    return setup


# ---------------------------------------------------------------- fixture edits


def rewrite(path: Path, change) -> None:
    """Replace a raster by ``change(its data)``, same grid."""
    with rasterio.open(path) as src:
        data, transform, nodata = src.read(), src.transform, src.nodata
    path.unlink()
    write_geotiff(path, change(data), nodata=nodata, transform=transform, crs="EPSG:2154")


def float_images(nan_in: str | None):
    """Images a and b as float32 in [0, 1] (scale 1); NaN in the lower half of ``nan_in``."""

    def setup(folder: Path):
        def change(data, nan: bool):
            data = data.astype(np.float32) / 255
            if nan:
                data[:, 64:, :] = np.nan
            return data

        for name in ("a", "b"):
            rewrite(folder / "data" / "images" / f"{name}.tif", lambda d, n=name: change(d, n == nan_in))

    return setup


def image_as_uint16(name: str):
    def setup(folder: Path):
        rewrite(folder / "data" / "images" / f"{name}.tif", lambda d: d.astype(np.uint16) * 257)

    return setup


def edit_json(rel: str, edit):
    def setup(folder: Path):
        path = folder / rel
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    return setup


def write_text(rel: str, text: str):
    def setup(folder: Path):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)

    return setup


def bad_label(name: str, value: int):
    def change(data):
        data[0, :8, :8] = value
        return data

    def setup(folder: Path):
        rewrite(folder / "data" / "labels" / f"{name}.tif", change)

    return setup


def crafted(edit, name: str = "crafted.safetensors"):
    """A copy of the nano checkpoint whose header ``edit`` changes (the tensors stay those of nano)."""

    def setup(folder: Path):
        with safe_open(str(ASSETS["base"] / "ckpt.safetensors"), "pt") as f:
            header = json.loads(f.metadata()["caswit_geo"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = copy.deepcopy(header)
        edit(header)
        save_file(tensors, str(folder / name), metadata={"caswit_geo": json.dumps(header)})

    return setup


def old_format_state(weights_epoch: int | None = None):
    """Turn run/last.pt into a format-1 state (no weights inside); optionally relabel last.safetensors' epoch."""

    def setup(folder: Path):
        run = folder / "run"
        state = load_state(run / "last.pt")
        for key in ("model", "version", "partial"):
            state.pop(key, None)
        torch.save(state, run / "last.pt")
        if weights_epoch is not None:
            path = run / "last.safetensors"
            with safe_open(str(path), "pt") as f:
                header = json.loads(f.metadata()["caswit_geo"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            header["metadata"]["epoch"] = weights_epoch
            save_file(tensors, str(path), metadata={"caswit_geo": json.dumps(header)})

    return setup


def class_rasters(folder: Path):
    """ref.tif (classes 0, 1, 2) and pred.tif that leaves class 2 as nodata: a 'perfect' map with a hole."""
    ref = stripes(64)[None]
    pred = ref.copy()
    pred[pred == 2] = 255
    write_on_grid(folder / "ref.tif", ref, nodata=255)
    write_on_grid(folder / "pred.tif", pred, nodata=255)


def dead_litter(rel: str):
    """The temporary file, claim and lock a kill -9 left in ``rel`` (its owner is gone)."""

    def setup(folder: Path):
        where = folder / rel
        where.mkdir(parents=True, exist_ok=True)
        (where / f".report.json.caswit-{DEAD}.0.part.json").write_text("{half")
        (where / ".report.json.caswit-claim").write_text(json.dumps({"token": DEAD}))
        (where / f".caswit-{DEAD}.lock").write_text("{}")

    return setup


def flairhub_tree(folder: Path):
    """One FLAIR-HUB patch (image + label) and a split list inside the root."""
    root = folder / "fh"
    stem = "AF-S1-27_0-0"
    for modality, data in (("AERIAL_RGBI", np.zeros((4, 32, 32), np.uint8)),
                           ("AERIAL_LABEL-COSIA", np.zeros((1, 32, 32), np.uint8))):
        path = root / f"D012-2019_{modality}" / "AF-S1-27" / f"D012-2019_{modality}_{stem}.tif"
        path.parent.mkdir(parents=True)
        write_on_grid(path, data)
    (root / "lists").mkdir()
    (root / "lists" / "train.csv").write_text("patch_id\n../../../elsewhere/D012-2019_AERIAL_RGBI_AF-S1-27_0-0.tif\n")


# ---------------------------------------------------------------- fault injection


@contextlib.contextmanager
def signal_at_step(sig: int, step: int):
    """Send ``sig`` to this process while training step ``step`` (1-based) runs."""
    from caswit_geo.engine.train.optim import CosineSchedule

    calls = {"n": 0}
    real = CosineSchedule.apply

    def apply(self, optimizer, s):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), sig)
        return real(self, optimizer, s)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CosineSchedule, "apply", apply)
        yield


@contextlib.contextmanager
def interrupted_while_exporting(name: str):
    """Ctrl-C twice while ``name`` is written after the state was saved (the moment of the review's kill)."""
    import caswit_geo.engine.train.loop as loop

    real = loop.save_checkpoint

    def save(model, path, **kw):
        if Path(path).name == name:
            os.kill(os.getpid(), signal.SIGINT)  # the first asks for a stop after the step...
            os.kill(os.getpid(), signal.SIGINT)  # ...the second stops at once
        return real(model, path, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "save_checkpoint", save)
        yield


@contextlib.contextmanager
def sigterm_at_batch(batch: int):
    """SIGTERM to this process while eval predicts batch ``batch``."""
    from caswit_geo.runtime.precision import Precision

    calls = {"n": 0}
    real = Precision.autocast

    def autocast(self):  # entered once per batch, around the forward pass
        calls["n"] += 1
        if calls["n"] == batch:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Precision, "autocast", autocast)
        yield


# ---------------------------------------------------------------- checks of handled cases


def resumes_to_the_end(run_name: str, epochs: int):
    def check(folder: Path, out: str, err: str):
        result = train(TrainConfig(resume=folder / run_name, workers=0, progress=False, device="cpu"))
        assert result.completed and [r["epoch"] for r in result.history] == list(range(1, epochs + 1))
        assert read_meta(folder / run_name / "last.safetensors").metadata["epoch"] == epochs
        assert not [p.name for p in (folder / run_name).iterdir() if ".caswit-" in p.name]

    return check


def stopped_mid_epoch(folder: Path, out: str, err: str):
    run = folder / "run2"
    state = load_state(run / "last.pt")
    assert state["epoch"] == 0 and state["partial"]["iterations"] == 2 and state["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt"]
    resumes_to_the_end("run2", 2)(folder, out, err)
    state = load_state(run / "last.pt")
    assert state["step"] == 8 and state["partial"] is None  # 4 iterations per epoch, none run twice


def export_lags_state(folder: Path, out: str, err: str):
    run = folder / "run"
    assert load_state(run / "last.pt")["epoch"] == 2
    assert read_meta(run / "last.safetensors").metadata["epoch"] == 1  # what the kill left
    resumes_to_the_end("run", 3)(folder, out, err)


def resumed_to_epoch_2(folder: Path, out: str, err: str):
    state = load_state(folder / "run" / "last.pt")
    assert state["epoch"] == 2 and state["version"] == 2 and "model" in state
    assert read_meta(folder / "run" / "last.safetensors").metadata["epoch"] == 2


def litter_swept(folder: Path, out: str, err: str):
    rep = folder / "rep"
    assert sorted(p.name for p in rep.iterdir()) == ["confusion_matrix.csv", "confusion_matrix.png", "report.json"]


def gaps_scored(folder: Path, out: str, err: str):
    report = json.loads((folder / "rep" / "report.json").read_text())
    labelled = 64 * 64
    class2 = int(np.sum(stripes(64) == 2))
    assert report["coverage"] == pytest.approx((labelled - class2) / labelled)
    assert report["unpredicted_pixels"] == class2
    # class 2 never predicted: IoU 0, so mIoU is 2/3, OA the covered share
    assert report["metrics"]["mIoU"] == pytest.approx(2 / 3)
    assert report["metrics"]["OA"] == pytest.approx((labelled - class2) / labelled)


# ---------------------------------------------------------------- the table

TRAIN = ["train", "--dataset", "tiles", "--root", "{tmp}/data", "--model", "caswit-nano", "--epochs", "1",
         "--batch-size", "2", "--crops-per-image", "2", "--workers", "0", "--no-progress", "--device", "cpu"]
EVAL = ["eval", "--dataset", "tiles", "--root", "{tmp}/data", "--weights", "{tmp}/ckpt.safetensors", "--workers", "0",
        "--device", "cpu", "--no-progress", "--out-dir", "{tmp}/rep"]
EXPLAIN = ["explain", "{tmp}/data/images/a.tif", "--out", "{tmp}/att.png"]
PRETRAIN = ["pretrain", "--images", "{tmp}/data/images", "--model", "caswit-nano", "--epochs", "1", "--batch-size", "2",
            "--workers", "0", "--no-progress", "--device", "cpu", "--out", "{tmp}/pre"]
INFO = ["info", "{tmp}/crafted.safetensors"]
EXPLAIN_CRAFTED = EXPLAIN + ["--weights", "{tmp}/crafted.safetensors"]


def cfg(**kw):
    return lambda h: h["config"].update(kw)


def overrides(**kw):
    return lambda h: h["config"]["arch_overrides"].update(kw)


def spec(**kw):
    return lambda h: h["input_spec"].update(kw)


def colour(value):
    return lambda h: h["classes"]["classes"][0].update(color=value)


CASES = [
    # 1. a failed start never destroys a finished run
    Case("1-overwrite-epochs-0", TRAIN + ["--out", "{tmp}/run", "--overwrite", "--epochs", "0"],
         setup=use("data", "run"), expect=("--epochs",)),
    Case("1-overwrite-missing-root", TRAIN + ["--out", "{tmp}/run", "--overwrite", "--root", "{tmp}/nothing"],
         setup=use("data", "run"), expect=("--root", "nothing")),
    Case("1-overwrite-fails-in-epoch-1", TRAIN + ["--out", "{tmp}/run", "--overwrite", "--scale", "1"],
         setup=chain(use("data", "run"), float_images(nan_in="b")), expect=("b.tif", "NaN")),
    # 2. a kill or a signal at any moment leaves a resumable state
    Case("2-sigterm-mid-epoch", TRAIN + ["--out", "{tmp}/run2", "--epochs", "2", "--crops-per-image", "4"],
         setup=use("data"), inject=lambda folder: signal_at_step(signal.SIGTERM, 2), code=143,
         expect=("stopped by SIGTERM at epoch 1, iteration 2", "--resume"), changes=("run2",),
         check=stopped_mid_epoch),
    Case("2-second-ctrl-c-while-exporting", ["train", "--resume", "{tmp}/run", "--stop-after", "2", "--no-progress"],
         setup=use("data", "run"), inject=lambda folder: interrupted_while_exporting("last.safetensors"), code=130,
         expect=("interrupted",), changes=("run",), check=export_lags_state),
    Case("2-old-format-run-resumes", ["train", "--resume", "{tmp}/run", "--stop-after", "2", "--no-progress"],
         setup=chain(use("data", "run"), old_format_state()), code=0, changes=("run",), check=resumed_to_epoch_2),
    Case("2-old-format-inconsistent-pair", ["train", "--resume", "{tmp}/run"],
         setup=chain(use("data", "run"), old_format_state(weights_epoch=2)),
         expect=("last.safetensors (epoch 2) and last.pt (epoch 1) disagree",)),
    # 3. no command writes over one of its inputs, even with --overwrite
    Case("3-eval-predictions-over-images", EVAL + ["--split", "val", "--save-predictions", "{tmp}/data/images",
                                                   "--overwrite"],
         setup=use("data", "ckpt.safetensors"), expect=("images/a.tif", "never replace an input")),
    Case("3-eval-predictions-over-labels", EVAL + ["--split", "val", "--save-predictions", "{tmp}/data/labels",
                                                   "--overwrite"],
         setup=use("data", "ckpt.safetensors"), expect=("labels/a.tif", "never replace an input")),
    Case("3-explain-over-its-image", ["explain", "{tmp}/data/images/a.tif", "--out", "{tmp}/data/images/a.tif",
                                      "--weights", "{tmp}/ckpt.safetensors", "--overwrite"],
         setup=use("data", "ckpt.safetensors"), expect=("a.tif", "never replace an input")),
    Case("3-explain-over-its-checkpoint", EXPLAIN[:2] + ["--out", "{tmp}/ckpt.safetensors", "--weights",
                                                         "{tmp}/ckpt.safetensors", "--overwrite"],
         # refused first as no image format; the checkpoint is untouched either way
         setup=use("data", "ckpt.safetensors"), expect=("ckpt.safetensors",)),
    Case("3-train-overwrite-over-its-init", TRAIN + ["--out", "{tmp}/run", "--overwrite", "--init",
                                                     "{tmp}/run/last.safetensors"],
         setup=use("data", "run"), expect=("last.safetensors", "never replace an input")),
    # 5. a failed run leaves nothing; litter of a dead one is swept
    Case("5-train-bad-option-writes-nothing", TRAIN + ["--out", "{tmp}/new", "--epochs", "0"],
         setup=use("data"), expect=("--epochs",)),
    Case("5-train-batch-too-large-writes-nothing", TRAIN + ["--out", "{tmp}/new", "--batch-size", "64"],
         setup=use("data"), expect=("--batch-size 64",)),
    Case("5-pretrain-bad-option-writes-nothing", PRETRAIN + ["--epochs", "0"], setup=use("data"),
         expect=("--epochs",)),
    Case("5-eval-error-midway-leaves-no-prediction",
         EVAL + ["--split", "train", "--save-predictions", "{tmp}/preds"],
         setup=chain(use("data", "ckpt.safetensors"), bad_label("b", 7)), expect=("labels/b.tif", "value 7")),
    Case("5-eval-sigterm-leaves-nothing", EVAL + ["--split", "train", "--batch-size", "1",
                                                  "--save-predictions", "{tmp}/preds"],
         setup=use("data", "ckpt.safetensors"), inject=lambda folder: sigterm_at_batch(2), code=143,
         expect=("SIGTERM",)),
    Case("5-dead-litter-swept", ["eval", "--no-progress", "--pred", "{tmp}/pred.tif", "--ref", "{tmp}/ref.tif", "--out-dir",
                                 "{tmp}/rep", "--allow-gaps"],
         setup=chain(class_rasters, dead_litter("rep")), code=0, changes=("rep",), check=litter_swept),
    # 6. a checkpoint names only our backbones and whitelisted keys
    Case("6-hf-hub-backbone", INFO, setup=crafted(cfg(backbone="hf-hub:timm/swin_tiny")),
         expect=("crafted.safetensors", "backbone", "hf-hub:timm/swin_tiny")),
    Case("6-override-names-a-file", EXPLAIN_CRAFTED, setup=chain(use("data"), crafted(overrides(
        checkpoint_path="/etc/passwd"))), expect=("crafted.safetensors", "unknown key 'checkpoint_path'")),
    Case("6-unknown-header-key", INFO, setup=crafted(lambda h: h.update(loader="pickle")),
         expect=("crafted.safetensors", "unknown checkpoint header key 'loader'")),
    Case("6-unknown-config-key", INFO, setup=crafted(cfg(pretrained_cfg={"file": "/x"})),
         expect=("crafted.safetensors", "unknown key 'pretrained_cfg'")),
    Case("6-decoder-not-whitelisted", INFO, setup=crafted(cfg(decoder="mmseg.models.MaskFormerHead")),
         expect=("crafted.safetensors", "decoder must be one of upernet, segformer")),
    # 7. bounded sizes: nothing allocated or built from a crafted number
    Case("7-context-factor-1000", EXPLAIN_CRAFTED, setup=chain(use("data"), crafted(spec(context_factor=1000))),
         expect=("crafted.safetensors", "context_factor", "1000")),
    Case("7-tile-2^20", INFO, setup=crafted(lambda h: (cfg(img_size=2**20)(h), spec(tile_size=2**20)(h))),
         expect=("crafted.safetensors", "img_size", "1048576")),
    Case("7-depths-1000", INFO, setup=crafted(overrides(depths=[2, 2, 1000, 2])),
         expect=("crafted.safetensors", "depths[2]", "1000")),
    Case("7-decoder-dim-2^20", INFO, setup=crafted(cfg(decoder="segformer", decoder_dim=2**20)),
         expect=("crafted.safetensors", "decoder_dim", "1048576")),
    Case("7-model-over-budget", INFO, setup=crafted(overrides(embed_dim=1024, depths=[1, 1, 2, 1],
                                                               num_heads=[8, 16, 32, 64])),
         expect=("crafted.safetensors", "GiB")),
    Case("7-weights-do-not-fit-the-config", EXPLAIN_CRAFTED, setup=chain(use("data"), crafted(overrides(embed_dim=48))),
         expect=("crafted.safetensors", "shapes do not match")),
    # 9. split files cannot name files outside the data root
    Case("9-tiles-split-climbs-out", TRAIN + ["--out", "{tmp}/new"],
         setup=chain(use("data"), write_text("data/splits/train.txt", "a\n../../../etc/passwd\n")),
         expect=("train.txt", "line 2", "outside the data root")),
    Case("9-tiles-split-absolute", EVAL + ["--split", "val"],
         setup=chain(use("data", "ckpt.safetensors"), write_text("data/splits/val.txt", "/etc/hostname\n")),
         expect=("val.txt", "/etc/hostname", "outside the data root")),
    Case("9-flairhub-list-climbs-out", ["train", "--dataset", "flairhub", "--root", "{tmp}/fh", "--train-split",
                                        "{tmp}/fh/lists/train.csv", "--model", "caswit-nano", "--tile-size", "32",
                                        "--out", "{tmp}/new"],
         setup=flairhub_tree, expect=("train.csv", "line 2", "outside the data root"),
         changes=("fh/.caswit-geo-index.json",)),
    # 10. a class table that cannot describe the model is refused, at load and at save
    Case("10-fewer-class-names-than-outputs", INFO, setup=crafted(lambda h: h["classes"]["classes"].pop()),
         expect=("crafted.safetensors", "2 class names for a model with 3 outputs")),
    Case("10-colour-of-one-value", EXPLAIN_CRAFTED, setup=chain(use("data"), crafted(colour([1]))),
         expect=("crafted.safetensors", "classes[0]", "color")),
    Case("10-colour-out-of-range", INFO, setup=crafted(colour([300, 0, 0])),
         expect=("crafted.safetensors", "color[0]", "300")),
    Case("10-nan-scale", INFO, setup=crafted(spec(scale=float("nan"))),
         expect=("crafted.safetensors", "scale", "nan")),
    Case("10-classes-json-bad-colour-refused-before-training", TRAIN + ["--out", "{tmp}/new"],
         setup=chain(use("data"), edit_json("data/classes.json", lambda d: d["classes"][1].update(color=[1, 2]))),
         expect=("classes.json", "color")),
    # 17. an unpredicted reference pixel is an error, or a scored miss
    Case("17-class-left-as-nodata", ["eval", "--no-progress", "--pred", "{tmp}/pred.tif", "--ref", "{tmp}/ref.tif", "--out-dir",
                                     "{tmp}/rep"],
         setup=class_rasters, expect=("pred.tif", "have no prediction", "--allow-gaps")),
    Case("17-gaps-scored-as-errors", ["eval", "--no-progress", "--pred", "{tmp}/pred.tif", "--ref", "{tmp}/ref.tif", "--out-dir",
                                      "{tmp}/rep", "--allow-gaps"],
         setup=class_rasters, code=0, changes=("rep",), check=gaps_scored),
    # 18. imagery and class weights a training run cannot use are named
    Case("18-train-mixed-uint8-uint16", TRAIN + ["--out", "{tmp}/new"], setup=chain(use("data"), image_as_uint16("b")),
         expect=("a.tif is uint8", "b.tif is uint16")),
    Case("18-pretrain-mixed-uint8-uint16", PRETRAIN, setup=chain(use("data"), image_as_uint16("b")),
         expect=("a.tif is uint8", "b.tif is uint16")),
    Case("18-nan-imagery", TRAIN + ["--out", "{tmp}/new", "--scale", "1"],
         setup=chain(use("data"), float_images(nan_in="b")), expect=("b.tif", "NaN")),
    Case("18-nan-class-weight", TRAIN + ["--out", "{tmp}/new"],
         setup=chain(use("data"), edit_json("data/classes.json", lambda d: d.update(weights=[1.0, float("nan"), 1.0]))),
         expect=("classes.json", "weights[1]", "nan")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_data(case, assets, tmp_path, capsys):
    run_case(case, tmp_path / "case", capsys)


def test_every_review_item_has_a_case():
    items = {c.id.split("-")[0] for c in CASES}
    assert items == {"1", "2", "3", "5", "6", "7", "9", "10", "17", "18"}


# ---------------------------------------------------------------- real signals, other processes

KILLED_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    import caswit_geo.model.checkpoint as checkpoint
    from caswit_geo.cli import main
    real = checkpoint.save_file
    def save_file(tensors, path, metadata=None):
        if "last.safetensors" in os.path.basename(path):
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tensors, path, metadata=metadata)
    checkpoint.save_file = save_file
    main(sys.argv[1:])
    """
)

STEPS_SLOWLY = textwrap.dedent(
    """
    import sys, time
    from caswit_geo.engine.train.optim import CosineSchedule
    from caswit_geo.cli import main
    real = CosineSchedule.apply
    def apply(self, optimizer, step):
        print("step", step, flush=True)
        time.sleep(0.2)
        return real(self, optimizer, step)
    CosineSchedule.apply = apply
    main(sys.argv[1:])
    """
)


def _child(script: str, argv: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", script, *argv], env=env, text=True, **kw)


@pytest.mark.slow  # the same on-disk state in the default run: row 2-second-ctrl-c-while-exporting
def test_2_kill_9_while_saving_then_resume(assets, tmp_path):
    """SIGKILL in the middle of writing last.safetensors: --resume finds last.pt whole and sweeps the litter."""
    shutil.copytree(assets / "run", tmp_path / "run")
    shutil.copytree(assets / "data", tmp_path / "data")
    proc = _child(KILLED_WHILE_SAVING, ["train", "--resume", str(tmp_path / "run"), "--stop-after", "2"],
                  stderr=subprocess.PIPE)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    litter = [p.name for p in (tmp_path / "run").iterdir() if ".caswit-" in p.name]
    assert any(n.endswith(".lock") for n in litter) and any(".part" in n for n in litter)
    assert load_state(tmp_path / "run" / "last.pt")["epoch"] == 2
    resumes_to_the_end("run", 3)(tmp_path, "", "")


def test_2_real_sigterm_from_another_process_then_resume(assets, tmp_path):
    """A scheduler's SIGTERM: the step ends, the state is saved, exit 143 with the resume command."""
    shutil.copytree(assets / "data", tmp_path / "data")
    out = tmp_path / "run2"
    argv = [a.format(tmp=tmp_path) for a in TRAIN] + ["--out", str(out), "--crops-per-image", "4"]
    proc = _child(STEPS_SLOWLY, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    while first.startswith(("data:", "precision")):  # the split coverage and precision lines come first
        first = proc.stdout.readline()
    assert first.split()[0] == "step"
    # meanwhile a second run on the same directory stops at once, naming the first
    with pytest.raises(OutputError, match=rf"--out .*run2: another run is writing it \(caswit-geo pid {proc.pid} "):
        train(TrainConfig(dataset="tiles", root=tmp_path / "data", model="caswit-nano", out=out, overwrite=True))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at epoch 1" in err and f"--resume {out}" in err and "Traceback" not in err
    state = load_state(out / "last.pt")
    assert state["epoch"] == 0 and 1 <= state["partial"]["iterations"] < 4
    resumes_to_the_end("run2", 1)(tmp_path, "", "")
