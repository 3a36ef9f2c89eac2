"""``--precision``: the auto rule per device and model, CPU feature probes, autocast, the CLI alias."""

import types
import warnings

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

import caswit_geo
from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.evaluate.metrics import ConfusionMatrix, iou_per_class
from caswit_geo.engine.predict import PredictConfig, predict
from caswit_geo.engine.train.config import make_config
from caswit_geo.engine.train.training import TrainConfig
from caswit_geo.model.weights import weights_dir
from caswit_geo.runtime import precision as precision_module
from caswit_geo.runtime.precision import (
    MIN_BF16_WIDTH,
    CpuFeatures,
    Precision,
    detect_cpu_features,
    features_from_flags,
    matmul_width,
    prepare_inference,
    resolve_precision,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AMX = CpuFeatures(amx_bf16=True, avx512_bf16=True)
AVX512_BF16_ONLY = CpuFeatures(avx512_bf16=True)
PLAIN = CpuFeatures()


def wide_nano(embed_dim: int) -> nn.Module:
    """caswit-nano's layout at another width (the rule looks at the narrowest linear layer)."""
    heads = tuple(max(1, embed_dim * 2**i // 32) for i in range(4))
    return caswit_geo.build_model("caswit-nano", 3, arch_overrides=dict(
        embed_dim=embed_dim, depths=(1, 1, 1, 1), num_heads=heads, window_size=4))


@pytest.fixture(scope="module")
def nano():
    return caswit_geo.build_model("caswit-nano", 3)


def test_matmul_width_is_the_stage_one_width(nano):
    assert matmul_width(nano) == 12  # caswit-nano: 12-24-48-96 channels
    assert matmul_width(wide_nano(32)) == 32
    assert matmul_width(nn.Conv2d(3, 8, 3)) is None


@pytest.mark.parametrize(
    "cpu,width,expected,why",
    [
        (AMX, 32, "bf16", "CPU with AMX bf16, m is 32 channels wide"),
        (AMX, 12, "fp32", "m is 12 channels wide, bf16 pays from 32"),
        (AVX512_BF16_ONLY, 32, "fp32", "CPU without AMX bf16 tiles (avx512_bf16)"),
        (PLAIN, 32, "fp32", "CPU without AMX bf16 tiles (no bf16)"),
    ],
)
def test_auto_on_the_cpu_needs_matrix_units_and_a_wide_model(cpu, width, expected, why, nano):
    model = nano if width == 12 else wide_nano(width)
    p = resolve_precision("auto", CPU, model, model_name="m", cpu=cpu)
    assert (p.name, p.reason) == (expected, "auto: " + why)
    assert p.describe() == f"{expected} (auto: {why})"
    assert not p.needs_loss_scaling


def test_threshold_sits_between_the_measured_widths():
    # caswit-nano (12 channels) ran slower in bf16, the 32-channel variant faster (precision.py's table)
    assert 12 < MIN_BF16_WIDTH <= 32


@pytest.mark.parametrize("native,expected,scaling", [(True, "bf16", False), (False, "fp16", True)])
def test_auto_on_cuda_prefers_native_bf16_else_fp16_with_loss_scaling(native, expected, scaling, nano):
    p = resolve_precision("auto", CUDA, nano, cuda_bf16=native)
    assert p.name == expected and p.device_type == "cuda" and p.reason.startswith("auto: ")
    assert p.needs_loss_scaling is scaling
    assert p.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]


def test_explicit_requests_are_honoured_and_warn_when_emulated(nano):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("FP32", CPU, nano, cpu=AMX) == Precision("fp32", "cpu", "requested")
        assert resolve_precision("bf16", CPU, nano, cpu=AMX).name == "bf16"  # forced below the width threshold
    with pytest.warns(UserWarning, match="bf16: this CPU has no bf16 instructions"):
        assert resolve_precision("bf16", CPU, nano, cpu=PLAIN).name == "bf16"
    with pytest.warns(UserWarning, match="fp16: this CPU has no fp16"):
        resolve_precision("fp16", CPU, nano, cpu=AMX)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_precision("bf16", CUDA, nano, cuda_bf16=False).name == "bf16"
    assert resolve_precision("fp16", CUDA, nano, cuda_bf16=True).needs_loss_scaling


def test_bad_value_names_the_option(nano):
    with pytest.raises(ConfigError, match=r"--precision must be one of auto, fp32, bf16, fp16, got 'half'"):
        resolve_precision("half", CPU, nano)


def test_autocast_computes_linear_layers_in_the_chosen_dtype():
    layer, x = nn.Linear(64, 64), torch.randn(2, 64)
    with Precision("bf16", "cpu", "requested").autocast():
        assert layer(x).dtype == torch.bfloat16
    with Precision("fp32", "cpu", "requested").autocast():
        assert layer(x).dtype == torch.float32


def test_prepare_inference_keeps_the_maths(nano, tmp_path):
    import copy

    torch.manual_seed(0)
    hr, lr = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    fp32, bf16 = Precision("fp32", "cpu", "requested"), Precision("bf16", "cpu", "requested")

    def run(model, precision):
        with torch.inference_mode(), precision.autocast():
            return model(hr, lr).float()

    def fused(model):
        attention = [m for m in model.modules() if hasattr(m, "relative_position_bias_table")]
        assert attention
        return all(m.fused_attn for m in attention)

    # a model too narrow for the fused kernel to pay on the CPU keeps timm's plain path
    assert not fused(prepare_inference(copy.deepcopy(nano).eval(), fp32))
    assert fused(prepare_inference(copy.deepcopy(nano).eval(), Precision("fp32", "cuda", "requested")))
    wide = wide_nano(32).eval()
    for precision in (fp32, bf16):
        prepared = prepare_inference(copy.deepcopy(wide).eval(), precision)
        assert fused(prepared)  # window attention through SDPA
        weight = prepared.decoder.fuse[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == (precision is bf16)
        ref, got = run(wide, precision), run(prepared, precision)
        if precision is fp32:  # the same maths: fp32 logits to rounding, identical classes
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            assert torch.equal(got.argmax(1), ref.argmax(1))
        else:  # the decoder layout changes nothing, bit for bit; fused attention rounds its bias in bf16
            fused_only = copy.deepcopy(wide).eval()
            fused_only.set_fused_attention(True)
            assert torch.equal(got, run(fused_only, bf16))
            assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.98
    # a prepared model still saves and reloads (safetensors wants contiguous tensors)
    caswit_geo.save_checkpoint(prepared, tmp_path / "p.safetensors")
    reloaded, _ = caswit_geo.load_checkpoint(tmp_path / "p.safetensors")
    weights = wide.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in reloaded.state_dict().items())


def test_features_from_torch_capabilities_mapping():
    caps = types.MappingProxyType({"amx_bf16": True, "avx512_bf16": True, "amx_fp16": False, "avx512_fp16": True,
                                   "num_logical_cores": 2})  # what torch.cpu.get_capabilities() returns
    assert features_from_flags(caps) == CpuFeatures(amx_bf16=True, avx512_bf16=True, avx512_fp16=True)
    assert features_from_flags({"avx512_bf16"}) == AVX512_BF16_ONLY


def test_features_from_cpuinfo_flags_when_torch_has_no_probe(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    monkeypatch.setattr(precision_module, "CPUINFO", info)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    detect_cpu_features.cache_clear()
    try:
        assert detect_cpu_features() == CpuFeatures(amx_bf16=True, avx512_bf16=True)
        info.write_text("processor\t: 0\nFeatures\t: fp asimd asimdhp sve bf16 i8mm\n")  # an Arm server
        detect_cpu_features.cache_clear()
        assert detect_cpu_features() == CpuFeatures(arm_bf16=True, arm_fp16=True)
        assert resolve_precision("auto", CPU, wide_nano(32), cpu=detect_cpu_features()).name == "fp32"  # unmeasured
        monkeypatch.setattr(precision_module, "CPUINFO", tmp_path / "missing")
        detect_cpu_features.cache_clear()
        assert detect_cpu_features() == PLAIN
    finally:
        detect_cpu_features.cache_clear()


def test_torch_probe_agrees_with_the_kernel_flags():
    try:
        text = precision_module.CPUINFO.read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next((line.partition(":")[2].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), None)
    if flags is None or not hasattr(torch.cpu, "get_capabilities"):
        pytest.skip("no x86 flags line, or no torch CPU probe")
    detect_cpu_features.cache_clear()
    assert detect_cpu_features() == features_from_flags(set(flags))


def test_no_amp_on_the_command_line_is_precision_fp32(tmp_path):
    from caswit_geo.cli.run_options import build_config

    cfg = build_config(TrainConfig, "train", None, {"dataset": "tiles", "amp": False, "precision": None})
    assert cfg.requested_precision() == "fp32" and cfg.command.endswith("--no-amp")
    cfg = build_config(TrainConfig, "train", None, {"dataset": "tiles", "precision": "bf16"})
    assert cfg.requested_precision() == "bf16"


def test_train_config_keeps_the_deprecated_amp_key():
    # config.json of a run from before --precision: amp true/false, no precision key
    assert make_config(TrainConfig, {"amp": True}).requested_precision() == "auto"
    assert make_config(TrainConfig, {"amp": False}).requested_precision() == "fp32"
    assert make_config(TrainConfig, {"amp": False, "precision": "fp32"}).requested_precision() == "fp32"
    with pytest.raises(ConfigError, match="--no-amp contradicts --precision bf16"):
        make_config(TrainConfig, {"amp": False, "precision": "bf16"}).requested_precision()
    with pytest.raises(ConfigError, match="--precision must be one of"):
        make_config(TrainConfig, {"precision": "double"}).requested_precision()


# -- quality guard on the shipped sample -----------------------------------------------------------

SAMPLE = weights_dir().parent / "examples" / "sample_ortho.tif"
SAMPLE_LABELS = weights_dir().parent / "examples" / "sample_ortho_labels.tif"


@pytest.mark.skipif(not detect_cpu_features().bf16,
                    reason="this CPU has no bf16 instructions (avx512_bf16 or AMX): bf16 would only be emulated")
def test_bf16_map_of_the_shipped_sample_agrees_with_fp32(tmp_path):
    maps = {}
    for name in ("fp32", "bf16"):  # forced: auto keeps caswit-nano in fp32
        res = predict(PredictConfig(inputs=[SAMPLE], out=tmp_path / f"{name}.tif", precision=name, workers=0,
                                    progress=False))
        assert res.precision == f"{name} (requested)"
        with rasterio.open(res.outputs[0]) as src:
            assert src.tags()["CASWIT_PRECISION"] == name
            maps[name] = src.read(1)
    agreement = float((maps["bf16"] == maps["fp32"]).mean())
    assert agreement >= 0.99, f"bf16 agrees with fp32 on {100 * agreement:.2f} % of the pixels"
    with rasterio.open(SAMPLE_LABELS) as src:
        labels = src.read(1)
    for name, pred in maps.items():  # and both keep the shipped model's quality
        cm = ConfusionMatrix(8)
        cm.update(labels, pred)
        assert np.nanmean(iou_per_class(cm.matrix)) >= 0.65, name


def test_bad_precision_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, capsys):
    from caswit_geo.cli import main

    for argv in (["predict", str(SAMPLE), "--out", str(tmp_path / "lc.tif"), "--precision", "half"],
                 ["train", "--dataset", "tiles", "--root", str(tmp_path), "--out", str(tmp_path / "run"),
                  "--precision", "double"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and "--precision must be one of auto, fp32, bf16, fp16" in err
        assert err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []
