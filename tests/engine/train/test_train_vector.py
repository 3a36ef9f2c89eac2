"""train --dataset vector: a run from imagery and polygons, samples.png, and a model that learns the classes."""

import json

import pytest

from caswit_geo.data.vector import VectorSource
from caswit_geo.engine.evaluate.evaluation import EvalConfig, evaluate
from caswit_geo.engine.train.training import TrainConfig, train
from caswit_geo.model.checkpoint import read_meta
from tests.helpers import VECTOR_NAMES, run_cli, write_vector_scene
from tests.http_server import ServedFolder


def vector_config(scene, out, **kw):
    settings = dict(model="caswit-nano", dataset="vector", images=(str(scene["images"]),), labels=scene["labels"],
                    class_field="kind", areas=scene["areas"], background="field", out=out, epochs=1, batch_size=2,
                    workers=0, crops_per_image=2, progress=False)
    settings.update(kw)
    return TrainConfig(**settings)


def test_a_run_records_the_classes_and_draws_samples(tmp_path):
    scene = write_vector_scene(tmp_path / "scene", size=(192, 256))
    result = train(vector_config(scene, tmp_path / "run"))
    assert (result.run_dir / "samples.png").stat().st_size > 10_000
    assert read_meta(result.best_checkpoint).classes.names == list(VECTOR_NAMES)
    assert result.history[0]["val_miou"] is not None  # the val area validated


def test_a_run_from_signed_urls_trains_as_from_the_files_and_keeps_no_token(tmp_path, capsys):
    """``train --images URL...``: read by forked workers, the losses of the same run from the files; the
    token in no file of the run, nor in what is printed."""
    scene = write_vector_scene(tmp_path / "scene", size=(192, 256))
    secret = "s1gned-t0ken"

    def argv(out, *images) -> list:
        options = []
        for image in images:
            options += ["--images", image]
        return ["train", "--model", "caswit-nano", "--dataset", "vector", *options, "--labels", scene["labels"],
                "--class-field", "kind", "--areas", scene["areas"], "--background", "field", "--epochs", 1,
                "--batch-size", 2, "--crops-per-image", 2, "--workers", 2, "--out", out, "--no-progress"]

    code, _, err = run_cli(argv(tmp_path / "local", scene["images"] / "west.tif", scene["images"] / "east.tif"),
                           capsys)
    assert code == 0, err
    with ServedFolder(scene["images"], token=secret) as server:
        urls = [server.url(n, token=secret) for n in ("west.tif", "east.tif")]
        code, out, err = run_cli(argv(tmp_path / "served", *urls), capsys)
        assert code == 0, err
        # eval of the test area from the URLs scores as from the files
        scores = []
        for images in (urls, [scene["images"]]):
            code, _, e = run_cli(["eval", "--dataset", "vector", *[w for i in images for w in ("--images", i)],
                                  "--labels", scene["labels"], "--class-field", "kind", "--areas", scene["areas"],
                                  "--background", "field", "--split", "test", "--workers", 2, "--weights",
                                  tmp_path / "served" / "best.safetensors", "--out-dir", tmp_path / f"eval{len(scores)}",
                                  "--no-progress"], capsys)
            assert code == 0, e
            scores.append(json.loads((tmp_path / f"eval{len(scores)}" / "report.json").read_text())["metrics"])
            err += e
        assert scores[0] == scores[1] and scores[0]["mIoU"] is not None
    assert secret not in out + err
    run = tmp_path / "served"
    assert not any(secret.encode() in p.read_bytes() for p in run.rglob("*") if p.is_file())
    settings = json.loads((run / "config.json").read_text())
    assert settings["images"] == [u.split("?")[0] for u in urls]
    losses = [json.loads((tmp_path / r / "log.json").read_text()) for r in ("local", "served")]
    assert losses[0][0]["train_loss"] == losses[1][0]["train_loss"] and losses[0][0]["val_miou"] is not None


@pytest.mark.slow
def test_a_short_run_learns_visible_classes_and_eval_on_the_test_area_shows_it(tmp_path):
    scene = write_vector_scene(tmp_path / "scene", size=(384, 512))
    result = train(vector_config(scene, tmp_path / "run", epochs=4, batch_size=4, crops_per_image=24, lr=1e-3))
    source = VectorSource(images=(str(scene["images"]),), labels=scene["labels"], class_field="kind",
                          areas=scene["areas"], background="field")
    scores = evaluate(EvalConfig(dataset="vector", root=None, weights=result.best_checkpoint, split="test",
                                 workers=0, progress=False, out_dir=tmp_path / "eval", vector=source))
    assert scores.report["evaluated_pixels"] > 0
    assert scores.metrics["mIoU"] > 0.6, scores.metrics
