"""The Table 3 context ablation: its rows, the seeds option and the mean/spread it reports."""

import json
import math

import pytest
import torch

from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.ablation import (
    VARIANTS,
    AblationConfig,
    AblationResult,
    AblationRun,
    aggregate,
    parse_seeds,
    run_ablation,
)
from caswit_geo.model.checkpoint import read_checkpoint, read_meta
from caswit_geo.synthetic import SyntheticConfig, generate_dataset


def test_variants_are_the_rows_of_table_3():
    # the paper's Table 3 (context rows): cross-attention stages, gate, alpha
    table_3 = {
        ("none", False, 0.0),  # Baseline (no CA)
        ("all", True, 0.0),  # All-stage + gating on
        ("all", False, 0.0),  # All-stage, alpha 0
        ("1", False, 0.5),  # Stage-1 fusion only
        ("4", False, 0.5),  # Last-stage fusion only
        ("all", False, 0.5),  # CASWiT
    }
    upernet = [v for v in VARIANTS if v.decoder == "upernet"]
    got = [(v.fusion_stages or "none", bool(v.gate), v.alpha) for v in upernet]
    assert len(got) == 6 and set(got) == table_3
    assert [v.model for v in upernet].count("swin-nano-upernet") == 1  # only the baseline is single-stream
    # with SegFormer: the single stream and CASWiT, to compare like with like
    segformer = [(v.model, v.fusion_stages or "none", bool(v.gate), v.alpha) for v in VARIANTS if v.decoder == "segformer"]
    assert segformer == [("swin-nano-upernet", "none", False, 0.0), ("caswit-nano", "all", False, 0.5)]
    assert len({v.key for v in VARIANTS}) == len(VARIANTS)


@pytest.mark.parametrize("text, first, seeds", [("3", 0, (0, 1, 2)), ("2", 5, (5, 6)), ("0,4,9", 0, (0, 4, 9)),
                                                ("7,", 0, (7,)), ("1 3", 0, (1, 3))])
def test_parse_seeds(text, first, seeds):
    assert parse_seeds(text, first) == seeds


@pytest.mark.parametrize("text", ["0", "x", "1,1", ""])
def test_parse_seeds_rejects(text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def run(variant, seed, miou, park):
    return AblationRun(variant, seed, {"mIoU": miou, "mF1": 0.5, "mBIoU": 0.25, "OA": 0.75, "IoU park": park},
                       val_miou=miou, train_seconds=1.0, checkpoint="x")


def test_aggregate_by_hand():
    runs = [run("all", 0, 0.5, 0.10), run("stage1", 0, 0.40, 0.2), run("all", 1, 0.7, 0.30), run("all", 2, 0.9, 0.20)]
    rows = aggregate(runs)
    assert [r.variant for r in rows] == ["stage1", "all"]  # Table 3 order, not run order
    miou = rows[1].metrics["mIoU"]
    # 0.5, 0.7, 0.9: mean 0.7; sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2
    assert miou.mean == pytest.approx(0.7) and miou.std == pytest.approx(0.2)
    assert (miou.min, miou.max, miou.values) == (0.5, 0.9, [0.5, 0.7, 0.9])
    park = rows[1].metrics["IoU park"]
    assert park.mean == pytest.approx(0.2) and park.std == pytest.approx(0.1)
    assert rows[1].seeds == [0, 1, 2] and rows[1].alpha == 0.5 and rows[1].fusion_stages == "all"
    one = rows[0].metrics["mIoU"]
    assert one.std is None and one.text() == "40.0"
    undefined = aggregate([run("all", 0, 0.5, float("nan")), run("all", 1, 0.7, 0.3)])[0].metrics["IoU park"]
    assert math.isnan(undefined.mean) and undefined.text() == "n/a"  # not averaged away
    md = AblationResult(rows, runs).markdown()
    assert "| all stages (CASWiT) | upernet | all | off | 0.5 | 70.0 ± 20.0 | 50.0 ± 0.0 | 25.0 ± 0.0 | 20.0 ± 10.0 |" in md


def test_context_gain_compares_rows_with_the_same_decoder():
    runs = [run("single-stream", 0, 0.5, 0.25), run("all", 0, 0.6, 0.75), run("all-segformer", 0, 0.7, 0.5),
            run("single-stream-segformer", 0, 0.4, 0.125), run("single-stream-segformer", 1, 0.6, 0.375)]
    result = AblationResult(aggregate(runs), runs)
    assert [r.decoder for r in result.rows] == ["upernet", "upernet", "segformer", "segformer"]
    gains = result.context_gains()
    assert gains["upernet"]["IoU park"] == pytest.approx(0.5) and gains["upernet"]["mIoU"] == pytest.approx(0.1)
    assert gains["segformer"]["IoU park"] == pytest.approx(0.25) and gains["segformer"]["mIoU"] == pytest.approx(0.2)
    assert "segformer" not in AblationResult(aggregate(runs[:3]), runs[:3]).context_gains()
    assert "| single stream (no context) | segformer | none | - | 0 | 50.0 ± 14.1 |" in result.markdown()


def test_run_ablation_tiny(tmp_path):
    """One variant x two seeds, one epoch: the orchestration and the aggregation of what was run."""
    data = tmp_path / "data"
    generate_dataset(SyntheticConfig(seed=3, size=256, train=1, val=1, test=1), data)
    lines = []
    config = AblationConfig(out=tmp_path / "abl", data=data, epochs=1, batch_size=4, augment=False, seeds=(0, 1),
                            workers=0, device="cpu", variants=["all-gate-a0"])
    result = run_ablation(config, report=lines.append)
    assert [(r.variant, r.seed) for r in result.runs] == [("all-gate-a0", 0), ("all-gate-a0", 1)]
    assert [row.variant for row in result.rows] == ["all-gate-a0"] and result.rows[0].seeds == [0, 1]
    assert len(lines) == 2 and lines[1].startswith("[2/2] all stages + gate, upernet, alpha 0, seed 1: mIoU")

    # every run's figures are those its own eval wrote
    for r in result.runs:
        report = json.loads((tmp_path / "abl" / r.variant / f"seed-{r.seed}" / "eval" / "report.json").read_text())
        assert r.metrics["mIoU"] == report["metrics"]["mIoU"]
        park = next(c["iou"] for c in report["classes"] if c["name"] == "park")  # None: undefined (no park)
        assert r.metrics["IoU park"] == pytest.approx(math.nan if park is None else park, nan_ok=True)
    # and each row is their mean and sample std, computed here by hand
    for row in result.rows:
        for name, spread in row.metrics.items():
            a, b = (r.metrics[name] for r in result.runs if r.variant == row.variant)
            assert spread.mean == pytest.approx((a + b) / 2, nan_ok=True)
            assert spread.std == pytest.approx(abs(a - b) / math.sqrt(2), nan_ok=True)
            assert spread.max == pytest.approx(math.nan if math.isnan(a + b) else max(a, b), nan_ok=True)
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert saved["rows"][0]["metrics"]["mIoU"]["mean"] == pytest.approx(result.rows[0].metrics["mIoU"].mean)
    assert saved["spread"] == "sample standard deviation over seeds (ddof 1)"
    assert "± sample standard deviation" in (tmp_path / "abl" / "ablation.md").read_text()
    assert (tmp_path / "abl" / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the gated variant trained at alpha 0 (no LR head) with the gate on
    gated = read_meta(result.runs[0].checkpoint)
    assert gated.config["gate"] is True and gated.config["alpha"] == 0.0 and gated.config["fusion_stages"] == [1, 2, 3, 4]
    assert gated.metadata["training"]["seed"] == 0 and read_meta(result.runs[1].checkpoint).metadata["training"]["seed"] == 1
    # the seeds are really different runs
    w0, _ = read_checkpoint(result.runs[0].checkpoint)
    w1, _ = read_checkpoint(result.runs[1].checkpoint)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_segformer_variant_trains_the_segformer_decoder(tmp_path):
    data = tmp_path / "data"
    generate_dataset(SyntheticConfig(seed=3, size=256, train=1, val=1, test=1), data)
    lines = []
    config = AblationConfig(out=tmp_path / "abl", data=data, epochs=1, batch_size=4, augment=False, seeds=(0,),
                            workers=0, device="cpu", variants=["all-segformer"])
    result = run_ablation(config, report=lines.append)
    meta = read_meta(result.runs[0].checkpoint)
    assert meta.config["decoder"] == "segformer" and meta.config["fusion_stages"] == [1, 2, 3, 4]
    assert meta.config["alpha"] == 0.5 and lines[0].startswith("[1/1] all stages (CASWiT), segformer, alpha 0.5")
    assert "| all stages (CASWiT) | segformer | all | off | 0.5 |" in (tmp_path / "abl" / "ablation.md").read_text()
