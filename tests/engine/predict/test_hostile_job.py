"""Hostile inputs of ``predict`` behind what the command line names: a VRT's sources, system folders,
a GeoPackage's other layers, and the job folder as untrusted state (plan.json, parts, folders,
per-file jobs, concurrent --finalize). Items 1-3 of the review "Nothing trusted, round 3".

Every case: exit code, one error line naming the file or option, no traceback, nothing changed
outside the outputs (``hostile.py``).
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
import rasterio
import shapely

from caswit_geo.geo.mosaic import build_vrt_xml, describe_raster
from tests.helpers import (
    PREDICT_CLASSES,
    interrupted_job,
    predict_inputs,
    rgb_image,
    run_cli,
    run_predict,
    write_on_grid,
)
from tests.hostile import REPO, Case, run_case

T = 128
BASE = ["predict", "{tmp}/in.tif", "--out", "{tmp}/map.tif", "--weights", "{tmp}/nano.safetensors", "--workers", "0",
        "--quiet", "--unit-size", str(T)]
JOB = ".map.tif.caswit-job"


# -- 1: inputs reached indirectly ---------------------------------------------------------------------


def vrt_over_input(folder: Path) -> None:
    """``m.vrt`` whose only source is ``in.tif``, and ``link.tif``, a symbolic link to ``in.tif``."""
    predict_inputs(folder)
    info = describe_raster(folder / "in.tif")
    (folder / "m.vrt").write_text(build_vrt_xml([info], info.transform, info.width, info.height, (1, 2, 3), info.crs))
    (folder / "link.tif").symlink_to(folder / "in.tif")


VRT = ["predict", "{tmp}/m.vrt", "--weights", "{tmp}/nano.safetensors", "--workers", "0", "--quiet", "--overwrite"]


def nothing_in_dev(name: str):
    def check(folder: Path, out: str, err: str) -> None:
        assert not os.path.lexists(f"/dev/{name}")
        assert not [p for p in os.listdir("/dev") if "caswit" in p]  # no temporary, claim or lock either
    return check


INDIRECT_CASES = [
    Case("1-out-is-a-source-of-the-vrt", VRT + ["--out", "{tmp}/in.tif"], vrt_over_input,
         expect=("--out", "in.tif", "never replace an input")),
    Case("1-out-links-to-a-source-of-the-vrt", VRT + ["--out", "{tmp}/link.tif"], vrt_over_input,
         expect=("--out", "link.tif", "never replace an input")),
    Case("1-vector-links-to-a-source-of-the-vrt", VRT + ["--out", "{tmp}/map.tif", "--preview", "{tmp}/link.png"],
         lambda f: (vrt_over_input(f), (f / "link.png").symlink_to(f / "in.tif")),
         expect=("--preview", "link.png", "never replace an input")),
    Case("1-out-in-dev", BASE[:3] + ["/dev/caswit-stdout.tif"] + BASE[4:], predict_inputs,
         expect=("--out", "/dev", "system folder"), check=nothing_in_dev("caswit-stdout.tif")),
    Case("1-vector-in-dev", BASE + ["--vector", "/dev/caswit-null.gpkg"], predict_inputs,
         expect=("--vector", "/dev", "system folder"), check=nothing_in_dev("caswit-null.gpkg")),
    Case("1-out-in-proc-through-a-link", BASE[:3] + ["{tmp}/proc/x.tif"] + BASE[4:],
         lambda f: (predict_inputs(f), (f / "proc").symlink_to("/proc/self")),
         expect=("--out", "/proc", "system folder")),
]


# -- 2: a GeoPackage is a container -------------------------------------------------------------------


def precious_gpkg(folder: Path) -> None:
    predict_inputs(folder)
    gdf = gpd.GeoDataFrame({"name": ["keep me"]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:2154")
    gdf.to_file(folder / "other.gpkg", layer="precious", driver="GPKG", engine="pyogrio")
    gdf.to_file(folder / "other.gpkg", layer="landcover", driver="GPKG", engine="pyogrio")


GPKG_CASES = [
    Case("2-layer-exists-without-overwrite", BASE + ["--vector", "{tmp}/other.gpkg", "--vector-layer", "landcover"],
         precious_gpkg, expect=("--vector", "other.gpkg", "already has a layer 'landcover'", "--overwrite")),
    Case("2-not-a-geopackage", BASE + ["--vector", "{tmp}/other.gpkg", "--overwrite"],
         lambda f: (predict_inputs(f), (f / "other.gpkg").write_bytes(b"not a database")),
         expect=("--vector", "other.gpkg", "not a GeoPackage")),
    Case("2-layer-without-vector", BASE + ["--vector-layer", "x"], predict_inputs, expect=("--vector-layer",)),
    Case("2-layer-of-a-geojson", BASE + ["--vector", "{tmp}/v.geojson", "--vector-layer", "x"], predict_inputs,
         expect=("--vector-layer", "v.geojson", "not a GeoPackage")),
    Case("2-layer-name-unprintable", BASE + ["--vector", "{tmp}/v.gpkg", "--vector-layer", "a\x1b[2Jb"],
         predict_inputs, expect=("--vector-layer", "printable")),
]


def test_a_geopackage_keeps_its_other_layers(tmp_path, capsys):
    precious_gpkg(tmp_path)
    before = gpd.read_file(tmp_path / "other.gpkg", layer="precious")
    argv = [a.format(tmp=tmp_path) for a in BASE] + ["--vector", str(tmp_path / "other.gpkg")]
    code, _, err = run_cli(argv, capsys)  # a new layer "other" (the file's stem): no --overwrite needed
    assert code == 0, err
    layers = dict(pyogrio.list_layers(tmp_path / "other.gpkg"))
    assert set(layers) == {"precious", "landcover", "other", "layer_styles"}  # our layer's style, as QGIS keeps it
    first = gpd.read_file(tmp_path / "other.gpkg", layer="other")
    assert len(first) > 0 and set(first["class_name"]) <= set(PREDICT_CLASSES.names)
    argv[3] = str(tmp_path / "map2.tif")
    code, _, err = run_cli(argv + ["--vector-layer", "landcover", "--overwrite"], capsys)
    assert code == 0, err
    assert set(dict(pyogrio.list_layers(tmp_path / "other.gpkg"))) == {"precious", "landcover", "other", "layer_styles"}
    with sqlite3.connect(tmp_path / "other.gpkg") as db:  # one default style for each of our layers, none for theirs
        styles = db.execute("SELECT f_table_name, useAsDefault FROM layer_styles ORDER BY f_table_name").fetchall()
    assert styles == [("landcover", 1), ("other", 1)]
    replaced = gpd.read_file(tmp_path / "other.gpkg", layer="landcover")
    assert "class_id" in replaced.columns and len(replaced) == len(first)  # our polygons replaced that layer only
    kept = gpd.read_file(tmp_path / "other.gpkg", layer="precious")
    assert kept.equals(before)
    assert not [p for p in tmp_path.iterdir() if ".caswit" in p.name]


# -- 3: the job folder is untrusted state -------------------------------------------------------------


def edited_plan(edit):
    """An interrupted job whose plan.json went through ``edit(plan)`` (returns the new plan or text)."""
    def setup(folder: Path) -> None:
        interrupted_job(folder)
        path = folder / JOB / "plan.json"
        plan = json.loads(path.read_text())
        new = edit(plan)
        path.write_text(new if isinstance(new, str) else json.dumps(plan))
    return setup


def _set(path: str, value):
    def edit(plan):
        node = plan
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


RESUME = BASE + ["--resume"]
PLAN = ("plan.json",)

PLAN_CASES = [
    Case("3-plan-without-units", RESUME, edited_plan(_set("units", [])), expect=PLAN + ("its 0 units are not",)),
    Case("3-plan-units-cut", RESUME, edited_plan(lambda p: p["units"].pop()), expect=PLAN + ("units are not",)),
    Case("3-plan-units-duplicated", RESUME, edited_plan(lambda p: p["units"].append(p["units"][0])),
         expect=PLAN + ("units are not",)),
    Case("3-plan-unit-at-a-negative-offset", RESUME, edited_plan(_set("units.1.1", -128)),
         expect=PLAN + ("units[1].col", "-128")),
    Case("3-plan-units-not-a-list", RESUME, edited_plan(_set("units", "all")), expect=PLAN + ("units",)),
    Case("3-plan-unit-not-a-row", RESUME, edited_plan(_set("units.0", {"raster": 0})),
         expect=PLAN + ("units[0]",)),
    Case("3-plan-strip-width-zero", RESUME, edited_plan(_set("grid.strip_width", 0)),
         expect=PLAN + ("grid.strip_width", "0")),
    Case("3-plan-strip-width-off-the-block", RESUME, edited_plan(_set("grid.strip_width", 100)),
         expect=PLAN + ("grid.strip_width 100", "multiple")),
    # another unit size than the units were made with (1 px would give the same 128 px lattice: accepted)
    Case("3-plan-other-unit-size", RESUME, edited_plan(_set("grid.unit_size", 256)), expect=PLAN + ("units are not",)),
    Case("3-plan-huge-unit-count", RESUME, edited_plan(lambda p: p["units"].extend([p["units"][0]] * 70000)),
         expect=PLAN + ("at most 65,536",)),
    Case("3-plan-grid-missing", RESUME, edited_plan(lambda p: p.pop("grid") and None), expect=PLAN + ("grid",)),
    Case("3-plan-shards-text", RESUME, edited_plan(_set("shards", "2")), expect=PLAN + ("shards",)),
    Case("3-plan-inputs-malformed", RESUME, edited_plan(_set("inputs", [{"path": 1}])), expect=PLAN + ("inputs[0]",)),
    Case("3-plan-unknown-key", RESUME, edited_plan(_set("exec", "rm -rf /")), expect=PLAN + ("unknown key 'exec'",)),
    Case("3-plan-deep", RESUME, edited_plan(lambda p: "[" * 100000 + "]" * 100000), expect=PLAN + ("nests deeper",)),
    Case("3-plan-not-json", RESUME, edited_plan(lambda p: "{\"units\": "), expect=PLAN + ("not valid JSON",)),
    Case("3-plan-bad-on-finalize", BASE + ["--finalize"], edited_plan(_set("units", [])), expect=PLAN),
    Case("3-plan-bad-on-shard", BASE + ["--shard", "1/2"], edited_plan(_set("units.0.5", 7)),
         expect=PLAN + ("units are not",)),
    Case("3-dry-run-says-it-cannot-continue", BASE + ["--dry-run", "--resume"], edited_plan(_set("units", [])),
         code=0, expect=("cannot continue it", "plan.json")),
]


def done_parts(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / JOB / "units").iterdir() if p.name.endswith(".tif") and ".ovr" not in p.name)


def swapped_part(folder: Path) -> None:
    interrupted_job(folder)
    a, b = done_parts(folder)[:2]
    shutil.copyfile(a, b)  # unit 0's classes under unit 1's name


def stray_part(folder: Path) -> None:
    interrupted_job(folder)
    shutil.copyfile(done_parts(folder)[0], folder / JOB / "units" / "u000099.tif")


def other_jobs_part(folder: Path) -> None:
    """A part of another job (same layout) in this job's units folder."""
    interrupted_job(folder)
    other = folder / "other"
    other.mkdir()
    interrupted_job(other)
    part = done_parts(folder)[0]
    shutil.copyfile(other / JOB / "units" / part.name, part)
    shutil.rmtree(other)


def part_tag(key: str, value: str):
    """An interrupted job whose first done part has ``value`` as its ``key`` tag."""
    def setup(folder: Path) -> None:
        interrupted_job(folder)
        with rasterio.open(done_parts(folder)[0], "r+") as dst:
            dst.update_tags(**{key: value})
    return setup


def linked_units(folder: Path) -> None:
    interrupted_job(folder)
    outside = folder / "elsewhere"
    shutil.copytree(folder / JOB / "units", outside)
    shutil.rmtree(folder / JOB / "units")
    (folder / JOB / "units").symlink_to(outside)


PART_CASES = [
    Case("3-part-swapped-for-another-units", RESUME, swapped_part, changes=(JOB,),
         expect=("u000001.tif", "holds unit 0", "not unit 1", "remove it")),
    Case("3-stray-part", RESUME, stray_part, changes=(JOB,), expect=("u000099.tif", "no unit 99")),
    Case("3-part-of-another-job", RESUME, other_jobs_part, changes=(JOB,), expect=("u000000.tif", "of job")),
    Case("3-part-identity-nested-deep", RESUME, part_tag("CASWIT_PART", "[" * 100_000 + "]" * 100_000),
         changes=(JOB,), expect=("u000000.tif", "no unit identity", "remove it")),
    Case("3-part-report-nested-deep", RESUME, part_tag("CASWIT_UNIT", "[" * 100_000 + "]" * 100_000),
         changes=(JOB,), expect=("u000000.tif", "unit report is missing or malformed")),
    Case("3-units-folder-is-a-link", RESUME, linked_units, expect=("units", "not a folder of the job")),
    Case("3-job-folder-is-a-link", RESUME,
         lambda f: (interrupted_job(f), shutil.move(f / JOB, f / "real"), (f / JOB).symlink_to(f / "real")),
         expect=(JOB, "is a link")),
]


def tampered_chunk(edit):
    """An interrupted job whose readers published their LR pre-pass chunks, the first one then ``edit``ed."""
    def setup(folder: Path) -> None:
        interrupted_job(folder, workers=1)
        chunk = sorted((folder / JOB / "lowres").glob("lr_*.tif"))[0]
        with rasterio.open(chunk) as src:
            profile, data = src.profile, src.read()
        edit(chunk, profile, data)
    return setup


def rewritten(chunk: Path, profile: dict, data, **changes) -> None:
    profile = {**profile, **changes}
    with rasterio.open(chunk, "w", **profile) as dst:
        dst.write(data[: profile["count"], : profile["height"], : profile["width"]].astype(profile["dtype"]))


def _fewer_bands(chunk, profile, data):
    rewritten(chunk, profile, data, count=1)


def _half_size(chunk, profile, data):
    rewritten(chunk, profile, data, width=profile["width"] // 2, height=profile["height"] // 2,
              blockxsize=16, blockysize=16)


def _float_sums(chunk, profile, data):
    rewritten(chunk, profile, data, dtype="float32")


def _impossible_sums(chunk, profile, data):
    data[:] = 60000  # a 2 x 2 sum of 8-bit values is at most 1020
    rewritten(chunk, profile, data)


RESUME_WITH_A_READER = [a if i == 0 or RESUME[i - 1] != "--workers" else "1" for i, a in enumerate(RESUME)]
CHUNK = ("lr_00000_00000.tif", "not chunk (0, 0) of this job's LR pre-pass", "remove it")

# a chunk file is state on disk too: a wrong one was read as it came (one band broadcast to three, values cast)
CHUNK_CASES = [
    Case("3-lowres-chunk-of-one-band", RESUME, tampered_chunk(_fewer_bands), changes=(JOB,),
         expect=CHUNK + ("found 1 band of uint16",)),
    Case("3-lowres-chunk-of-another-size", RESUME, tampered_chunk(_half_size), changes=(JOB,),
         expect=CHUNK + ("128 x 96 px",)),
    Case("3-lowres-chunk-of-floats", RESUME, tampered_chunk(_float_sums), changes=(JOB,),
         expect=CHUNK + ("float32",)),
    Case("3-lowres-chunk-of-impossible-sums", RESUME, tampered_chunk(_impossible_sums), changes=(JOB,),
         expect=CHUNK + ("sums up to 1020 expected, found 60000",)),
    Case("3-lowres-chunk-read-by-a-reader-process", RESUME_WITH_A_READER, tampered_chunk(_fewer_bands),
         changes=(JOB,), expect=CHUNK + ("found 1 band of uint16", "units are done and kept")),
]


@pytest.mark.parametrize("case", [c.param() for c in
                                  INDIRECT_CASES + GPKG_CASES + PLAN_CASES + PART_CASES + CHUNK_CASES])
def test_hostile_job(case, tmp_path, capsys):
    run_case(case, tmp_path / "case", capsys)


def test_a_missing_lowres_folder_is_made_again(tmp_path, capsys):
    interrupted_job(tmp_path)
    shutil.rmtree(tmp_path / JOB / "lowres")
    code, _, err = run_cli([a.format(tmp=tmp_path) for a in RESUME], capsys)
    assert code == 0, err
    assert (tmp_path / "map.tif").is_file() and not (tmp_path / JOB).exists()


def _per_file(folder: Path, name: str, **kw):
    return run_predict(folder / "nano.safetensors", [folder / name], f"{folder / 'maps'}/", unit_size=T, **kw)


def test_per_file_jobs_with_other_outputs_coexist(tmp_path, capsys):
    predict_inputs(tmp_path)
    write_on_grid(tmp_path / "b.tif", rgb_image(256, 256, seed=5), col=2000)
    (tmp_path / "maps").mkdir()
    _per_file(tmp_path, "in.tif", shard=(0, 2))  # interrupted: half of in.tif's units done
    jobs = [p for p in (tmp_path / "maps").iterdir() if p.name.startswith(".caswit-job")]
    assert len(jobs) == 1
    parts = sorted(p.name for p in (jobs[0] / "units").iterdir())
    _per_file(tmp_path, "b.tif")  # another input into the same folder: its own job, finished
    assert (tmp_path / "maps" / "b_landcover.tif").is_file()
    assert sorted(p.name for p in (jobs[0] / "units").iterdir()) == parts  # the interrupted job is untouched
    res = _per_file(tmp_path, "in.tif", resume=True)
    assert res.complete and res.units_before > 0  # its finished units were kept and used
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "b_landcover.qml", "b_landcover.tif", "b_landcover.tif.aux.xml",
        "in_landcover.qml", "in_landcover.tif", "in_landcover.tif.aux.xml"]


SLOW_FINALIZE = """
import sys, time
from caswit_geo.engine.predict import run
real = run.finalize_job
def slow(*a, **k):  # both runs are planned (the job exists) before the first one commits
    time.sleep(8)
    return real(*a, **k)
run.finalize_job = slow
from caswit_geo.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow  # two processes, each waiting 8 s in its assembly
def test_two_finalize_runs_exit_after_the_outputs_exist(tmp_path):
    """Two --finalize at once: one assembles, the other waits for it; neither exits before map.tif exists."""
    predict_inputs(tmp_path)
    run_predict(tmp_path / "nano.safetensors", [tmp_path / "in.tif"], tmp_path / "map.tif", unit_size=T,
                defer_finalize=True, confidence=tmp_path / "conf.tif")
    argv = [a.format(tmp=tmp_path) for a in BASE] + ["--confidence", str(tmp_path / "conf.tif"), "--finalize"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_FINALIZE, *argv], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + 240
    outputs_at_exit = {}
    while len(outputs_at_exit) < 2:
        for i, proc in enumerate(procs):
            if i not in outputs_at_exit and proc.poll() is not None:
                outputs_at_exit[i] = (tmp_path / "map.tif").is_file() and (tmp_path / "conf.tif").is_file()
        assert time.time() < deadline
        time.sleep(0.02)
    results = [(p.returncode, *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    assert all(outputs_at_exit.values()), (outputs_at_exit, results)
    assert not (tmp_path / JOB).exists()
    with rasterio.open(tmp_path / "map.tif") as src:
        assert src.read(1).shape == (256, 384)
