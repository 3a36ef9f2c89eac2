"""predict as a job: resume after Ctrl-C, --stop-after or kill -9, shards, torchrun, COG outputs, --dry-run.

Every "identical" below compares class and confidence arrays, tags, colour
tables, band descriptions, layout and legend sidecar with an uninterrupted
single-process run. On the CPU the number of threads changes the last bits
of the sums, so every run here uses one thread (``OMP_NUM_THREADS=1`` in
subprocesses).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from caswit_geo.cli import main
from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.engine.predict import units as units_module
from caswit_geo.engine.predict.job import Job
from caswit_geo.geo.class_raster import read_pam_categories
from caswit_geo.geo.pyramid import levels_for, majority2, mean2, pyramid
from tests.helpers import (
    GSD,
    PREDICT_CLASSES,
    grid_transform,
    interrupt_forward_pass,
    rgb_image,
    run_cli,
    run_predict,
    write_geotiff,
    write_on_grid,
)
from tests.hostile import snapshot

REPO = Path(__file__).resolve().parents[3]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="200")


pytestmark = pytest.mark.usefixtures("single_thread")


def mosaic(folder: Path, size: int, file_size: int, seed: int = 0) -> Path:
    """``size`` x ``size`` RGB mosaic as a grid of ``file_size`` px GeoTIFFs (some nodata)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = rgb_image(size, size, seed)
    data[:, : size // 8, : size // 5] = 0
    for r in range(0, size, file_size):
        for c in range(0, size, file_size):
            write_on_grid(folder / f"t_{r:05d}_{c:05d}.tif", data[:, r : r + file_size, c : c + file_size], nodata=0,
                          col=c, row=r)
    return folder


def raster_state(path: Path) -> dict:
    """Everything a user can see of an output raster."""
    with rasterio.open(path) as src:
        return dict(
            data=src.read(), tags=src.tags(), structure=src.tags(ns="IMAGE_STRUCTURE"), crs=src.crs,
            transform=src.transform, nodata=src.nodata, descriptions=src.descriptions,
            colormap=src.colormap(1) if src.colorinterp[0].name == "palette" else None,
            overviews=src.overviews(1), blocks=src.block_shapes, ov=src.read(1, out_shape=(1, 8, 8)),
            legend=read_pam_categories(path),
        )


def assert_same_raster(a: Path, b: Path) -> None:
    sa, sb = raster_state(a), raster_state(b)
    for key in sa:
        if isinstance(sa[key], np.ndarray):
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=f"{a.name} {key}")
        else:
            assert sa[key] == sb[key], f"{a.name} {key}"


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def small_job_argv(tiles: Path, out: Path, weights: Path) -> list[str]:
    """``predict`` of the small mosaic into ``out``: one tile per unit, in this process."""
    return ["predict", str(tiles), "--out", str(out / "map.tif"), "--confidence", str(out / "conf.tif"),
            "--probabilities", str(out / "prob.tif"),
            "--weights", str(weights), "--unit-size", "128", "--batch-size", "1", "--workers", "0", "--quiet"]


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "caswit_geo", "predict", *map(str, argv)]


@pytest.fixture(scope="module")
def small(tmp_path_factory, weights):
    """A 384 x 384 mosaic of 9 files and its uninterrupted outputs (units of one 128 px tile)."""
    root = tmp_path_factory.mktemp("small")
    tiles = mosaic(root / "tiles", 384, 128, seed=11)
    ref = root / "ref"
    ref.mkdir()
    run_predict(weights, [tiles], ref / "map.tif", confidence=ref / "conf.tif", probabilities=ref / "prob.tif", unit_size=128, batch_size=1)
    return tiles, ref


def assert_same_as_reference(ref: Path, out: Path) -> None:
    assert_same_raster(ref / "map.tif", out / "map.tif")
    assert_same_raster(ref / "conf.tif", out / "conf.tif")
    assert_same_raster(ref / "prob.tif", out / "prob.tif")
    assert visible(out) == ["conf.qml", "conf.tif", "map.qml", "map.tif", "map.tif.aux.xml", "prob.qml", "prob.tif"]
    for name in ("conf.qml", "map.qml", "prob.qml"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no job, claim, lock or temporary


def unit_events(job: Job) -> dict:
    """Per process token: the units it started and the units it finished."""
    out: dict = {}
    for e in job.events():
        d = out.setdefault(e["token"], {"started": [], "finished": []})
        if e["event"] == "unit-start":
            d["started"].append(e["unit"])
        elif e["event"] == "unit":
            d["finished"].append(e["unit"])
    return out


# -- resume ---------------------------------------------------------------------------------------------


def test_ctrl_c_then_resume_redoes_nothing_and_equals_one_run(tmp_path, weights, small, monkeypatch):
    tiles, ref = small
    out = tmp_path / "out"
    out.mkdir()
    _, real = interrupt_forward_pass(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run_predict(weights, [tiles], out / "map.tif", confidence=out / "conf.tif", probabilities=out / "prob.tif", unit_size=128, batch_size=1)
    job = Job(out / ".map.tif.caswit-job", {})
    done = job.done_units()
    assert len(done) == 4 and visible(out) == []  # one tile per unit: four units, nothing at the destination
    monkeypatch.setattr(units_module, "predict_probabilities", real)
    with pytest.raises(OutputError, match="interrupted job exists.*--resume.*--overwrite"):
        run_predict(weights, [tiles], out / "map.tif", confidence=out / "conf.tif", probabilities=out / "prob.tif", unit_size=128, batch_size=1)
    res = run_predict(weights, [tiles], out / "map.tif", confidence=out / "conf.tif", probabilities=out / "prob.tif", unit_size=128, batch_size=1,
                      resume=True)
    assert res.complete and (res.units, res.units_run, res.units_before) == (9, 5, 4)
    assert_same_as_reference(ref, out)


def test_resampled_job_of_an_earlier_release_is_not_continued(tmp_path, weights, small, monkeypatch):
    """Earlier releases let GDAL resample (other pixels) and stored resample: true; those units are not mixed."""
    tiles, _ = small
    interrupt_forward_pass(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run_predict(weights, [tiles], tmp_path / "map.tif", resample=True, unit_size=128, batch_size=1)
    monkeypatch.undo()
    plan_file = tmp_path / ".map.tif.caswit-job" / "plan.json"
    stored = json.loads(plan_file.read_text())
    assert stored["pixels"]["resample"] == "warp"
    stored["pixels"]["resample"] = True
    plan_file.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="--resample is 'warp' but the interrupted job used True"):
        run_predict(weights, [tiles], tmp_path / "map.tif", resample=True, unit_size=128, batch_size=1, resume=True)


@pytest.mark.parametrize("lr_ahead", [units_module.LR_AHEAD_BYTES, 1])
def test_stop_after_ends_between_units_and_resume_finishes(tmp_path, weights, small, capsys, monkeypatch, lr_ahead):
    # lr_ahead 1: the pre-pass (its chunks in memory, tiles read in this process) holds back after each of
    # its small chunks, and is waiting when the run stops: it is cancelled, not waited for
    monkeypatch.setattr(units_module, "LR_AHEAD_BYTES", lr_ahead)
    if lr_ahead == 1:
        plan_lowres = units_module.plan_lowres
        monkeypatch.setattr(units_module, "plan_lowres", lambda *a: plan_lowres(*a, chunk=(16, 16)))
    tiles, ref = small
    out = tmp_path / "out"
    out.mkdir()
    argv = small_job_argv(tiles, out, weights)
    code, _, err = run_cli(argv + ["--stop-after", "0"], capsys)
    assert code == 75, err
    assert "stopped after 0: 8 of 9 units left" in err and "--resume" in err
    assert visible(out) == []
    assert run_cli(argv + ["--resume"], capsys)[0] == 0
    assert_same_as_reference(ref, out)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before the moment to kill it")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the moment to kill the run")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("moment", [
    pytest.param("prepass", marks=pytest.mark.slow),  # the plan is written, no unit finished yet
    "units",  # a third of the units finished
    pytest.param("finalize", marks=pytest.mark.slow),  # every unit done, outputs being assembled
])
def test_kill_9_then_resume(tmp_path, weights, small, moment):
    tiles, ref = small
    out = tmp_path / "out"
    out.mkdir()
    # a reader process: it outlives the killed run a moment, which must not keep the job looking alive
    base = cli(tiles, "--out", out / "map.tif", "--confidence", out / "conf.tif", "--probabilities", out / "prob.tif", "--weights", weights,
               "--unit-size", 128, "--batch-size", 1, "--workers", 1, "--quiet")
    job = Job(out / ".map.tif.caswit-job", {})
    if moment == "finalize":
        subprocess.run(base + ["--no-finalize"], env=ENV, check=True, capture_output=True)
        proc = subprocess.Popen(base + ["--finalize", "--vector", out / "map.gpkg", "--preview", out / "map.png"],
                                env=ENV, stderr=subprocess.PIPE)
        _kill_when(proc, lambda: glob.glob(str(out / ".map.tif.caswit-*.part.tif")))
    else:
        proc = subprocess.Popen(base, env=ENV, stderr=subprocess.PIPE)
        if moment == "prepass":
            _kill_when(proc, lambda: (job.dir / "plan.json").exists())
        else:
            _kill_when(proc, lambda: len(job.done_units()) >= 3)
    done_at_kill = job.done_units()
    assert visible(out) == []  # nothing at the destination before the final commit
    if moment != "finalize":
        killed = unit_events(job)  # empty when killed before its first unit started
        assert len(killed) <= 1
        subprocess.run(base + ["--resume", "--no-finalize"], env=ENV, check=True, capture_output=True)
        events = unit_events(job)
        (resumed,) = set(events) - set(killed)
        dead = events[next(iter(killed))] if killed else {"started": [], "finished": []}
        # a unit is done when its part file is in place; its log line follows, so a kill between
        # the two leaves at most one done unit that the killed run's log does not call finished
        assert set(dead["finished"]) <= done_at_kill and len(done_at_kill - set(dead["finished"])) <= 1
        assert done_at_kill <= set(dead["started"])
        assert not set(events[resumed]["started"]) & done_at_kill  # no finished unit computed again
        assert sorted(done_at_kill | set(events[resumed]["finished"])) == list(range(9))  # every unit...
        assert len(done_at_kill) + len(events[resumed]["finished"]) == 9  # ...once
        in_flight = set(dead["started"]) - done_at_kill
        assert len(in_flight) <= 2  # the work lost: the units the killed run had started
        with pytest.raises(SystemExit) as exc:  # assemble in this process (another owner than both runs)
            main(["predict", *map(str, base[4:]), "--finalize"])
        assert exc.value.code == 0
    else:
        assert done_at_kill == set(range(9))
        litter = [p.name for p in out.iterdir() if ".part" in p.name]
        assert litter  # the killed assembly left temporaries, which the next run removes
        res = subprocess.run(base + ["--resume"], env=ENV, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    assert_same_as_reference(ref, out)


# -- shards and torchrun ------------------------------------------------------------------------------


def test_shards_in_any_order_equal_one_run_and_finalize_names_a_missing_one(tmp_path, weights, small, capsys):
    tiles, ref = small
    out = tmp_path / "out"
    out.mkdir()
    args = small_job_argv(tiles, out, weights)

    def cli_code(*extra):  # (exit code, stderr)
        code, _, err = run_cli(args + list(extra), capsys)
        return code, err

    assert cli_code("--shard", "0/3")[0] == 0
    assert cli_code("--shard", "2/3")[0] == 0
    code, err = cli_code("--finalize")
    assert code == 1 and "shard 1/3 (3 units left)" in err and "Traceback" not in err
    code, err = cli_code("--shard", "1/4")
    assert code == 1 and "planned for 3 shard(s)" in err
    assert visible(out) == []
    assert cli_code("--shard", "1/3")[0] == 0  # the last share assembles the outputs
    assert_same_as_reference(ref, out)


@pytest.mark.slow
def test_shards_as_separate_processes(tmp_path, weights, small):
    tiles, ref = small
    out = tmp_path / "out"
    out.mkdir()
    base = cli(tiles, "--out", out / "map.tif", "--confidence", out / "conf.tif", "--probabilities", out / "prob.tif", "--weights", weights,
               "--unit-size", 128, "--batch-size", 1, "--workers", 0, "--quiet")
    for shard in ("0/3", "2/3", "1/3"):
        res = subprocess.run(base + ["--shard", shard], env=ENV, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert (visible(out) != []) == (shard == "1/3")
    assert_same_as_reference(ref, out)


def _torchrun(tmp_path, weights, size, file_size, unit_size, kinds=("map", "files")):
    tiles = mosaic(tmp_path / "tiles", size, file_size, seed=5)
    ref, per_file = tmp_path / "ref", tmp_path / "ref_files"
    ref.mkdir()
    per_file.mkdir()
    outs = {k: v for k, v in {"map": tmp_path / "ddp", "files": tmp_path / "ddp_files"}.items() if k in kinds}
    if "map" in outs:
        run_predict(weights, [tiles], ref / "map.tif", confidence=ref / "conf.tif", probabilities=ref / "prob.tif", unit_size=unit_size)
    if "files" in outs:
        run_predict(weights, [tiles], per_file, confidence=per_file, probabilities=per_file, unit_size=unit_size)
    for kind, out in outs.items():
        out.mkdir()
        target = ["--out", out / "map.tif", "--confidence", out / "conf.tif", "--probabilities", out / "prob.tif"] if kind == "map" else [
            "--out", out, "--confidence", out, "--probabilities", out]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "caswit_geo", "predict", str(tiles), *map(str, target), "--weights", str(weights),
               "--unit-size", str(unit_size), "--workers", "0", "--quiet"]
        res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    if "map" in outs:
        assert_same_as_reference(ref, outs["map"])
    if "files" not in outs:
        return
    names = visible(per_file)
    assert names == visible(outs["files"]) and len(names) == 7 * len(list(tiles.iterdir()))
    for name in names:
        if name.endswith(".tif"):
            assert_same_raster(per_file / name, outs["files"] / name)
    assert [p for p in outs["files"].iterdir() if p.name.startswith(".")] == []


def test_torchrun_two_cpu_processes_equal_one(tmp_path, weights):
    """The fast variant: one mosaic output (the 2048 px test below also writes per-file outputs)."""
    _torchrun(tmp_path, weights, 512, 256, 256, kinds=("map",))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one_2048(tmp_path, weights):
    _torchrun(tmp_path, weights, 2048, 1024, 512)


# -- overlap across units -----------------------------------------------------------------------------


def test_blending_across_unit_borders_equals_one_unit(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(300, 350, seed=3), nodata=0)
    one = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "one.tif", overlap=48,
                      confidence=tmp_path / "one_c.tif", probabilities=tmp_path / "one_p.tif", unit_size=1024)
    many = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "many.tif", overlap=48,
                       confidence=tmp_path / "many_c.tif", probabilities=tmp_path / "many_p.tif", unit_size=128)
    assert (one.units, many.units) == (1, 9)
    assert many.tiles > one.tiles  # tiles on unit borders are predicted by both neighbours
    for a, b in (("one.tif", "many.tif"), ("one_c.tif", "many_c.tif"), ("one_p.tif", "many_p.tif")):
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            np.testing.assert_array_equal(x.read(), y.read())


# -- output layout ------------------------------------------------------------------------------------


def test_cog_layout_overviews_colours_and_class_names(tmp_path, weights):
    data = rgb_image(600, 700, seed=4)
    data[:, :100, :100] = 0
    write_on_grid(tmp_path / "in.tif", data, nodata=0)
    # 256 px units: the overviews are assembled from the pyramids of 9 units
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "cog.tif", confidence=tmp_path / "cog_c.tif", unit_size=256)
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "plain.tif", confidence=tmp_path / "plain_c.tif",
                format="gtiff")
    with rasterio.open(tmp_path / "cog.tif") as cog, rasterio.open(tmp_path / "plain.tif") as plain:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert "LAYOUT" not in plain.tags(ns="IMAGE_STRUCTURE")
        # COG: halved until smaller than a 128 px block; GeoTIFF: until 256 px, as before
        assert cog.overviews(1) == [2, 4, 8] and plain.overviews(1) == [2, 4]
        assert cog.compression.name == "deflate" and cog.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert cog.block_shapes == [(128, 128)] and cog.nodata == 255
        np.testing.assert_array_equal(cog.read(1), plain.read(1))
        assert cog.colormap(1)[1][:3] == PREDICT_CLASSES.classes[1].color and cog.colormap(1)[255][3] == 0
        assert "3 field" in cog.descriptions[0] and cog.tags()["CASWIT_MODEL"] == "caswit-nano"
        assert cog.tags() == plain.tags()
        full = cog.read(1)
    assert read_pam_categories(tmp_path / "cog.tif") == PREDICT_CLASSES.names
    with rasterio.open(tmp_path / "cog_c.tif") as conf:
        assert conf.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and conf.overviews(1) == [2, 4, 8]
        confidence = conf.read(1)
    # the overviews are the pyramid of the whole raster (majority of 2 x 2 classes, mean of valid
    # confidences, level by level), though each unit computed its own part of it
    for path, values, is_classes in (("cog.tif", full, True), ("cog_c.tif", confidence, False)):
        expected = pyramid(values, [2, 4, 8], is_classes)
        for level, want in enumerate(expected):
            with rasterio.open(tmp_path / path, overview_level=level) as ov:
                np.testing.assert_array_equal(ov.read(1), want, err_msg=f"{path} level {level}")


def test_overview_pyramid_against_brute_force():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, (7, 9)).astype(np.uint8)
    classes[0, :4] = 255
    confidence = rng.integers(25, 101, (7, 9)).astype(np.uint8)
    confidence[classes == 255] = 255
    got_c, got_p = majority2(classes), mean2(confidence)
    assert got_c.shape == (4, 5) and got_p.shape == (4, 5)  # odd sizes: the last block is cut
    for i in range(4):
        for j in range(5):
            block = classes[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel()
            votes = {v: int((block == v).sum()) for v in block if v != 255}
            want = min(v for v in votes if votes[v] == max(votes.values())) if votes else 255
            assert got_c[i, j] == want, (i, j, block)
            vals = [int(v) for v in confidence[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel() if v != 255]
            assert got_p[i, j] == (int(np.floor(sum(vals) / len(vals) + 0.5)) if vals else 255)
    assert levels_for(300, 260, 128) == [2, 4] and levels_for(8192, 8192, 128) == [2, 4, 8, 16, 32, 64]
    assert levels_for(100, 100, 128) == []


# -- dry run ---------------------------------------------------------------------------------------------


def test_dry_run_reports_the_plan_and_writes_nothing(tmp_path, weights, capsys):
    tiles = tmp_path / "tiles"
    mosaic(tiles, 512, 256, seed=2)
    # a striped file without overviews, 1024 px wide: both warnings
    data = rgb_image(64, 1024, seed=1)
    write_geotiff(tiles / "z_striped.tif", data, crs="EPSG:2154", transform=grid_transform(row=512), nodata=0)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiles), "--out", str(tmp_path / "map.tif"), "--weights", str(weights), "--dry-run",
              "--shard", "0/2", "--workers", "0", "--unit-size", "512"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert snapshot(tmp_path) == before  # nothing written, not even a lock
    area = (512 * 512 + 1024 * 64) * GSD * GSD / 1e6
    assert "inputs: 5 file(s)" in out and f"{area:,.2f} km2" in out
    assert "mosaic: 1024 x 576 px" in out
    # units of 512 x 384 px (576 rows in two near-equal spans); the one over the gap right of the
    # 512 px square (columns 512-1024, rows 0-384) has no data and is no unit: 12 + 8 + 8 tiles
    assert "tiles: 28 of 128 px" in out
    assert "units: 3 of up to 512 px a side; shards: 2" in out
    assert "z_striped.tif: striped TIFF" in out and "no overviews" in out
    assert "estimate:" in out and "tiles/s over" in out and "per shard" in out
    # the reading timed too, with the run's readers, and which of it and the model sets the pace
    assert "reading ~" in out and "with 0 worker(s), the model ~" in out and " is the limit" in out
    assert "job folder:" in out and "(none)" in out


def test_dry_run_estimate_follows_the_slower_of_reading_and_the_model():
    from caswit_geo.engine.predict.dryrun import Calibration, DryRun, ReadingRate

    report = DryRun(plan=None, input_bytes=0, area_km2=None, tiles=100, tiles_with_data=100, shards=1, job_state="none",
                    calibration=Calibration("cuda:0", tiles=40, seconds=1.0))  # the model: 40 tiles/s
    report.reading = ReadingRate(workers=2, tiles=20, seconds=2.0)  # reading: 10 tiles/s
    assert report.estimate_s == pytest.approx(10.0)
    assert report.limit() == ("reading ~10.0 tiles/s with 2 worker(s), the model ~40.0 tiles/s on cuda:0: "
                              "reading is the limit; add workers (--workers) or convert the inputs to COG")
    report.reading = ReadingRate(workers=4, tiles=80, seconds=1.0)
    assert report.estimate_s == pytest.approx(2.5)
    assert report.limit().endswith("the model is the limit")
