"""train --dataset vector: a run from imagery and polygons, samples.png, and a model that learns the classes."""

import pytest

from caswit_geo.data.vector import VectorSource
from caswit_geo.engine.evaluate.evaluation import EvalConfig, evaluate
from caswit_geo.engine.train.training import TrainConfig, train
from caswit_geo.model.checkpoint import read_meta
from tests.helpers import VECTOR_NAMES, write_vector_scene


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
