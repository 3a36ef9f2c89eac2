"""Hostile checkpoints, weights files and registries (review items 5, 6 and 10 of "Nothing trusted, round 3").

Each row is a :class:`hostile.Case`: exit code, one line naming the file and
the problem, nothing changed. The tests after the table check what a
legitimate but large header leaves in a map (a bounded summary).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import rasterio

from caswit_geo.core.spec import ClassInfo, ClassTable
from tests.helpers import module_checkpoint, rgb_image, run_predict, write_on_grid
from tests.hostile import Case, run_case

CLASSES = ClassTable([ClassInfo(0, "building", (219, 14, 154)), ClassInfo(1, "water", (21, 83, 174))])
SHARED: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared(tmp_path_factory):
    yield from module_checkpoint(SHARED, tmp_path_factory, CLASSES)


# ---------------------------------------------------------------- fixtures built in a case folder


def with_header(folder: Path, change) -> Path:
    """The shared checkpoint with its caswit-geo header rewritten by ``change(header) -> header``."""
    from safetensors.torch import load_file, save_file

    from caswit_geo.model.checkpoint import HEADER_KEY
    from caswit_geo.model.tensor_files import read_safetensors_header

    meta = read_safetensors_header(SHARED["ckpt"]).metadata
    header = change(json.loads(meta[HEADER_KEY]))
    path = folder / "model.safetensors"
    save_file(load_file(str(SHARED["ckpt"])), str(path), metadata={HEADER_KEY: json.dumps(header)})
    return path


def image(folder: Path) -> dict:
    write_on_grid(folder / "ortho.tif", rgb_image(64, 64))
    return {}


def metadata_of(size: int):
    def setup(folder: Path) -> dict:
        image(folder)
        with_header(folder, lambda h: {**h, "metadata": {"notes": "x" * size}})
        return {}
    return setup


def metadata_keys(folder: Path) -> dict:
    image(folder)
    with_header(folder, lambda h: {**h, "metadata": {f"k{i}": i for i in range(20_000)}})
    return {}


def metadata_deep(folder: Path) -> dict:
    image(folder)
    deep: dict = {}
    for _ in range(9):
        deep = {"d": deep}
    with_header(folder, lambda h: {**h, "provenance": deep})
    return {}


def header_deep(folder: Path) -> dict:
    """A header nested 5000 deep (json.loads alone raises RecursionError), written as raw text."""
    from safetensors.torch import load_file, save_file

    from caswit_geo.model.checkpoint import HEADER_KEY

    image(folder)
    raw = '{"format": "caswit-geo", "m": ' + "[" * 5000 + "]" * 5000 + "}"
    save_file(load_file(str(SHARED["ckpt"])), str(folder / "model.safetensors"), metadata={HEADER_KEY: raw})
    return {}


def expanded_pth(folder: Path) -> dict:
    """A 1 KB .pth whose tensor is a stride-0 view declaring 8 GiB (torch.save keeps the view)."""
    import torch

    big = torch.zeros(1).expand(2**31)  # 2**31 float32: 8 GiB declared, 4 bytes stored
    torch.save({"state_dict": {"backbone.patch_embed.projection.weight": big}}, folder / "upernet.pth")
    return {}


def safetensors_named_pth(folder: Path) -> dict:
    (folder / "upernet.pth").write_bytes(SHARED["ckpt"].read_bytes())
    return {}


def plain_pth(folder: Path) -> dict:
    import torch

    torch.save({"w": torch.zeros(2)}, folder / "model.pth")
    return {}


def transformers_folder(folder: Path, *, id2label=None, pad: int = 0, nest: int = 0) -> Path:
    """A transformers UPerNet-Swin ``config.json`` valid up to what the case breaks."""
    backbone = dict(model_type="swin", embed_dim=12, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4,
                    num_channels=3, patch_size=4, mlp_ratio=4.0, qkv_bias=True, use_absolute_embeddings=False,
                    hidden_act="gelu", layer_norm_eps=1e-5, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = dict(model_type="upernet", backbone_config=backbone, pool_scales=[1, 2, 3, 6], hidden_size=16,
                  id2label=id2label or {"0": "sky", "1": "tree"})
    text = json.dumps(config)
    if pad:
        text = text[:-1] + ', "pad": "' + "x" * pad + '"}'
    if nest:
        text = text[:-1] + ', "deep": ' + "[" * nest + "]" * nest + "}"
    src = folder / "upernet"
    src.mkdir()
    (src / "config.json").write_text(text)
    return src


def registry(content) -> callable:
    def setup(folder: Path) -> dict:
        image(folder)
        reg = folder / "weights"
        reg.mkdir()
        (reg / "registry.json").write_text(content if isinstance(content, str) else json.dumps(content))
        (folder / "outside.safetensors").write_bytes(SHARED["ckpt"].read_bytes())
        return {}
    return setup


def registry_env(mp, folder: Path) -> None:
    mp.setenv("CASWIT_GEO_WEIGHTS_DIR", str(folder / "weights"))


def registry_link_out(folder: Path) -> dict:
    registry({"default": "m", "models": {"m": {"file": "m.safetensors"}}})(folder)
    (folder / "weights" / "m.safetensors").symlink_to(folder / "outside.safetensors")
    return {}


PREDICT = ["predict", "ortho.tif", "--out", "map.tif", "--weights", "model.safetensors"]
PREDICT_REG = ["predict", "ortho.tif", "--out", "map.tif"]

CASES = [
    Case("5-metadata-larger-than-the-header-bound", PREDICT, setup=metadata_of(3 * 2**20),
         expect=("model.safetensors", "caswit-geo header is 3.0 MiB, more than the 1.0 MiB")),
    Case("5-metadata-larger-than-its-bound", PREDICT, setup=metadata_of(200_000),
         expect=("model.safetensors", "metadata is 195.3 KiB, more than the 64.0 KiB")),
    Case("5-metadata-with-many-keys", PREDICT, setup=metadata_keys,
         expect=("model.safetensors", "metadata is", "more than the 64.0 KiB")),
    Case("5-provenance-too-deep", PREDICT, setup=metadata_deep,
         expect=("model.safetensors", "provenance nests 10 levels deep, more than 6")),
    Case("6-header-nested-5000-deep", PREDICT, setup=header_deep,
         expect=("model.safetensors", "nests deeper than 12 levels")),
    Case("5-convert-stride-0-tensor", ["convert", "upernet.pth", "--out", "c.safetensors"], setup=expanded_pth,
         expect=("upernet.pth", "backbone.patch_embed.projection.weight", "8.0 GiB", "expanded or overlapping")),
    Case("5-dev-zero-as-checkpoint", ["predict", "ortho.tif", "--out", "map.tif", "--weights", "/dev/zero"],
         setup=image, expect=("/dev/zero", "not a regular file")),
    Case("5-registry-parent-path", PREDICT_REG, patch=registry_env,
         setup=registry({"default": "m", "models": {"m": {"file": "../outside.safetensors"}}}),
         expect=("registry.json", "models.m.file", "must be a file name inside")),
    Case("5-registry-absolute-path", PREDICT_REG, patch=registry_env,
         setup=registry({"default": "m", "models": {"m": {"file": "/etc/passwd"}}}),
         expect=("registry.json", "models.m.file", "must be a file name inside")),
    Case("5-registry-link-out", PREDICT_REG, patch=registry_env, setup=registry_link_out,
         expect=("registry.json", "models.m.file", "leads out of")),
    Case("5-registry-models-a-list", PREDICT_REG, patch=registry_env, setup=registry({"models": []}),
         expect=("registry.json", '"models" must be an object')),
    Case("5-registry-entry-a-string", PREDICT_REG, patch=registry_env, setup=registry({"models": {"m": "x"}}),
         expect=("registry.json", "models.m must be an object")),
    Case("5-registry-unknown-default", PREDICT_REG, patch=registry_env,
         setup=registry({"default": ["m"], "models": {}}), expect=("registry.json", "default", "not a registered")),
    Case("5-registry-a-list", PREDICT_REG, patch=registry_env, setup=registry("[1, 2]"),
         expect=("registry.json", "must be a JSON object")),
    Case("6-registry-too-deep", PREDICT_REG, patch=registry_env, setup=registry("[" * 100_000 + "]" * 100_000),
         expect=("registry.json", "nests deeper than 4 levels")),
    Case("6-config-json-too-large", ["convert", "upernet", "--out", "c.safetensors"],
         setup=lambda f: transformers_folder(f, pad=5 * 2**20) and {},
         expect=("config.json", "is 5.0 MiB, more than the 4.0 MiB")),
    Case("6-config-json-too-deep", ["convert", "upernet", "--out", "c.safetensors"],
         setup=lambda f: transformers_folder(f, nest=100_000) and {},
         expect=("config.json", "nests deeper than 16 levels")),
    Case("10-escape-in-id2label", ["convert", "upernet", "--out", "c.safetensors"],
         setup=lambda f: transformers_folder(f, id2label={"0": "sky", "1": "tree\x1b[2J"}) and {},
         expect=("config.json", "id2label[1]", "control character")),
    Case("10-info-on-a-pth", ["info", "model.pth"], setup=plain_pth,
         expect=("model.pth", "a PyTorch file, not a safetensors file", "caswit-geo convert")),
    Case("10-safetensors-named-pth", ["convert", "upernet.pth", "--out", "c.safetensors"],
         setup=safetensors_named_pth, expect=("upernet.pth", "a safetensors file named .pth", "rename it")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_checkpoint(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_outputs_carry_a_bounded_summary_of_the_metadata(tmp_path):
    """A header within its bounds (60 KiB of metadata, 40 keys) leaves a few KiB of tags in the map."""
    write_on_grid(tmp_path / "ortho.tif", rgb_image(64, 64))
    metadata = {f"key{i}": "v" * 1500 for i in range(40)}
    weights = with_header(tmp_path, lambda h: {**h, "metadata": metadata})
    run_predict(weights, [tmp_path / "ortho.tif"], tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as src:
        tags = src.tags()
    tag_bytes = sum(len(k) + len(v) for k, v in tags.items())
    assert tag_bytes < 16 * 2**10, tag_bytes  # 60 KiB of metadata in the header
    text = json.dumps(tags)
    assert "key0" in text and "key31" in text and "key32" not in text  # the first 32 keys, then a count
    assert "8 more entries in the checkpoint" in text


def test_dense_views_of_a_pth_are_accepted(tmp_path):
    """A transposed or sliced tensor is a view over its own data: read as is (only overlap is refused)."""
    import torch

    from caswit_geo.model.tensor_files import state_dict_of, torch_load

    base = torch.arange(12.0).reshape(3, 4)
    torch.save({"t": base.t(), "s": base[:, ::2], "o": torch.zeros(2, 3)[1]}, tmp_path / "views.pth")
    loaded = state_dict_of(torch_load(tmp_path / "views.pth"), tmp_path / "views.pth")
    assert torch.equal(loaded["t"], base.t()) and torch.equal(loaded["s"], base[:, ::2])
    torch.save({"x": torch.arange(4.0).as_strided((3, 2), (1, 1))}, tmp_path / "overlap.pth")
    from caswit_geo.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"overlap\.pth: tensor 'x' declares \(3, 2\)"):
        state_dict_of(torch_load(tmp_path / "overlap.pth"), tmp_path / "overlap.pth")


def test_safetensors_header_size_is_bounded_before_parsing(tmp_path):
    from caswit_geo.core.errors import CheckpointError
    from caswit_geo.model.tensor_files import read_safetensors_header

    path = tmp_path / "huge-header.safetensors"
    path.write_bytes(struct.pack("<Q", 90 * 2**20) + b"{" + b" " * 100)  # declares a 90 MiB header
    with pytest.raises(CheckpointError, match=r"huge-header\.safetensors: safetensors header of 90\.0 MiB"):
        read_safetensors_header(path)
