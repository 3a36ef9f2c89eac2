"""`caswit-geo info` and the CLI's error contract."""

import json

import pytest

import caswit_geo
from caswit_geo.cli import main
from caswit_geo.model import MODEL_CONFIGS
from tests.helpers import run_cli


def test_info_list_json_has_every_named_config(capsys):
    code, out, _ = run_cli(["info", "--list", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(MODEL_CONFIGS)
    nano = next(r for r in rows if r["name"] == "caswit-nano")
    assert nano["parameters"] == caswit_geo.build_model("caswit-nano", 19).parameter_counts()["inference_total"]


def test_info_checkpoint_reports_components_classes_and_input(tmp_path, capsys):
    from caswit_geo.core.spec import InputSpec

    model = caswit_geo.build_model("caswit-nano", num_classes=4, fusion_stages="4")
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors",
                                      input_spec=InputSpec(tile_size=128, context_factor=2, gsd=0.5))
    code, out, _ = run_cli(["info", str(path), "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    counts = model.parameter_counts()
    assert d["parameters"]["hr_encoder"] == counts["hr_encoder"]
    assert d["parameters"]["fusion"] == counts["fusion"]
    assert d["parameters"]["aux_head"] == 0  # inference checkpoints carry no aux head
    assert d["config"]["fusion_stages"] == [4]
    assert len(d["classes"]) == 4 and d["tile_size"] == 128 and d["context_factor"] == 2 and d["gsd"] == 0.5
    code, out, _ = run_cli(["info", str(path)], capsys)
    assert code == 0 and "hr_encoder" in out and "context factor 2" in out


def test_unknown_target_is_one_line_error(capsys):
    code, out, err = run_cli(["info", "no-such-model"], capsys)
    assert code == 1
    assert err.strip().count("\n") == 0 and "no-such-model" in err and "Traceback" not in err


def test_corrupt_checkpoint_is_one_line_error_and_debug_shows_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    code, _, err = run_cli(["info", str(bad)], capsys)
    assert code == 1 and "bad.safetensors" in err and err.strip().count("\n") == 0
    from caswit_geo.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="bad.safetensors"):
        main(["info", str(bad), "--debug"])


def test_info_names_the_decoder(tmp_path, capsys):
    code, out, _ = run_cli(["info", "--list", "--json"], capsys)
    assert code == 0 and {r["decoder"] for r in json.loads(out)} == {"upernet"}
    code, out, _ = run_cli(["info", "--list"], capsys)
    assert code == 0 and "decoder" in out and "upernet" in out
    code, out, _ = run_cli(["info", "caswit-tiny"], capsys)
    assert code == 0 and "decoder upernet (width 512)" in out
    model = caswit_geo.build_model("caswit-nano", num_classes=4, decoder="segformer")
    path = caswit_geo.save_checkpoint(model, tmp_path / "m.safetensors")
    code, out, _ = run_cli(["info", str(path)], capsys)
    assert code == 0 and "decoder segformer (width 96)" in out
    code, out, _ = run_cli(["info", str(path), "--json"], capsys)
    d = json.loads(out)
    assert d["config"]["decoder"] == "segformer" and d["parameters"]["decoder"] == model.parameter_counts()["decoder"]
