"""Checkpoints: round trip, metadata, bad files, no pickled code."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import caswit_geo
from caswit_geo.core.errors import CheckpointError
from caswit_geo.core.spec import ClassInfo, ClassTable, InputSpec
from caswit_geo.model.checkpoint import load_weights_file, read_meta


@pytest.fixture
def model():
    torch.manual_seed(0)
    return caswit_geo.build_model("caswit-nano", num_classes=3).eval()


CLASSES = ClassTable([ClassInfo(0, "water", (0, 0, 255)), ClassInfo(1, "forest", (0, 128, 0)),
                      ClassInfo(2, "building", (200, 0, 0))])
SPEC = InputSpec(bands=(3, 2, 1), scale=65535.0, tile_size=128, context_factor=2, gsd=0.5)


def test_round_trip_identical_outputs_and_metadata(tmp_path, model):
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors", classes=CLASSES, input_spec=SPEC,
                                      epochs=3, dataset="unit")
    loaded, meta = caswit_geo.load_checkpoint(path)
    assert not loaded.training
    x, y = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x, y), loaded(x, y))
    assert meta.name == "caswit-nano" and meta.kind == "segmentation"
    assert meta.classes.names == ["water", "forest", "building"]
    assert meta.classes.classes[2].color == (200, 0, 0)
    assert meta.input_spec == SPEC
    assert meta.metadata == {"epochs": 3, "dataset": "unit"}
    assert meta.provenance["caswit_geo"] == caswit_geo.__version__
    assert read_meta(path).input_spec.bands == (3, 2, 1)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left


def test_training_checkpoint_keeps_aux_head(tmp_path, model):
    path = caswit_geo.save_checkpoint(model, tmp_path / "t.safetensors", include_aux=True)
    loaded, meta = caswit_geo.load_checkpoint(path, train=True)
    assert loaded.training and loaded.aux_head is not None
    torch.testing.assert_close(loaded.aux_head.classifier.weight, model.aux_head.classifier.weight)


def test_truncated_checkpoint(tmp_path, model):
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*(truncated|corrupt)"):
        caswit_geo.load_checkpoint(path)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        caswit_geo.load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such"):
        caswit_geo.load_checkpoint(tmp_path / "absent.safetensors")


def test_safetensors_without_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a caswit-geo checkpoint"):
        caswit_geo.load_checkpoint(path)


def test_weights_that_do_not_match_the_config(tmp_path, model):
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    other = caswit_geo.build_model("caswit-nano", num_classes=5)
    big = caswit_geo.save_checkpoint(other, tmp_path / "o.safetensors")
    # weights of a 5-class model under the 3-class header
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    with safe_open(str(big), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "mix.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="shapes do not match"):
        caswit_geo.load_checkpoint(tmp_path / "mix.safetensors")
    # a tensor missing
    del tensors["decoder.classifier.bias"]
    save_file(tensors, str(tmp_path / "miss.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="missing 1"):
        caswit_geo.load_checkpoint(tmp_path / "miss.safetensors")


def test_newer_format_is_refused(tmp_path, model):
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["caswit_geo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["format_version"] = 99
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata={"caswit_geo": json.dumps(header)})
    with pytest.raises(CheckpointError, match="newer"):
        caswit_geo.load_checkpoint(tmp_path / "new.safetensors")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, f)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.pth.*refused"):
        load_weights_file(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pt_state_dict_is_read(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.arange(3.0)}}, path)
    assert torch.equal(load_weights_file(path)["w"], torch.arange(3.0))
    (tmp_path / "bad.pth").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_weights_file(tmp_path / "bad.pth")


def test_pretrain_checkpoint_round_trip(tmp_path):
    from caswit_geo.model.simmim import CaswitSimMIM

    pre = CaswitSimMIM(caswit_geo.model.get_config("caswit-nano", num_classes=1))
    path = caswit_geo.save_checkpoint(pre, tmp_path / "pre.safetensors")
    loaded, meta = caswit_geo.load_checkpoint(path)
    assert meta.kind == "simmim" and isinstance(loaded, CaswitSimMIM)
    torch.testing.assert_close(loaded.hr_mask_token, pre.hr_mask_token)


def test_checkpoint_made_before_the_swin_fields_keeps_its_behaviour():
    # The shipped demo weights predate swin_windows / stage_norms: they must run as they were trained,
    # i.e. exactly as stock timm Swin stages (timm's window layout, no stage norms) + fusion + UPerNet.
    from pathlib import Path

    import timm
    import torch.nn.functional as F

    from caswit_geo.model.checkpoint import read_checkpoint
    from caswit_geo.model.swin_windows import PadThenShiftBlock

    path = Path(__file__).resolve().parents[2] / "weights" / "caswit-nano-synthetic.safetensors"
    _, header = read_checkpoint(path)
    assert "swin_windows" not in header["config"] and "stage_norms" not in header["config"]
    model, meta = caswit_geo.load_checkpoint(path)
    cfg = model.config
    assert cfg.swin_windows == "shift-then-pad" and cfg.stage_norms is False
    assert not any(isinstance(m, PadThenShiftBlock) for m in model.modules())

    def stock(encoder):
        swin = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, img_size=cfg.img_size,
                                 **cfg.arch_overrides)
        missing, unexpected = swin.load_state_dict(encoder.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("norm.") for k in missing)
        return swin.eval()

    hr_swin, lr_swin = stock(model.backbone.hr_encoder), stock(model.backbone.lr_encoder)
    torch.manual_seed(0)
    hr, lr = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        x, y, feats = hr_swin.patch_embed(hr), lr_swin.patch_embed(lr), []
        for i in range(4):
            x, y = hr_swin.layers[i](x), lr_swin.layers[i](y)
            x = model.backbone.fusion[str(i + 1)](x, y)
            feats.append(x.permute(0, 3, 1, 2))
        expected = F.interpolate(model.decoder(feats), size=(128, 128), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(hr, lr), expected, rtol=0, atol=1e-6)


# -- the header schema: declared bounds, named backbones, shapes before data ---------------------


def test_every_field_a_checkpoint_sets_declares_its_bounds():
    from dataclasses import dataclass, fields

    from caswit_geo.core.limits import check_fields
    from caswit_geo.core.spec import ClassInfo
    from caswit_geo.model.caswit import CaswitConfig

    for cls in (CaswitConfig, InputSpec, ClassInfo):
        assert all("check" in f.metadata for f in fields(cls)), cls.__name__

    @dataclass
    class Unbounded:  # a field added without bounds is refused at once
        size: int = 3

        def __post_init__(self):
            check_fields(self)

    with pytest.raises(TypeError, match="Unbounded.size declares no bounds"):
        Unbounded()


def test_named_models_use_only_the_allowed_backbones():
    from caswit_geo.core.errors import ConfigError
    from caswit_geo.model.caswit import CaswitConfig
    from caswit_geo.model.configs import SWIN_VARIANTS
    from caswit_geo.model.encoder import SWIN_BACKBONES, SwinEncoder

    assert {v["backbone"] for v in SWIN_VARIANTS.values()} <= set(SWIN_BACKBONES)
    with pytest.raises(ConfigError, match="backbone must be one of"):
        CaswitConfig(backbone="hf-hub:timm/swin_tiny_patch4_window7_224.ms_in1k")
    with pytest.raises(ConfigError, match="not one of"):  # and nothing else reaches timm either
        SwinEncoder("hf-hub:timm/swin_tiny_patch4_window7_224.ms_in1k", 128)
    with pytest.raises(ConfigError, match="unknown key 'pretrained_cfg_overlay'"):
        SwinEncoder("swin_tiny_patch4_window7_224", 128, arch_overrides={"pretrained_cfg_overlay": {"file": "x"}})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ClassInfo(0, "water", (1,)), "color must hold 3 values"),
        (lambda: ClassInfo(0, "water", (0, 0, 256)), r"color\[2\] must be an integer in 0..255"),
        (lambda: ClassInfo(0, "line\nbreak", (0, 0, 0)), "name must be printable text"),
        (lambda: ClassTable(CLASSES.classes, [1.0, float("nan"), 1.0]), r"class weights\[1\] must be a finite"),
        (lambda: ClassTable(CLASSES.classes, [0.0, 0.0, 0.0]), "class weights are all 0"),
        (lambda: InputSpec(scale=float("nan")), "scale must be a finite number"),
        (lambda: InputSpec(tile_size=2**20), "tile_size must be an integer in 32..2048"),
        (lambda: InputSpec(context_factor=1000), "context_factor must be an integer in 1..8"),
        (lambda: InputSpec(tile_size=2048, context_factor=8), "context window would exceed 8192 px"),
        (lambda: caswit_geo.model.get_config("caswit-nano", num_classes=256), "num_classes must be an integer in 1..255"),
        (lambda: caswit_geo.model.get_config("caswit-nano", dropout=1.0), r"dropout must be a finite number in \[0, 1\)"),
    ],
)
def test_values_out_of_bounds_are_refused_where_they_are_made(make, message):
    from caswit_geo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        make()


def test_save_refuses_a_class_table_that_does_not_name_every_output(tmp_path, model):
    two = ClassTable(CLASSES.classes[:2])
    with pytest.raises(caswit_geo.core.errors.CheckpointError, match="2 classes given for a 3-class model"):
        caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors", classes=two)
    assert list(tmp_path.iterdir()) == []


def test_shapes_are_checked_before_any_tensor_is_read(tmp_path, model, monkeypatch):
    from safetensors import safe_open

    import caswit_geo.model.tensor_files as tensor_files

    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["caswit_geo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["config"]["decoder_channels"] = 2048  # the file's decoder is 24 wide
    save_file(tensors, str(tmp_path / "wide.safetensors"), metadata={"caswit_geo": json.dumps(header)})
    read = []

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = safe_open(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, key):
            read.append(key)
            return self.f.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(tensor_files, "safe_open", Spy)
    with pytest.raises(CheckpointError, match="wide.safetensors: weights do not match .* shapes do not match"):
        caswit_geo.load_checkpoint(tmp_path / "wide.safetensors")
    assert read == []
    caswit_geo.load_checkpoint(path)
    assert len(read) == len(tensors)
