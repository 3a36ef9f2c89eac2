"""UPerNet-Swin interop, checked against transformers' independent implementation.

transformers' ``UperNetForSemanticSegmentation`` with a ``SwinBackbone`` is
the UPerNet-Swin of mmsegmentation; randomly initialised ones (every norm,
position table and BatchNorm statistic perturbed so that each tensor
matters) are saved with ``save_pretrained`` and converted. Our stage
features and logits at 512 px must equal theirs: that checks the key table,
the Swin stepping, the window padding and shifting, the stage norms and the
UPerNet decoder at once.
"""

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import caswit_geo
from caswit_geo.cli import main
from caswit_geo.core.errors import CheckpointError, ConfigError
from caswit_geo.engine.convert import ConvertConfig, convert
from caswit_geo.model import CASWiT, get_config
from caswit_geo.model.swin_windows import PadThenShiftBlock
from caswit_geo.model.transfer import transfer_upernet
from caswit_geo.model.upernet.source import read_upernet
from tests.helpers import make_tiles_root, nano_train_config, stripes
from tests.model.upernet.upernet_reference import perturb_every_tensor

transformers = pytest.importorskip("transformers")

STAGES = ["stage1", "stage2", "stage3", "stage4"]
NANO = dict(embed_dim=12, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4)  # caswit-geo's nano
TINY = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)  # Swin-T
# a miniature with Swin's shifted blocks (two per stage) and windows that divide no grid at 512 px
MINI = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
LABELS = ["sky", "tree", "road", "car", "water"]


pytestmark = pytest.mark.usefixtures("single_thread")


def upernet(arch: dict, hidden: int, labels=LABELS, seed: int = 0):
    """A random transformers UPerNet-Swin whose every tensor matters."""
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(seed)
    backbone = SwinConfig(**arch, out_features=STAGES, drop_path_rate=0.0)
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=hidden, auxiliary_channels=16, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    return perturb_every_tensor(UperNetForSemanticSegmentation(config).eval())


def save(model, folder: Path, preprocessor: dict | None = None) -> Path:
    model.save_pretrained(folder)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def reference(model, x: torch.Tensor):
    """transformers' logits, normed stage features (what its decode head reads) and raw stage outputs."""
    with torch.no_grad():
        logits = model(x).logits
        out = model.backbone(x, output_hidden_states=True)
    return logits, list(out.feature_maps), list(out.hidden_states[1:])


def ours(model: CASWiT, x: torch.Tensor):
    """Our logits, normed stage features and raw stage outputs (HR branch, no fusion)."""
    enc = model.backbone.hr_encoder
    with torch.no_grad():
        h, feats, raw = enc.embed(x), [], []
        for i in range(4):
            h = enc.stage(i, h)
            raw.append(h.permute(0, 3, 1, 2))
            feats.append(enc.feature(i, h))
        return model(x), feats, raw


def max_diffs(a, b) -> dict:
    la, fa, ra = a
    lb, fb, rb = b
    return {
        "logits": float((la - lb).abs().max()),
        "features": [float((p - q).abs().max()) for p, q in zip(fa, fb)],
        "raw": [float((p - q).abs().max()) for p, q in zip(ra, rb)],
    }


def assert_same(diffs: dict, ref_logits: torch.Tensor, tol: float = 1e-4) -> None:
    """Equal to float32 rounding: ``tol`` for the stage features, relative to the logits' scale for the logits."""
    scale = float(ref_logits.abs().max())
    assert scale > 0.5  # logits that mean something
    assert diffs["logits"] < tol * max(1.0, scale / 10), diffs
    assert max(diffs["features"]) < tol and max(diffs["raw"]) < tol, diffs


def mini_model(window: int, hidden: int, **overrides) -> CASWiT:
    arch = dict(MINI, window_size=window, depths=tuple(MINI["depths"]), num_heads=tuple(MINI["num_heads"]))
    settings = dict(num_classes=len(LABELS), img_size=512, decoder_channels=hidden, arch_overrides=arch)
    settings.update(overrides)
    return CASWiT(get_config("swin-nano-upernet", **settings)).eval()


def assert_parity(model, src, label: str, capsys):
    """Our logits and stage maps equal ``src``'s on a random 512 px tile (printed); returns (tile, reference)."""
    x = torch.randn(1, 3, 512, 512)
    ref = reference(src, x)
    diffs = max_diffs(ours(model, x), ref)
    with capsys.disabled():
        print(f"\n{label}: max |logit difference| {diffs['logits']:.2e}, "
              f"stage features {['%.1e' % d for d in diffs['features']]}")
    assert_same(diffs, ref[0])
    return x, ref


@pytest.mark.parametrize("window", [7, 12])
def test_miniature_upernet_swin_equals_transformers_at_512(window, capsys):
    src = upernet(dict(MINI, window_size=window), hidden=32)
    model = mini_model(window, 32)
    report = transfer_upernet(model, src.state_dict(), "transformers")
    assert report.classifier and report.fusion_blocks == 0
    assert set(report.unused.values()) == {"auxiliary FCN head (training only)",
                                           "final backbone norm (not on the stage outputs)"}
    x, ref = assert_parity(model, src, f"miniature window {window}", capsys)

    # the test can fail: timm 1.0's window layout (roll, then pad) is not UPerNet-Swin's
    for m in model.modules():
        if isinstance(m, PadThenShiftBlock):
            m.__class__ = PadThenShiftBlock.__mro__[1]
    assert max_diffs(ours(model, x), ref)["features"][0] > 1e-3


def test_convert_command_writes_the_matching_model(tmp_path, capsys):
    src = save(upernet(NANO, hidden=24), tmp_path / "upernet-nano",
               preprocessor=dict(do_rescale=False, image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375]))
    out = tmp_path / "nano.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src), "--out", str(out), "--tile-size", "512"])
    assert e.value.code == 0
    assert "swin-nano-upernet" in capsys.readouterr().out

    model, meta = caswit_geo.load_checkpoint(out)
    assert meta.name == "swin-nano-upernet" and not model.config.dual
    assert meta.classes.names == LABELS and len({c.color for c in meta.classes.classes}) == len(LABELS)
    spec = meta.input_spec
    assert spec.scale == 255 and spec.tile_size == 512 and spec.gsd is None
    torch.testing.assert_close(torch.tensor(spec.mean), torch.tensor([0.485, 0.456, 0.406]), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(spec.std), torch.tensor([0.229, 0.224, 0.225]), atol=1e-3, rtol=0)
    assert meta.metadata["converted_from"]["tensors_not_used"] == {
        "auxiliary FCN head (training only)": 8, "final backbone norm (not on the stage outputs)": 2}

    ref_model = transformers.UperNetForSemanticSegmentation.from_pretrained(src).eval()
    x = torch.randn(1, 3, 512, 512)
    ref = reference(ref_model, x)
    assert_same(max_diffs(ours(model, x), ref), ref[0])

    # an existing output is kept without --overwrite; the source is never written over
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src), "--out", str(out)])
    assert e.value.code == 1 and "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    weights = (src / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src), "--out", str(src / "model.safetensors"), "--overwrite"])
    assert e.value.code == 1 and "never replace an input" in capsys.readouterr().err
    assert (src / "model.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_tiny_upernet_swin_converts_to_swin_tiny_upernet(tmp_path, capsys):
    # Swin-T with the 512-channel decoder of openmmlab/upernet-swin-tiny, 150 classes as ADE20K
    labels = [f"ade{i}" for i in range(150)]
    src_model = upernet(TINY, hidden=512, labels=labels)
    result = convert(ConvertConfig(save(src_model, tmp_path / "tiny"), tmp_path / "tiny.safetensors"))
    assert result.model == "swin-tiny-upernet"
    model, meta = caswit_geo.load_checkpoint(result.out)
    assert meta.input_spec.tile_size == 512 and meta.classes.names == labels
    assert_parity(model, src_model, "swin-tiny-upernet", capsys)


def test_caswit_initialised_from_upernet(tmp_path):
    src = upernet(dict(MINI, window_size=7), hidden=32)
    state = src.state_dict()
    x = torch.randn(1, 3, 512, 512)
    ref = reference(src, x)

    # fusion disabled: exactly the source model
    single = mini_model(7, 32)
    transfer_upernet(single, state, "transformers")
    assert_same(max_diffs(ours(single, x), ref), ref[0])

    # fusion enabled, another class count: both encoders from the backbone, fusion and classifier fresh
    torch.manual_seed(3)
    dual = mini_model(7, 32, fusion_stages="all", num_classes=3)
    torch.manual_seed(3)
    untouched = mini_model(7, 32, fusion_stages="all", num_classes=3)
    report = transfer_upernet(dual, state, "transformers")
    assert report.encoders == ["HR", "LR"] and report.heads == ["decoder", "auxiliary LR head"]
    assert not report.classifier and report.fusion_blocks == 4
    assert "classifier fresh (3 classes, the source has 5)" in str(report)
    b = dual.backbone
    with torch.no_grad():
        for enc in (b.hr_encoder, b.lr_encoder):
            stage1 = enc.stage(0, enc.embed(x))
            torch.testing.assert_close(stage1.permute(0, 3, 1, 2), ref[2][0], atol=1e-4, rtol=0)
            torch.testing.assert_close(enc.feature(0, stage1), ref[1][0], atol=1e-4, rtol=0)
    fresh = untouched.state_dict()
    for key, value in dual.state_dict().items():
        if key.startswith(("backbone.fusion.", "decoder.classifier.", "aux_head.classifier.")):
            assert torch.equal(value, fresh[key]), key
    for head in (dual.decoder, dual.aux_head):
        torch.testing.assert_close(head.fuse[0].weight, src.decode_head.fpn_bottleneck.conv.weight)


def mmseg_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' saved UPerNet-Swin -> mmsegmentation's layout, as mmsegmentation's swin2mmseg writes it."""

    def correct_unfold_reduction_order(x):
        out_channel, in_channel = x.shape
        x = x.reshape(out_channel, 4, in_channel // 4)
        return x[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out_channel, in_channel)

    def correct_unfold_norm_order(x):
        in_channel = x.shape[0]
        return x.reshape(4, in_channel // 4)[[0, 2, 1, 3], :].transpose(0, 1).reshape(in_channel)

    renames = [
        (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.projection."),
        (r"^backbone\.embeddings\.norm\.", "backbone.patch_embed.norm."),
        (r"^backbone\.encoder\.layers\.", "backbone.stages."),
        (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
        (r"\.attention\.self\.relative_position_bias_table$", ".attn.w_msa.relative_position_bias_table"),
        (r"\.attention\.output\.dense\.", ".attn.w_msa.proj."),
        (r"\.intermediate\.dense\.", ".ffn.layers.0.0."), (r"\.output\.dense\.", ".ffn.layers.1."),
        (r"^backbone\.hidden_states_norms\.stage(\d)\.", lambda m: f"backbone.norm{int(m[1]) - 1}."),
        (r"\.batch_norm\.", ".bn."), (r"^decode_head\.classifier\.", "decode_head.conv_seg."),
        (r"^auxiliary_head\.classifier\.", "auxiliary_head.conv_seg."),
    ]
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.swin.layernorm."):
            continue  # mmsegmentation's Swin has no final norm
        if q := re.match(r"(.*)\.attention\.self\.query\.(\w+)$", key):
            stem = re.sub(r"^backbone\.encoder\.layers\.", "backbone.stages.", q[1])
            parts = [state[f"{q[1]}.attention.self.{n}.{q[2]}"] for n in ("query", "key", "value")]
            out[f"{stem}.attn.w_msa.qkv.{q[2]}"] = torch.cat(parts)
            index = torch.arange(state[f"{q[1]}.attention.self.relative_position_bias_table"].shape[0])
            out[f"{stem}.attn.w_msa.relative_position_index"] = index  # persistent in mmsegmentation
            continue
        if re.search(r"\.attention\.self\.(key|value)\.", key):
            continue
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        if key.endswith("downsample.reduction.weight"):
            value = correct_unfold_reduction_order(value)
        elif re.search(r"downsample\.norm\.(weight|bias)$", key):
            value = correct_unfold_norm_order(value)
        out[key] = value
    return out


def test_mmsegmentation_checkpoint_converts(tmp_path):
    src_model = upernet(NANO, hidden=24)
    folder = save(src_model, tmp_path / "hf")
    state = mmseg_layout(load_file(folder / "model.safetensors"))
    pth = tmp_path / "upernet_swin_nano_ade.pth"
    torch.save({"meta": {"CLASSES": tuple(LABELS), "iter": 160000}, "state_dict": state}, pth)
    result = convert(ConvertConfig(pth, tmp_path / "m.safetensors", tile_size=512))
    assert result.model == "swin-nano-upernet" and result.classes.names == LABELS
    assert "ImageNet" in result.normalisation
    assert set(result.report.unused.values()) == {"auxiliary FCN head (training only)", "derived from the window size"}
    model, _ = caswit_geo.load_checkpoint(result.out)
    x = torch.randn(1, 3, 512, 512)
    ref = reference(src_model, x)
    assert_same(max_diffs(ours(model, x), ref), ref[0])


# --- sources that must be refused, with the offending variant / tensor / key named ---------------


def test_unsupported_variant_missing_and_extra_tensors_are_named(tmp_path, capsys):
    mini = save(upernet(dict(MINI, window_size=7), hidden=32), tmp_path / "mini")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(mini), "--out", str(tmp_path / "a.safetensors")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "embed_dim 16, depths [2, 2, 2, 2]" in err and "not one of caswit-geo's variants" in err

    nano = save(upernet(NANO, hidden=24), tmp_path / "nano")
    tensors = load_file(nano / "model.safetensors")
    gone = "backbone.encoder.layers.2.blocks.0.attention.self.key.weight"
    for name, edit in (("missing", lambda t: t.pop(gone)),
                       ("extra", lambda t: t.__setitem__("backbone.encoder.layers.0.blocks.0.gamma", torch.ones(12)))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((nano / "config.json").read_text())
        edited = dict(tensors)
        edit(edited)
        save_file(edited, str(folder / "model.safetensors"))
        out = tmp_path / f"{name}.safetensors"
        with pytest.raises(CheckpointError) as info:
            convert(ConvertConfig(folder, out))
        expected = gone if name == "missing" else "backbone.encoder.layers.0.blocks.0.gamma"
        assert expected in str(info.value) and str(folder) in str(info.value)
        assert not out.exists() and not list(tmp_path.glob(f".{name}*"))  # nothing half-written


@pytest.mark.parametrize("key,value,named", [
    ("use_absolute_embeddings", True, "use_absolute_embeddings"),
    ("patch_size", 8, "patch_size"),
    ("out_features", ["stage2", "stage3", "stage4"], "out_features"),
    ("window_size", "7", "window_size"),
])
def test_bad_config_values_are_named(tmp_path, key, value, named):
    folder = save(upernet(NANO, hidden=24), tmp_path / "nano")
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=named):
        read_upernet(folder)


def test_pth_with_code_is_refused_and_train_checks_the_variant(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    pth = tmp_path / "evil.pth"
    pth.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        read_upernet(pth)

    from caswit_geo.engine.convert import check_upernet_fits

    source = read_upernet(save(upernet(NANO, hidden=24), tmp_path / "nano"))
    check_upernet_fits(source, get_config("caswit-nano"), "--init-upernet")
    with pytest.raises(ConfigError, match="Swin-nano, not the encoders of caswit-tiny; use --model caswit-nano"):
        check_upernet_fits(source, get_config("caswit-tiny"), "--init-upernet")


def test_train_init_upernet_reports_what_it_loaded(tmp_path):
    from caswit_geo.engine.train.training import train

    source = save(upernet(NANO, hidden=24), tmp_path / "upernet-nano")
    root = make_tiles_root(tmp_path / "data", {"a": stripes(), "b": stripes()[::-1].copy()})
    with pytest.raises(ConfigError, match="give one of them"):
        train(nano_train_config(root, tmp_path / "r0", init=tmp_path, init_upernet=source))
    result = train(nano_train_config(root, tmp_path / "run", init_upernet=source, stop_after=1))
    report = result.init_report
    assert report.startswith("loaded the HR and LR encoders") and "decoder and auxiliary LR head" in report
    assert "classifier fresh (3 classes, the source has 5)" in report and "4 fusion blocks fresh" in report
    assert result.model.config.decoder_channels == 24 and result.model.config.stage_norms


def test_segformer_caswit_takes_the_encoders_only(tmp_path):
    src = upernet(dict(MINI, window_size=7), hidden=32)
    state = src.state_dict()
    x = torch.randn(1, 3, 512, 512)
    ref = reference(src, x)
    torch.manual_seed(3)
    model = mini_model(7, 32, fusion_stages="all", decoder="segformer", decoder_dim=40)
    torch.manual_seed(3)
    untouched = mini_model(7, 32, fusion_stages="all", decoder="segformer", decoder_dim=40)
    report = transfer_upernet(model, state, "transformers")
    assert report.encoders == ["HR", "LR"] and report.heads == [] and report.head_tensors == 0
    assert report.fresh_heads == ["segformer decoder", "auxiliary LR head"]
    text = str(report)
    assert text.startswith("loaded the HR and LR encoders (") and "segformer decoder and auxiliary LR head fresh" in text
    head_keys = [k for k in state if k.startswith("decode_head.")]
    assert len(head_keys) > 20 and all(report.unused[k] == "UPerNet decode head (the model's decoder is segformer)"
                                       for k in head_keys)
    b = model.backbone
    with torch.no_grad():
        for enc in (b.hr_encoder, b.lr_encoder):
            stage1 = enc.stage(0, enc.embed(x))
            torch.testing.assert_close(enc.feature(0, stage1), ref[1][0], atol=1e-4, rtol=0)
    fresh = untouched.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("backbone.fusion.", "decoder.", "aux_head.")):
            assert torch.equal(value, fresh[key]), key


def test_train_init_upernet_into_segformer_says_the_decoder_is_fresh(tmp_path, capsys):
    from caswit_geo.engine.train.training import train
    from tests.helpers import make_tiles_root, nano_train_config, stripes

    source = save(upernet(NANO, hidden=32), tmp_path / "upernet-nano")
    root = make_tiles_root(tmp_path / "data", {"a": stripes(), "b": stripes()[::-1].copy()})
    result = train(nano_train_config(root, tmp_path / "run", init_upernet=source, decoder="segformer", stop_after=1))
    report = result.init_report
    assert report.startswith("loaded the HR and LR encoders") and "segformer decoder and auxiliary LR head fresh" in report
    assert f"--init-upernet {source}: {report}" in capsys.readouterr().out
    config = result.model.config
    assert config.decoder == "segformer" and config.decoder_channels == 24  # the model's, not the source's 32
