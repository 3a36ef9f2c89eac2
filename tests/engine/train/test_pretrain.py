"""pretrain engine: SimMIM runs on plain GeoTIFFs, figures, resume, and train --init end to end."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from rasterio.transform import from_origin

from caswit_geo.cli import main
from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.engine.train.pretraining import PretrainConfig, find_images, pretrain
from caswit_geo.model.checkpoint import read_checkpoint, read_meta
from tests.helpers import make_tiles_root, stripes, write_geotiff

pytestmark = pytest.mark.usefixtures("single_thread")


def write_mosaic(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """An unlabelled RGB GeoTIFF (EPSG:2056, 0.1 m) with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 80 * np.sin(xx / 9.0), 128 + 80 * np.cos(yy / 7.0), 128 + 60 * np.sin((xx + yy) / 13.0)])
    image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return write_geotiff(path, image, crs="EPSG:2056", transform=from_origin(2600000, 1200000, 0.1, 0.1))


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ortho")
    write_mosaic(folder / "2021" / "tile_a.tif", 192, 160, seed=1)  # not a multiple of the tile: edge tiles padded
    write_mosaic(folder / "tile_b.tif", 128, 128, seed=2)
    return folder


def nano(images, out, **kw) -> PretrainConfig:
    settings = dict(model="caswit-nano", images=tuple(images), out=out, epochs=1, batch_size=2, workers=0,
                    crops_per_image=1, warmup_epochs=0.0, figure_samples=2, progress=False)
    settings.update(kw)
    return PretrainConfig(**settings)


def test_find_images_recurses_and_checks(mosaics, tmp_path):
    found = find_images([mosaics])
    assert [p.name for p in found] == ["tile_a.tif", "tile_b.tif"]
    assert find_images([found[1], mosaics]) == [found[1], found[0]]  # given order, no duplicates
    with pytest.raises(InputError, match="no such file"):
        find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tif"):
        find_images([tmp_path / "empty"])


@pytest.fixture(scope="module")
def straight(mosaics, tmp_path_factory):
    """Two epochs without interruption."""
    return pretrain(nano([mosaics], tmp_path_factory.mktemp("pre") / "run", epochs=2))


def test_pretrain_writes_simmim_checkpoint_and_figure(straight):
    result = straight
    assert result.completed and [r["epoch"] for r in result.history] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in result.history)
    meta = read_meta(result.checkpoint)
    assert meta.kind == "simmim" and meta.metadata["epoch"] == 2
    assert meta.metadata["training"]["mask_ratio"] == 0.75
    assert meta.input_spec.gsd == pytest.approx(0.1) and meta.input_spec.tile_size == 128
    tensors, _ = read_checkpoint(result.checkpoint)
    assert "hr_mask_token" in tensors and "lr_mask_token" in tensors
    figure = imread(result.figure)
    # 2 rows x 4 columns of square panels: wider than high
    assert figure.shape[1] > figure.shape[0] > 100
    assert (result.run_dir / "curves.png").is_file() and (result.run_dir / "log.csv").is_file()


def test_pretrain_resume_is_exact(straight, mosaics, tmp_path):
    # the SimMIM masks come from the global RNG: restoring it must reproduce them
    pretrain(nano([mosaics], tmp_path / "b", epochs=2, stop_after=1))
    pretrain(PretrainConfig(resume=tmp_path / "b", workers=0, progress=False))
    a, _ = read_checkpoint(straight.checkpoint)
    b, _ = read_checkpoint(tmp_path / "b" / "last.safetensors")
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_refuses_single_stream_models(mosaics, tmp_path):
    with pytest.raises(ConfigError, match="dual-branch"):
        pretrain(nano([mosaics], tmp_path / "r", fusion_stages="none"))


def test_pretrained_checkpoint_initialises_train_end_to_end(tmp_path, capsys):
    root = make_tiles_root(tmp_path / "data", {"a": stripes(), "b": stripes()[:, ::-1].copy()})
    code = None
    try:
        main(["pretrain", "--images", str(root), "--model", "caswit-nano", "--epochs", "1", "--batch-size", "2",
              "--workers", "0", "--warmup-epochs", "0", "--out", str(tmp_path / "pre"), "--no-progress"])
    except SystemExit as e:
        code = e.code
    assert code == 0
    pretrained = tmp_path / "pre" / "last.safetensors"
    # a learning rate of ~0 leaves the initial weights in place: they must be the pretrained ones
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "tiles", "--root", str(root), "--model", "caswit-nano", "--init", str(pretrained),
              "--epochs", "1", "--batch-size", "2", "--lr", "1e-12", "--min-lr", "0", "--workers", "0",
              "--out", str(tmp_path / "fine"), "--no-progress"])
    assert e.value.code == 0
    assert re.search(r"--init .*: loaded [1-9]\d* HR encoder, [1-9]\d* LR encoder and [1-9]\d* fusion tensors",
                     capsys.readouterr().out)
    pre, _ = read_checkpoint(pretrained)
    fine, _ = read_checkpoint(tmp_path / "fine" / "last.safetensors")
    backbone = [k for k in fine if k.startswith("backbone.")]
    assert backbone and all(torch.allclose(fine[k], pre[k], atol=1e-8) for k in backbone)
    assert any(k.startswith("backbone.fusion.") for k in backbone)
