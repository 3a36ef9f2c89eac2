"""SegFormer decoder: the folded inference form against the textbook one, and both against
transformers' ``SegformerDecodeHead`` (an independent implementation) with the same weights;
the decoder inside CASWiT, its checkpoints and its bounds."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import caswit_geo
from caswit_geo.core.errors import CheckpointError, ConfigError
from caswit_geo.model import MODEL_CONFIGS, get_config
from caswit_geo.model.caswit import CASWiT
from caswit_geo.model.configs import swin_arch
from caswit_geo.model.decoder import UPerNetDecoder
from caswit_geo.model.segformer import GROUP as SEGFORMER_GROUP
from caswit_geo.model.segformer import SegFormerDecoder

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = ("tiny", "small", "base", "large")


def widths(variant: str) -> list[int]:
    """Stage widths C_1..C_4 of a named Swin variant, from timm."""
    embed_dim = swin_arch(MODEL_CONFIGS[f"caswit-{variant}"])[0]
    return [embed_dim * 2**i for i in range(4)]


def features(dims: list[int], size: tuple[int, int], batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Random stage maps at [1/4, 1/8, 1/16, 1/32] of a ``size`` tile, channels-last in memory as
    the Swin stages hand them over."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return [torch.randn(batch, h >> (2 + i), w >> (2 + i), c, generator=g).permute(0, 3, 1, 2)
            for i, c in enumerate(dims)]


def perturbed(decoder: SegFormerDecoder, seed: int = 0) -> SegFormerDecoder:
    """Biases, BatchNorm affine and running statistics off their initial values: each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        decoder.norm.running_mean.copy_(torch.randn(decoder.embed_dim, generator=g) * 0.3)
        decoder.norm.running_var.copy_(torch.rand(decoder.embed_dim, generator=g) * 1.5 + 0.5)
        decoder.classifier.weight.mul_(4)  # logits of order 1
    return decoder


def textbook(decoder: SegFormerDecoder, feats: list[torch.Tensor]) -> torch.Tensor:
    """Logits of the equations as written (eval mode: dropout off, BatchNorm on its statistics)."""
    with torch.no_grad():
        return decoder.forward_textbook(feats)


def assert_close_relative(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = float(b.abs().max())
    assert scale > 0.5  # logits that mean something
    assert float((a - b).abs().max()) <= rtol * scale, (float((a - b).abs().max()), scale)


# -- the fold --------------------------------------------------------------------------------


@pytest.mark.parametrize("dims,size,d", [
    ([12, 24, 48, 96], (128, 128), 64),  # one group of channels
    ([96, 192, 384, 768], (96, 160), 200),  # two groups, the second partial
    ([16, 32, 64, 128], (100, 52), 384),  # three groups; upsampling factors that are no powers of two
])
def test_folded_form_is_the_textbook_form(dims, size, d):
    assert SEGFORMER_GROUP == 128
    torch.manual_seed(0)
    decoder = perturbed(SegFormerDecoder(dims, d, 7)).eval()
    feats = features(dims, size)
    with torch.no_grad():
        folded = decoder(feats)  # eval, no gradients: the folded form
    assert folded.shape == (2, 7, size[0] // 4, size[1] // 4)
    assert_close_relative(folded, textbook(decoder, feats), 1e-5)
    # in float64 the two differ by rounding only
    decoder64, feats64 = decoder.double(), [f.double() for f in feats]
    with torch.no_grad():
        assert_close_relative(decoder64(feats64), textbook(decoder64, feats64), 1e-12)


def test_folded_form_runs_where_no_gradient_is_needed():
    dims = [12, 24, 48, 96]
    decoder, feats = perturbed(SegFormerDecoder(dims, 32, 3)).eval(), features(dims, (64, 64))
    ran = []
    decoder.fuse.register_forward_hook(lambda *_: ran.append("textbook"))  # the 4D -> D conv runs in it only
    with torch.no_grad():
        decoder(feats)
    with torch.inference_mode():
        decoder(feats)
    assert ran == []
    out = decoder(feats)  # eval with gradients: the textbook form, gradients reach every weight
    out.sum().backward()
    assert ran == ["textbook"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    decoder.train()
    decoder(feats)
    assert ran == ["textbook"] * 2


def test_folded_weights_are_kept_until_a_weight_changes():
    dims = [12, 24, 48, 96]
    decoder, feats = perturbed(SegFormerDecoder(dims, 32, 3)).eval(), features(dims, (64, 64))
    first = decoder.folded_weights()
    assert decoder.folded_weights()[1] is first[1]  # cached
    with torch.no_grad():
        decoder.projections[2].bias.add_(1.0)  # an in-place edit
        assert decoder.folded_weights()[1] is not first[1]
        assert_close_relative(decoder(feats), textbook(decoder, feats), 1e-5)
    other = perturbed(SegFormerDecoder(dims, 32, 3), seed=1)
    decoder.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close_relative(decoder(feats), textbook(other.eval(), feats), 1e-5)
    # an optimiser step in train mode, then inference again
    decoder.train()
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.1)
    decoder(feats).square().mean().backward()
    optimizer.step()
    decoder.eval()
    with torch.no_grad():
        assert_close_relative(decoder(feats), textbook(decoder, feats), 1e-5)
    # an optimiser that writes without counting (fused AdamW): seen at the next change of mode
    decoder.train()
    with torch.no_grad():
        decoder.fuse.weight.data.mul_(0.5)
    decoder.eval()
    with torch.no_grad():
        assert_close_relative(decoder(feats), textbook(decoder, feats), 1e-5)
    # a model made under inference_mode (its tensors count no versions) still runs, uncached
    with torch.inference_mode():
        made = perturbed(SegFormerDecoder(dims, 32, 3)).eval()
        out = made(feats)
    assert made._folded is None
    with torch.no_grad():
        assert_close_relative(out, textbook(made, feats), 1e-5)


def test_folded_weights_stay_in_float32_under_autocast():
    dims = [32, 64, 128, 256]
    decoder, feats = perturbed(SegFormerDecoder(dims, 64, 5)).eval(), features(dims, (64, 64))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(feats)
        assert out.dtype == decoder.forward_textbook(feats).dtype == torch.bfloat16
    weights, bias = decoder.folded_weights()
    assert all(a.dtype == torch.float32 for a in weights) and bias.dtype == torch.float32
    with torch.no_grad():
        assert_close_relative(out.float(), textbook(decoder, feats), 0.05)


def gflop(module, feats) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(feats)
    return counter.get_total_flops() / 1e9


def test_folded_form_costs_what_the_algebra_says_at_512_px():
    # caswit-tiny at 512 px, D = 768, K = 19, counted on the meta device (no arithmetic)
    dims, d, k = widths("tiny"), 768, 19
    with torch.device("meta"):
        decoder = SegFormerDecoder(dims, d, k).eval()
        feats = [torch.empty(1, c, 128 >> i, 128 >> i) for i, c in enumerate(dims)]
    decoder.folded_weights()  # computed once, not per tile
    pixels = [(128 >> i) ** 2 for i in range(4)]
    per_stage = sum(2 * n * c * d for n, c in zip(pixels, dims))  # C_s -> D at each stage's own scale
    classifier = 2 * pixels[0] * d * k
    fuse = 2 * pixels[0] * 4 * d * d  # the 4D -> D conv at 1/4
    assert gflop(decoder, feats) == pytest.approx((per_stage + classifier) / 1e9, rel=1e-9)
    decoder.train()
    assert gflop(decoder, feats) == pytest.approx((per_stage + fuse + classifier) / 1e9, rel=1e-9)
    assert per_stage / 1e9 == pytest.approx(4.5, abs=0.1) and (per_stage + fuse) / 1e9 == pytest.approx(82, abs=1)


# -- against transformers' SegformerDecodeHead --------------------------------------------------


def transformers_head(dims: list[int], d: int, k: int):
    """transformers' head, randomly initialised, then biases and BatchNorm statistics perturbed."""
    from transformers import SegformerConfig
    from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

    config = SegformerConfig(hidden_sizes=dims, num_encoder_blocks=4, decoder_hidden_size=d, num_labels=k,
                             classifier_dropout_prob=0.1)
    head = SegformerDecodeHead(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in head.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        head.batch_norm.running_mean.copy_(torch.randn(d, generator=g) * 0.3)
        head.batch_norm.running_var.copy_(torch.rand(d, generator=g) * 1.5 + 0.5)
        head.classifier.weight.mul_(10)  # logits of order 1
    return head


def from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their keys -> ours: projections, fusion conv (both concatenate deepest first), BatchNorm, classifier."""
    renames = (("linear_projections.", "projections."), (".proj.", "."), ("linear_fuse.", "fuse."),
               ("batch_norm.", "norm."))
    out = {}
    for key, value in state.items():
        for theirs, ours in renames:
            key = key.replace(theirs, ours)
        out[key] = value
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_transformers_segformer_head(variant):
    pytest.importorskip("transformers")
    dims, d, k = widths(variant), 768, 19
    theirs = transformers_head(dims, d, k)
    ours = SegFormerDecoder(dims, d, k).eval()
    ours.load_state_dict(from_transformers(theirs.state_dict()), strict=True)  # every tensor, both ways
    feats = features(dims, (128, 96))
    with torch.no_grad():
        expected = theirs([f.contiguous() for f in feats])
        assert_close_relative(ours(feats), expected, 1e-5)  # folded
    assert_close_relative(textbook(ours, feats), expected, 1e-5)


# -- in CASWiT: named configs, checkpoints, bounds ----------------------------------------------


def test_every_named_config_takes_either_decoder_and_defaults_to_upernet():
    for name, config in MODEL_CONFIGS.items():
        assert config.decoder == "upernet", name
        with torch.device("meta"):
            model = CASWiT(get_config(name, decoder="segformer"))
        assert isinstance(model.decoder, SegFormerDecoder), name
        assert model.decoder.embed_dim == (96 if "nano" in name else 768)
        assert (model.aux_head is None) == (not config.fusion_stages)
        assert model.aux_head is None or isinstance(model.aux_head, SegFormerDecoder)
    model = caswit_geo.build_model("caswit-nano", 4, decoder="segformer", decoder_dim=40)
    assert model.decoder.embed_dim == 40 and model.aux_head.classifier.out_channels == 4
    assert isinstance(caswit_geo.build_model("caswit-nano", 4).decoder, UPerNetDecoder)


def test_caswit_with_segformer_trains_and_infers():
    torch.manual_seed(0)
    model = caswit_geo.build_model("caswit-nano", 5, decoder="segformer")
    hr, lr = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    hr_logits, lr_logits = model(hr, lr)  # train mode: both heads
    assert hr_logits.shape == lr_logits.shape == (2, 5, 128, 128)
    (hr_logits.mean() + lr_logits.mean()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("decoder.", "aux_head.")))
    model.eval()
    with torch.no_grad():
        out = model(hr, lr)
        feats, _ = model.forward_features(hr, lr)
        expected = torch.nn.functional.interpolate(textbook(model.decoder, feats), size=(128, 128),
                                                   mode="bilinear", align_corners=False)
    assert_close_relative(out, expected, 1e-5)


def test_segformer_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = caswit_geo.build_model("caswit-nano", 3, decoder="segformer", decoder_dim=48).eval()
    perturbed(model.decoder)
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    loaded, meta = caswit_geo.load_checkpoint(path)
    assert meta.config["decoder"] == "segformer" and meta.config["decoder_dim"] == 48
    assert isinstance(loaded.decoder, SegFormerDecoder) and loaded.aux_head is None
    hr, lr = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(hr, lr), model(hr, lr), rtol=0, atol=0)


def rewrite_header(src, dst, **config) -> None:
    with safe_open(str(src), "pt") as f:
        header = json.loads(f.metadata()["caswit_geo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["config"].update(config)
    for key in [k for k, v in config.items() if v is None]:
        del header["config"][key]
    save_file(tensors, str(dst), metadata={"caswit_geo": json.dumps(header)})


@pytest.mark.parametrize("config, message", [
    (dict(decoder="SegFormer"), "decoder must be one of upernet, segformer"),
    (dict(decoder="../../etc"), "decoder must be one of upernet, segformer"),
    (dict(decoder=["segformer"]), "decoder must be one of upernet, segformer"),
    (dict(decoder_dim=0), r"decoder_dim must be an integer in 1..2048"),
    (dict(decoder_dim=10**9), r"decoder_dim must be an integer in 1..2048"),
    (dict(decoder_dim=96.5), r"decoder_dim must be an integer in 1..2048"),
    (dict(decoder_dim=True), r"decoder_dim must be an integer in 1..2048"),
    (dict(decoder="upernet"), "weights do not match the caswit-nano config"),  # SegFormer tensors, UPerNet header
    (dict(decoder_dim=64), "weights do not match .* shapes do not match"),
])
def test_checkpoint_header_decoder_fields_are_checked(tmp_path, config, message):
    model = caswit_geo.build_model("caswit-nano", 3, decoder="segformer")
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    rewrite_header(path, tmp_path / "bad.safetensors", **config)
    with pytest.raises(CheckpointError, match=message):
        caswit_geo.load_checkpoint(tmp_path / "bad.safetensors")


def test_checkpoint_without_decoder_fields_is_upernet(tmp_path):
    model = caswit_geo.build_model("caswit-nano", 3)
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    rewrite_header(path, tmp_path / "old.safetensors", decoder=None, decoder_dim=None)
    loaded, meta = caswit_geo.load_checkpoint(tmp_path / "old.safetensors")
    assert isinstance(loaded.decoder, UPerNetDecoder) and meta.config["decoder"] == "upernet"


def test_config_bounds_are_checked_where_the_config_is_made():
    with pytest.raises(ConfigError, match="decoder must be one of upernet, segformer"):
        get_config("caswit-nano", decoder="mask2former")
    with pytest.raises(ConfigError, match="decoder_dim must be an integer in 1..2048"):
        get_config("caswit-nano", decoder_dim=4096)
