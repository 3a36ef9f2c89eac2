"""CASWiT wiring: LR effect, single-stream baseline, aux head, named configs."""

import pytest
import timm
import torch

import caswit_geo
from caswit_geo.core.errors import ConfigError
from caswit_geo.model import MODEL_CONFIGS, CASWiT, get_config, parse_fusion_stages
from caswit_geo.model.encoder import SwinEncoder


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    return torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)


def test_changing_lr_changes_hr_logits_with_fusion(inputs):
    hr, lr1, lr2 = inputs
    torch.manual_seed(0)
    model = caswit_geo.build_model("caswit-nano", num_classes=5).eval()
    with torch.no_grad():
        out1, out2 = model(hr, lr1), model(hr, lr2)
    assert out1.shape == (2, 5, 128, 128)
    assert (out1 - out2).abs().max() > 1e-4


@pytest.mark.parametrize("stages", ["1", "4", "2,3"])
def test_each_fusion_subset_injects_context(inputs, stages):
    hr, lr1, lr2 = inputs
    model = caswit_geo.build_model("caswit-nano", num_classes=3, fusion_stages=stages).eval()
    assert sorted(model.backbone.fusion.keys()) == sorted(stages.split(","))
    with torch.no_grad():
        assert (model(hr, lr1) - model(hr, lr2)).abs().max() > 1e-5


def test_fusion_none_has_no_lr_encoder_and_ignores_lr(inputs):
    hr, lr1, lr2 = inputs
    model = caswit_geo.build_model("swin-nano-upernet", num_classes=4).eval()
    assert model.backbone.lr_encoder is None and len(model.backbone.fusion) == 0 and model.aux_head is None
    with torch.no_grad():
        a, b, c = model(hr, lr1), model(hr, lr2), model(hr)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    model.train()
    hr_logits, lr_logits = model(hr, lr1)
    assert hr_logits.shape == (2, 4, 128, 128) and lr_logits is None


def test_aux_head_trains_but_never_runs_at_inference(inputs):
    hr, lr, _ = inputs
    model = caswit_geo.build_model("caswit-nano", num_classes=3)
    model.train()
    hr_logits, lr_logits = model(hr, lr)
    assert lr_logits.shape == hr_logits.shape == (2, 3, 128, 128)

    def boom(*_):
        raise AssertionError("aux head ran at inference")

    model.aux_head.register_forward_hook(boom)
    model.eval()
    with torch.no_grad():
        out = model(hr, lr)
    assert out.shape == (2, 3, 128, 128)


def test_lr_encoder_runs_only_up_to_the_last_fused_stage_at_inference(inputs):
    hr, lr, _ = inputs
    model = caswit_geo.build_model("caswit-nano", num_classes=3, fusion_stages="1").eval()
    ran = []
    for i, layer in enumerate(model.backbone.lr_encoder.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    with torch.no_grad():
        model(hr, lr)
    assert ran == [0]


def test_inference_checkpoint_without_aux_head_gives_same_logits(tmp_path, inputs):
    hr, lr, _ = inputs
    model = caswit_geo.build_model("caswit-nano", num_classes=3).eval()
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    loaded, _ = caswit_geo.load_checkpoint(path)
    assert loaded.aux_head is None
    with torch.no_grad():
        torch.testing.assert_close(model(hr, lr), loaded(hr, lr))


def test_forward_backward_nano(inputs):
    hr, lr, _ = inputs
    model = caswit_geo.build_model("caswit-nano", num_classes=6, gate=True)
    hr_logits, lr_logits = model(hr, lr)
    (hr_logits.mean() + lr_logits.mean()).backward()
    assert all(
        p.grad is not None for n, p in model.named_parameters() if not n.startswith("backbone.fusion")
    )


def test_nano_is_small():
    counts = caswit_geo.build_model("caswit-nano", num_classes=10).parameter_counts()
    assert 100_000 < counts["inference_total"] < 1_000_000


def test_parse_fusion_stages():
    assert parse_fusion_stages("none") == ()
    assert parse_fusion_stages("all") == (1, 2, 3, 4)
    assert parse_fusion_stages("4,1") == (1, 4)
    assert parse_fusion_stages(4) == (4,)
    with pytest.raises(ConfigError, match=r"fusion stages must be among 1\.\.4, got \[5\]"):
        parse_fusion_stages("5")
    with pytest.raises(ConfigError, match="fusion stages must be none, all or a list like 1,4; got 'first'"):
        parse_fusion_stages("first")


def test_unknown_model_and_bad_tile_size():
    with pytest.raises(ConfigError, match="unknown model"):
        get_config("caswit-huge")
    with pytest.raises(ConfigError, match="multiple of 32"):
        get_config("caswit-nano", img_size=100)


def test_named_configs_exist():
    for variant in ("nano", "tiny", "small", "base", "large"):
        assert MODEL_CONFIGS[f"caswit-{variant}"].fusion_stages == (1, 2, 3, 4)
        assert MODEL_CONFIGS[f"swin-{variant}-upernet"].fusion_stages == ()


# timm's own encoders (without their classifier norm, which CASWiT drops, plus
# one LayerNorm per stage output) and the per-encoder sizes of the paper, in millions.
@pytest.mark.parametrize(
    "variant,expected_m,window",
    [("tiny", 27.5, 7), ("small", 48.8, 7), ("base", 86.9, 12), ("large", 195.2, 12)],
)
def test_encoder_parameter_counts_match_timm(variant, expected_m, window):
    cfg = MODEL_CONFIGS[f"caswit-{variant}"]
    with torch.device("meta"):
        ours = CASWiT(cfg).parameter_counts()
        ref = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, img_size=512)
    ref_count = sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in ref.norm.parameters())
    stage_norms = sum(2 * info["num_chs"] for info in ref.feature_info)
    assert ours["hr_encoder"] == ours["lr_encoder"] == ref_count + stage_norms
    assert round(ref_count / 1e6, 1) == pytest.approx(expected_m, abs=0.11)
    assert ref.layers[0].blocks[0].window_size == (window, window)
    single = CASWiT(MODEL_CONFIGS[f"swin-{variant}-upernet"]) if variant == "tiny" else None
    if single is not None:
        assert single.parameter_counts()["lr_encoder"] == 0


def test_backbone_weights_from_local_timm_file(tmp_path):
    # a timm-format file written here stands in for a user's ImageNet download
    cfg = MODEL_CONFIGS["caswit-nano"]
    src = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, img_size=128, **cfg.arch_overrides)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "swin.safetensors"))
    enc = SwinEncoder(cfg.backbone, 128, weights=tmp_path / "swin.safetensors", arch_overrides=cfg.arch_overrides)
    torch.testing.assert_close(enc.patch_embed.proj.weight, src.patch_embed.proj.weight)
    torch.testing.assert_close(
        enc.layers[3].blocks[0].mlp.fc2.weight, src.layers[3].blocks[0].mlp.fc2.weight
    )
    model = caswit_geo.build_model("caswit-nano", 3, backbone_weights=tmp_path / "swin.safetensors")
    torch.testing.assert_close(model.backbone.lr_encoder.patch_embed.proj.weight, src.patch_embed.proj.weight)


def test_missing_backbone_weights_is_a_clear_error(tmp_path):
    from caswit_geo.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        caswit_geo.build_model("caswit-nano", 3, backbone_weights=tmp_path / "none.pth")


def test_stage_norms_sit_between_the_branches_and_the_heads(inputs):
    # decoder reads LN_s(H~_s) (after fusion), the aux head LN_s(X^LR_s); stage s+1 and fusion take the un-normed features
    hr, lr, _ = inputs
    model = caswit_geo.build_model("caswit-nano", num_classes=3).train()  # train mode: the aux head runs
    b = model.backbone
    fused, lr_out, next_in, heads = {}, {}, {}, {}
    for s in range(4):
        b.fusion[str(s + 1)].register_forward_hook(lambda m, a, o, s=s: fused.__setitem__(s, o))
        b.lr_encoder.layers[s].register_forward_hook(lambda m, a, o, s=s: lr_out.__setitem__(s, o))
        b.hr_encoder.layers[s].register_forward_pre_hook(lambda m, a, s=s: next_in.__setitem__(s, a[0]))
    model.decoder.register_forward_pre_hook(lambda m, a: heads.__setitem__("hr", a[0]))
    model.aux_head.register_forward_pre_hook(lambda m, a: heads.__setitem__("lr", a[0]))
    with torch.no_grad():
        model(hr, lr)
    for s in range(4):
        expected = b.hr_encoder.stage_norms[s](fused[s]).permute(0, 3, 1, 2)
        torch.testing.assert_close(heads["hr"][s], expected)
        torch.testing.assert_close(heads["lr"][s], b.lr_encoder.stage_norms[s](lr_out[s]).permute(0, 3, 1, 2))
        if s < 3:
            assert torch.equal(next_in[s + 1], fused[s])
    assert not torch.allclose(heads["hr"][0], fused[0].permute(0, 3, 1, 2))  # the norm does act
