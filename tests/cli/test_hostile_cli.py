"""Hostile inputs against the command line itself (review items 8, 11-16, 19).

One table of :class:`hostile.Case` rows; ids start with the review item.
Most cases run in this process (cheap); a case runs as a subprocess only
where start-up or a blocking special file matters. Helpers and the tests
that are not a command line (the worker-message parser, the start-up
imports, the console width) follow the table.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from caswit_geo.core.spec import ClassInfo, ClassTable, InputSpec
from tests.helpers import (
    grid_transform,
    module_checkpoint,
    qml_palette,
    write_geotiff,
    write_on_grid,
)
from tests.hostile import REPO, Case, run_case

T = 128  # caswit-nano tile
RES = 0.2
# class names as a hostile checkpoint could carry them and still load: Rich markup (a closing tag
# that crashed the summary, a link, a colour) and a name longer than any terminal. Names holding
# terminal escapes are refused when the checkpoint is read (case 8-escapes-in-class-names-refused).
HOSTILE_CLASSES = ClassTable([
    ClassInfo(0, "[red]building[/red]", (219, 14, 154)),
    ClassInfo(1, "water [link=file:///etc/passwd]x[/link]", (21, 83, 174)),
    ClassInfo(2, "[/bold]forest[bold red]", (25, 74, 38)),
    ClassInfo(3, "field" + "-long" * 19, (255, 243, 191)),
])
# how each must be shown: markup as text, nothing cut
SHOWN = tuple(c.name for c in HOSTILE_CLASSES.classes)
SHARED: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared(tmp_path_factory):
    """A caswit-nano checkpoint with hostile class names, outside every case folder."""
    yield from module_checkpoint(SHARED, tmp_path_factory, HOSTILE_CLASSES, "hostile.safetensors", gsd=RES)


# ---------------------------------------------------------------- fixtures built in a case folder


def with_escaped_names(folder: Path) -> None:
    """The shared checkpoint with terminal escapes written into its class names (save refuses them)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(SHARED["ckpt"]), "pt") as f:
        header = json.loads(f.metadata()["caswit_geo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for c, name in zip(header["classes"]["classes"], ("\x1b[31mred\x1b[0m", "\x1b]0;pwned\x07water", "x", "field\x9b2J")):
        c["name"] = name
    save_file(tensors, str(folder / "escapes.safetensors"), metadata={"caswit_geo": json.dumps(header)})



def ortho(path: Path, size: int = T, transform: Affine | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 256, (3, size, size), dtype=np.uint8)
    return write_geotiff(path, data, crs="EPSG:2154", transform=transform or grid_transform(), tiled=True,
                         blockxsize=128, blockysize=128, compress="deflate")


def labels(path: Path, values: np.ndarray) -> Path:
    return write_on_grid(path, values.astype(np.uint8))


def weights(folder: Path) -> dict:
    return {"w": str(SHARED["ckpt"])}


def with_image(folder: Path) -> dict:
    ortho(folder / "img.tif")
    return weights(folder)


def truncated(folder: Path) -> dict:
    data = ortho(folder / "full.tif", size=2 * T).read_bytes()  # 4 blocks: the last ones are cut
    (folder / "full.tif").unlink()
    (folder / "trunc.tif").write_bytes(data[: len(data) // 2])  # a COG cut short by a failed copy
    return weights(folder)


def vrt_of(folder: Path, members: list[str], name: str = "mosaic.vrt") -> Path:
    """A VRT mosaic of ``members`` (files in ``folder``, which exist while it is built)."""
    from caswit_geo.geo.mosaic import open_mosaic

    mosaic = open_mosaic([folder / m for m in members], (1, 2, 3))
    (folder / name).write_text(mosaic.source)
    return folder / name


def vrt_missing_source(folder: Path) -> dict:
    ortho(folder / "a.tif")
    ortho(folder / "gone.tif", transform=Affine(RES, 0, 650_000 + T * RES, 0, -RES, 6_860_000))
    vrt_of(folder, ["a.tif", "gone.tif"])
    (folder / "gone.tif").unlink()
    return weights(folder)


def vrt_fifo_source(folder: Path) -> dict:
    ortho(folder / "a.tif")
    ortho(folder / "pipe.tif", transform=Affine(RES, 0, 650_000 + T * RES, 0, -RES, 6_860_000))
    vrt_of(folder, ["a.tif", "pipe.tif"])
    (folder / "pipe.tif").unlink()
    os.mkfifo(folder / "pipe.tif")
    return weights(folder)


def fifo_input(folder: Path) -> dict:
    os.mkfifo(folder / "fifo.tif")  # nobody ever writes to it: opening it for reading blocks
    return weights(folder)


def rotated(gsd: float):
    def setup(folder: Path) -> dict:
        angle = math.radians(30)
        t = Affine(gsd * math.cos(angle), -gsd * math.sin(angle), 650_000,
                   gsd * math.sin(angle), -gsd * math.cos(angle), 6_860_000)
        ortho(folder / "rot.tif", transform=t)
        return weights(folder)

    return setup


def pred_ref(folder: Path) -> dict:
    labels(folder / "pred.tif", np.zeros((64, 64)))
    labels(folder / "ref.tif", np.zeros((64, 64)))
    return {}


def pred_fifo(folder: Path) -> dict:
    os.mkfifo(folder / "pred.tif")
    labels(folder / "ref.tif", np.zeros((64, 64)))
    return {}


def tiles_with_bad_label(folder: Path) -> dict:
    """A ``tiles`` data set whose label holds 9, not a class id: caught in a DataLoader worker."""
    root = folder / "data"
    for sub in ("images", "labels", "splits"):
        (root / sub).mkdir(parents=True)
    ortho(root / "images" / "a.tif", size=T)
    values = np.zeros((T, T))
    values[5, 7] = 9
    labels(root / "labels" / "a.tif", values)
    (root / "splits" / "test.txt").write_text("a\n")
    classes = [{"id": c.id, "name": f"class{c.id}", "color": list(c.color)} for c in HOSTILE_CLASSES.classes]
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    return weights(folder)


def config_with_nan(folder: Path) -> dict:
    (folder / "run.toml").write_text("lr = nan\n")
    return {}


# ---------------------------------------------------------------- fault injection (item 13)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def savefig_enospc(mp, folder):
    from matplotlib.figure import Figure

    mp.setattr(Figure, "savefig", enospc)


def no_output_job_kept(folder: Path, out: str, err: str) -> None:
    assert not (folder / "out.tif").exists() and not (folder / "v.gpkg").exists()
    assert (folder / ".out.tif.caswit-job" / "plan.json").is_file()


def geopackage_full(mp, folder):
    import pyogrio
    from pyogrio.errors import DataSourceError

    def write_dataframe(df, path, *args, **kwargs):
        Path(path).write_bytes(b"SQLite format 3\x00")  # what the driver had begun to write
        raise DataSourceError("sqlite3_exec(CREATE TABLE ...) failed: database or disk is full")

    mp.setattr(pyogrio, "write_dataframe", write_dataframe)


def prepass_chunk_enospc(mp, folder):
    from caswit_geo.geo import lowres

    mp.setattr(lowres, "publish_chunk", enospc)  # the LR pre-pass thread's first write fails...
    mp.setattr(Path, "write_text", enospc)  # ...and so does the reason it leaves for the readers


MOUNTS: list[Path] = []


@pytest.fixture(autouse=True)
def unmount():
    yield
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], check=False)


def tiny_tmpfs(folder: Path) -> dict:
    """A real full disk: an 8 KiB tmpfs in the case folder (root only; else the case is skipped)."""
    full = folder / "full"
    full.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    MOUNTS.append(full)
    ortho(folder / "img.tif")
    return weights(folder)


# ---------------------------------------------------------------- checks of accepted inputs


def summary_shows_names(folder, out, err):
    assert any(shown in err for shown in SHOWN), err  # the classes predicted, in the summary table
    assert [label for _, label, _ in qml_palette(folder / "out.qml")] == list(SHOWN)  # the QGIS legend, as text


def info_shows_every_name(folder, out, err):
    for shown in SHOWN:
        assert shown in out, shown


def shows_help(folder, out, err):
    assert "Usage: caswit-geo" in out and "predict" in out and "internal error" not in out + err


PREDICT = ["predict", "{tmp}/img.tif", "-o", "{tmp}/out.tif", "-w", "{w}", "-q"]

CASES = [
    # 8: names from files are printed inert
    Case("8-info-hostile-class-names", ["info", "{w}"], weights, code=0, check=info_shows_every_name),
    Case("8-predict-summary-hostile-class-names", ["predict", "{tmp}/img.tif", "-o", "{tmp}/out.tif", "-w", "{w}"],
         with_image, code=0, changes=("out.tif", "out.tif.aux.xml", "out.qml"), check=summary_shows_names),
    Case("8-escapes-in-class-names-refused", ["info", "{tmp}/escapes.safetensors"], with_escaped_names,
         expect=("escapes.safetensors", "must be printable text", "\\x1b[31m")),
    Case("8-escape-in-file-name", ["predict", "{tmp}/\x1b]0;title\x07x.tif", "-o", "{tmp}/out.tif", "-w", "{w}"],
         weights, expect=("\\x1b]0;title\\x07x.tif: no such file",)),
    # 11: usage errors are the parser's own, exit 2
    Case("11-no-arguments", [], code=0, check=shows_help),
    Case("11-version", ["--version"], code=0, expect=("caswit-geo 0.1.0",)),
    Case("11-missing-argument", ["predict"], code=2, expect=("Error: Missing argument 'INPUT...'",)),
    Case("11-missing-option-value", ["predict", "x.tif", "-o"], code=2, expect=("Error: Option '-o' requires an argument",)),
    Case("11-not-an-integer", ["predict", "x.tif", "-o", "y.tif", "--batch-size", "abc"], code=2,
         expect=("Error: Invalid value for '--batch-size'",)),
    Case("11-unknown-option", ["predict", "--bogus"], code=2, expect=("Error: No such option: --bogus",)),
    Case("11-unknown-command", ["bogus"], code=2, expect=("Error: No such command 'bogus'",)),
    # 12: an error raised in a DataLoader worker is its own one line
    Case("12-worker-error-one-line",
         ["eval", "-d", "tiles", "--root", "{tmp}/data", "-w", "{w}", "--workers", "1", "--no-progress",
          "--device", "cpu"], tiles_with_bad_label,
         expect=("a.tif: label value 9 is not a class id 0..3 nor 255",)),
    # 13: a full disk is "no space left on <folder>", nothing left behind
    Case("13-tmpfs-full-predict", ["predict", "{tmp}/img.tif", "-o", "{tmp}/full/out.tif", "-w", "{w}", "-q"],
         tiny_tmpfs, expect=("no space left on", "/full")),
    Case("13-explain-figure-enospc", ["explain", "{tmp}/img.tif", "-o", "{tmp}/x.png", "-w", "{w}"], with_image,
         patch=savefig_enospc, expect=("no space left on ",)),
    # at the assembly: no output appears, and the finished units stay in the job folder for --resume
    Case("13-geopackage-database-full", PREDICT + ["--vector", "{tmp}/v.gpkg"], with_image,
         patch=geopackage_full, expect=("no space left on ", "units are done and kept in", "--resume"),
         changes=(".out.tif.caswit-job", ".*.caswit-claim"), check=no_output_job_kept),
    Case("13-lr-prepass-thread-enospc", PREDICT, with_image, patch=prepass_chunk_enospc,
         expect=("no space left on ",)),
    # 14: unreadable pixels name the file; special files are refused before GDAL blocks on them
    Case("14-truncated-cog", ["predict", "{tmp}/trunc.tif", "-o", "{tmp}/out.tif", "-w", "{w}", "-q"], truncated,
         expect=("trunc.tif: cannot read its pixels",)),
    Case("14-truncated-cog-in-worker",
         ["predict", "{tmp}/trunc.tif", "-o", "{tmp}/out.tif", "-w", "{w}", "-q", "--workers", "1",
          "--overlap", "31"], truncated, expect=("trunc.tif: cannot read its pixels",)),
    Case("14-vrt-missing-source", ["predict", "{tmp}/mosaic.vrt", "-o", "{tmp}/out.tif", "-w", "{w}", "-q"],
         vrt_missing_source, expect=("mosaic.vrt: source", "gone.tif: no such file")),
    Case("14-vrt-fifo-source", ["predict", "{tmp}/mosaic.vrt", "-o", "{tmp}/out.tif", "-w", "{w}", "-q"],
         vrt_fifo_source, expect=("pipe.tif: is a FIFO",)),
    Case("14-fifo-input", ["predict", "{tmp}/fifo.tif", "-o", "{tmp}/out.tif", "-w", "{w}", "-q"], fifo_input,
         subprocess=True, timeout=60, expect=("fifo.tif: is a FIFO, not a regular file",)),
    Case("14-eval-pred-fifo", ["eval", "--pred", "{tmp}/pred.tif", "--ref", "{tmp}/ref.tif"], pred_fifo,
         expect=("pred.tif: is a FIFO",)),
    # 15: numbers are checked first, naming the flag (missing files prove nothing ran before)
    Case("15-predict-min-area-nan", ["predict", "{tmp}/none.tif", "-o", "{tmp}/o.tif", "-w", "{tmp}/none.pt",
                                     "--vector", "{tmp}/v.gpkg", "--min-area", "nan"],
         expect=("--min-area must be a finite number >= 0, got nan",)),
    Case("15-predict-workers-negative", ["predict", "{tmp}/none.tif", "-o", "{tmp}/o.tif", "--workers", "-1"],
         expect=("--workers must be an integer >= 0, got -1",)),
    Case("15-predict-batch-size-0", ["predict", "{tmp}/none.tif", "-o", "{tmp}/o.tif", "-b", "0"],
         expect=("--batch-size must be an integer >= 1, got 0",)),
    Case("15-train-lr-nan", ["train", "-d", "tiles", "--root", "{tmp}/none", "--lr", "nan"],
         expect=("--lr must be a finite number > 0, got nan",)),
    Case("15-train-tile-size-0", ["train", "-d", "tiles", "--root", "{tmp}/none", "--tile-size", "0"],
         expect=("--tile-size must be an integer >= 32 and a multiple of 32, got 0",)),
    Case("15-train-config-file-nan", ["train", "-d", "tiles", "--root", "{tmp}/none", "--config", "{tmp}/run.toml"],
         config_with_nan, expect=("--lr must be a finite number > 0, got nan",)),
    Case("15-pretrain-mask-patch-size-0", ["pretrain", "-i", "{tmp}/none", "--mask-patch-size", "0"],
         expect=("--mask-patch-size must be an integer >= 4 and a multiple of 4, got 0",)),
    Case("15-pretrain-mask-ratio-1.5", ["pretrain", "-i", "{tmp}/none", "--mask-ratio", "1.5"],
         expect=("--mask-ratio must be a finite number > 0 and < 1, got 1.5",)),
    Case("15-eval-tile-size-0", ["eval", "--pred", "{tmp}/pred.tif", "--ref", "{tmp}/ref.tif", "--tile-size", "0"],
         pred_ref, expect=("--tile-size must be an integer >= 1 and <= 4096, got 0",)),
    Case("15-eval-batch-size-0", ["eval", "-d", "tiles", "--root", "{tmp}/none", "--batch-size", "0"],
         expect=("--batch-size must be an integer >= 1, got 0",)),
    Case("15-explain-out-xyz", ["explain", "{tmp}/img.tif", "-o", "{tmp}/x.xyz", "-w", "{tmp}/none.pt"],
         with_image, expect=("--out", "x.xyz: not an image format")),
    Case("15-explain-x-without-y", ["explain", "{tmp}/img.tif", "-o", "{tmp}/x.png", "--x", "650010"], with_image,
         expect=("--x and --y go together",)),
    Case("15-synth-gsd-nan", ["synth", "{tmp}/ds", "--gsd", "nan"], expect=("--gsd must be a finite number > 0, got nan",)),
    # 16: a rotated raster: the right pixel size, and no advice that then refuses
    Case("16-rotated-resample", ["predict", "{tmp}/rot.tif", "-o", "{tmp}/out.tif", "-w", "{w}", "-q", "--resample"],
         rotated(0.5), expect=("--resample: rot.tif is rotated", "warp it")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_cli(case, tmp_path, capsys):
    run_case(case, tmp_path / "case", capsys)


# ---------------------------------------------------------------- not command lines


def test_worker_wrapper_gives_back_the_original_message():
    """torch's DataLoader re-raises a worker's error with its whole traceback as the message (item 12)."""
    from torch.utils.data import DataLoader, Dataset

    from caswit_geo.core.errors import DatasetError, user_message
    from caswit_geo.runtime.device import stop_workers

    class Failing(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            try:
                raise KeyError("inner")
            except KeyError as e:
                raise DatasetError("b.tif: label value 9\nis not a class id") from e

    batches = iter(DataLoader(Failing(), num_workers=1))
    with pytest.raises(DatasetError) as info:
        next(batches)
    stop_workers(batches)
    assert "Original Traceback" in str(info.value)  # what would have been printed
    assert user_message(info.value) == ("DatasetError", "b.tif: label value 9 is not a class id")
    # not a wrapper: left alone
    assert user_message(ValueError("Caught nothing")) == ("ValueError", "Caught nothing")


def test_disk_full_recognised_however_reported(tmp_path, monkeypatch):
    """errno, GDAL/SQLite texts, and a silent library failure on a disk with no space left (item 13)."""
    import sqlite3

    from caswit_geo.core import errors
    from caswit_geo.core.errors import DiskFullError, InputError, no_space_error

    assert no_space_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path) is not None
    assert no_space_error(sqlite3.OperationalError("database or disk is full"), tmp_path) is not None
    wrapped = RuntimeError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                           "last):\n  File \"x\", line 1\nOSError: [Errno 28] No space left on device")
    full = no_space_error(wrapped, tmp_path)
    assert isinstance(full, DiskFullError) and str(full) == f"no space left on {tmp_path}"
    assert full.__cause__ is wrapped  # --debug shows what failed
    assert no_space_error(sqlite3.OperationalError("no such table: gpkg_contents"), tmp_path) is None
    monkeypatch.setattr(errors, "free_bytes", lambda folder: 4096)  # the disk is full now
    assert no_space_error(sqlite3.OperationalError("no such table: gpkg_contents"), tmp_path) is not None
    assert no_space_error(ValueError("a bug"), tmp_path) is None  # not an I/O failure
    assert no_space_error(InputError("bad.tif: not a raster"), tmp_path) is None
    assert no_space_error(KeyboardInterrupt(), tmp_path) is None


def test_numeric_bounds_declared_once_cover_every_engine_config():
    """Every float field of every engine config refuses NaN, and bounded fields name their flag (item 15)."""
    import dataclasses

    from caswit_geo.core.errors import ConfigError
    from caswit_geo.core.limits import check_settings, field_check
    from caswit_geo.engine.evaluate.evaluation import EvalConfig
    from caswit_geo.engine.explain import ExplainConfig
    from caswit_geo.engine.predict import PredictConfig
    from caswit_geo.engine.train.pretraining import PretrainConfig
    from caswit_geo.engine.train.training import TrainConfig

    required = {PredictConfig: dict(inputs=["a.tif"], out="o.tif"), EvalConfig: dict(dataset="tiles", root=".",
                weights=None), ExplainConfig: dict(image="a.tif", out="o.png"), TrainConfig: {}, PretrainConfig: {}}
    for cls, base in required.items():
        check_settings(cls(**base))  # the defaults are valid
        for f in dataclasses.fields(cls):
            hint = str(f.type)
            if "float" in hint and "tuple" not in hint:
                with pytest.raises(ConfigError, match=f"--{f.name.replace('_', '-')} must be a finite number"):
                    check_settings(cls(**{**base, f.name: float("nan")}))
    # a subclass that only changes a default keeps the base class's bounds
    assert field_check(PretrainConfig, "epochs")[0].ge == 1
    with pytest.raises(ConfigError, match="--epochs must be an integer >= 1, got 0"):
        check_settings(PretrainConfig(epochs=0))


def test_read_error_names_the_member_file_gdal_names(tmp_path):
    """A GDAL read failure in this process becomes an InputError naming the file (item 14)."""
    from caswit_geo.geo.sources import read_error

    data = ortho(tmp_path / "a.tif").read_bytes()
    (tmp_path / "a.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(rasterio.errors.RasterioIOError) as info:
        with rasterio.open(tmp_path / "a.tif") as src:
            src.read()
    error = read_error(info.value, [tmp_path / "b.tif", tmp_path / "a.tif"])
    assert error is not None and str(error).startswith(f"{tmp_path / 'a.tif'}: cannot read its pixels (")
    assert read_error(ValueError("not GDAL"), [tmp_path / "a.tif"]) is None


@pytest.mark.parametrize("gsd, advice", [(RES, None), (0.5, "gdalwarp -tr 0.2 0.2")])
def test_rotated_raster_pixel_size_from_the_affine(tmp_path, gsd, advice):
    """30 degrees rotated: the pixel side is the affine columns' length; no --resample advice (item 16)."""
    from caswit_geo.engine.predict.plan import check_resolution
    from caswit_geo.geo.mosaic import open_mosaic

    rotated(gsd)(tmp_path)
    mosaic = open_mosaic([tmp_path / "rot.tif"], (1, 2, 3))
    target, notes = check_resolution(mosaic, InputSpec(tile_size=T, gsd=RES), resample=False)
    assert target is None
    if advice is None:
        assert notes == []  # 0.2 m pixels turned by 30 degrees are 0.2 m pixels
    else:
        assert len(notes) == 1 and "pixel size 0.5 m" in notes[0] and advice in notes[0]
        assert "--resample" not in notes[0]


def test_pipe_output_tables_are_never_cut():
    """A table printed to a pipe keeps its whole cells; on a terminal it fits the width (item 19)."""
    import io

    from rich.table import Table

    from caswit_geo.cli.console import make_console, safe

    name = "caswit-" + "x" * 300
    table = Table()
    table.add_column("name")
    table.add_row(safe(name))
    console = make_console()  # pytest's stdout is not a terminal
    console.file = io.StringIO()
    console.print(table)
    assert name in console.file.getvalue()
    assert safe("[/bold]\x1b[2J") == "\\[/bold]\\x1b[2J"


def test_start_up_imports_no_heavy_library():
    """--help, --version and a usage error answer without importing torch, GDAL or matplotlib (item 19), and so
    does the error printer's use of caswit_geo.geo (its package import stays light)."""
    code = (
        "import sys\n"
        "from caswit_geo.cli import main\n"
        "for argv in (['--help'], ['--version'], ['predict', '--batch-size', 'x'], ['info', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        print('exit', e.code)\n"
        "from caswit_geo.cli import error_line\n"
        "error_line(OSError('https://h/a.tif?token=x: HTTP 404'))\n"  # imports geo.remote and geo.sources
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'rasterio', 'geopandas', 'matplotlib') if m in sys.modules]\n"
        "print('heavy', heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "heavy []", proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("exit")] == ["exit 0", "exit 0", "exit 2",
                                                                                       "exit 0"]
