"""Options several commands share, each declared once.

A command is its own options plus one engine call; the options it shares
with other commands come from here.

* Option makers (:func:`weights`, :func:`device`, ...) state an option's
  flags; the command gives the default and help, which differ between
  commands. A default is the engine's: :func:`defaults` reads it from the
  engine's config dataclass, so that it is stated once, there.
* ``train`` and ``pretrain`` list their options as :class:`RunOption`s
  (:func:`run_command`). Each defaults to None ("not given"), so that a
  config file can fill it and the engine's dataclass default applies last;
  ``run_options.py`` turns the values into a config. The groups both
  commands take (:data:`MODEL_OPTIONS`, :data:`INPUT_OPTIONS`,
  :data:`RUN_OPTIONS`) are listed once, here.

Only typer is imported: ``--help`` answers without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, List, Optional

import typer
from typer.models import OptionInfo

PRECISION_HELP = (
    "auto | fp32 | bf16 | fp16. auto: bf16 on GPUs that have it, else fp16; bf16 on CPUs with AMX "
    "for models it speeds up; else fp32."
)


def defaults(config: type) -> SimpleNamespace:
    """The field defaults of an engine's config dataclass, by field name."""
    return SimpleNamespace(
        **{f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    )


# ---------------------------------------------------------------------------
# Options of several commands: the flags here, the default and help the command's
# ---------------------------------------------------------------------------


def weights(default: Any, help: str = "Checkpoint file or registry name.") -> Any:
    return typer.Option(default, "--weights", "-w", help=help)


def device(default: Any, help: str) -> Any:
    return typer.Option(default, "--device", help=help)


def precision(default: Any, help: str = PRECISION_HELP) -> Any:
    return typer.Option(default, "--precision", help=help)


def workers(default: Any, help: str) -> Any:
    return typer.Option(default, "--workers", help=help)


def batch_size(default: Any, help: str, *short: str) -> Any:
    return typer.Option(default, "--batch-size", *short, help=help)


def tile_size(default: Any, help: str) -> Any:
    return typer.Option(default, "--tile-size", help=help)


def overwrite(default: Any, help: str) -> Any:
    return typer.Option(default, "--overwrite", help=help)


def out(default: Any, help: str) -> Any:
    return typer.Option(default, "--out", "-o", help=help)


def seed(default: Any, help: str) -> Any:
    return typer.Option(default, "--seed", help=help)


def progress(default: Any, help: str) -> Any:
    return typer.Option(default, "--progress/--no-progress", help=help)


def random_crops(default: Any, help: str) -> Any:
    return typer.Option(default, "--random-crops/--grid-crops", help=help)


def dataset(default: Any, help: str) -> Any:
    return typer.Option(default, "--dataset", "-d", help=help)


def root(default: Any, help: str = "Dataset root folder.") -> Any:
    return typer.Option(default, "--root", help=help)


def split_column(default: Any, help: str = "FLAIR-HUB split GeoPackage column.") -> Any:
    return typer.Option(default, "--split-column", help=help)


def allow_missing(default: Any, help: str) -> Any:
    return typer.Option(default, "--allow-missing", help=help)


# Vector labels (train and eval --dataset vector, eval --ref POLYGONS)


IMAGES_HELP = "Imagery, as predict reads it: files, folders, globs, URLs, STAC items; one mosaic; repeatable."


def images(default: Any, help: str = IMAGES_HELP) -> Any:
    return typer.Option(default, "--images", "-i", help=help)


# Imagery behind catalogues (predict)


ASSET_HELP = "The asset of STAC items to read (default: the GeoTIFF with role visual, else data)."


def asset(default: Any, help: str = ASSET_HELP) -> Any:
    return typer.Option(default, "--asset", metavar="KEY", help=help)


def labels(default: Any) -> Any:
    return typer.Option(default, "--labels", help="Label polygons (GeoPackage, GeoJSON, Shapefile...).")


def labels_layer(default: Any) -> Any:
    return typer.Option(default, "--labels-layer", help="Layer of --labels. (default: the first)")


def class_field(default: Any) -> Any:
    return typer.Option(default, "--class-field", help="Field of --labels holding the class (text or integer).")


def areas(default: Any) -> Any:
    return typer.Option(
        default, "--areas", help="Polygons where labelling is complete, with --split-field (train, val, test)."
    )


def areas_layer(default: Any) -> Any:
    return typer.Option(default, "--areas-layer", help="Layer of --areas. (default: the first)")


def split_field(default: Any) -> Any:
    return typer.Option(default, "--split-field", help="Field of --areas: train, val or test. (default: split)")


def background(default: Any) -> Any:
    return typer.Option(
        default, "--background", help="Class of area pixels under no polygon. (default: none, they are ignored)"
    )


def classes(default: Any, help: str = "classes.json: ids, names and colours of the class field's values.") -> Any:
    return typer.Option(default, "--classes", help=help)


def skip_non_polygons(default: Any) -> Any:
    return typer.Option(default, "--skip-non-polygons", help="Leave points and lines out (counted) instead of refusing.")


# The region (predict --roi/--bbox) and its statistics


def roi(default: Any) -> Any:
    return typer.Option(
        default, "--roi", metavar="PATH",
        help="Map only this region: polygons (GeoPackage, GeoJSON, Shapefile, GeoParquet, FlatGeobuf), any CRS; "
             "nodata outside them.",
    )


def roi_layer(default: Any) -> Any:
    return typer.Option(default, "--roi-layer", metavar="NAME", help="Layer of --roi. (default: the first)")


def bbox(default: Any) -> Any:
    return typer.Option(
        default, "--bbox", metavar="XMIN,YMIN,XMAX,YMAX",
        help="Map only this box, in the imagery's CRS (or --bbox-crs).",
    )


def bbox_crs(default: Any) -> Any:
    return typer.Option(default, "--bbox-crs", metavar="CRS", help="CRS of --bbox, e.g. EPSG:4326.")


def stats(default: Any) -> Any:
    return typer.Option(
        default, "--stats", metavar="PATH",
        help="Also write class areas (pixels, area_m2, share %) per --roi feature and per input file (.csv or .json).",
    )


# ---------------------------------------------------------------------------
# train and pretrain
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunOption:
    """An option of ``train`` or ``pretrain``: its key (as in config files), type and typer option."""

    key: str
    kind: Any
    option: OptionInfo


def run_option(kind: Any, option: OptionInfo) -> RunOption:
    """``option`` (its default None) of type ``kind``; its key is its flag, as the recorded command line writes it."""
    flag = option.param_decls[0].split("/")[0]  # "--gate/--no-gate": gate
    return RunOption(flag.lstrip("-").replace("-", "_"), Optional[kind], option)


def run_command(*options: RunOption) -> Callable[[Callable[[dict], Any]], Callable[..., Any]]:
    """Give a command ``options``, in this order; it is called with their values as one dict.

    typer reads a command's options from its signature: the one made here
    lists ``options``, so that options two commands share are listed once.
    """

    def decorate(command: Callable[[dict], Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def parsed(**values: Any) -> Any:
            # in the order declared, not the order typed: the recorded command line follows it
            return command({o.key: values[o.key] for o in options})

        keyword = inspect.Parameter.KEYWORD_ONLY
        parsed.__signature__ = inspect.Signature(
            [inspect.Parameter(o.key, keyword, default=o.option, annotation=o.kind) for o in options]
        )
        parsed.__annotations__ = {o.key: o.kind for o in options}
        return parsed

    return decorate


# The model and its input, as train and pretrain list them (train puts --alpha between the two).
MODEL_OPTIONS = (
    run_option(Path, typer.Option(
        None, "--config", help="JSON or TOML file of settings (keys as the flags); flags override it."
    )),
    run_option(str, typer.Option(None, "--model", help="Named model (caswit-geo info --list). (default: caswit-tiny)")),
    run_option(str, typer.Option(None, "--fusion-stages", help="none | all | 1 | 4 | 1,4 ... (default: the model's)")),
    run_option(bool, typer.Option(None, "--gate/--no-gate", help="Gated fusion (tanh of a learned scalar). (default: off)")),
)
INPUT_OPTIONS = (
    run_option(int, tile_size(None, "Tile size T in px, a multiple of 32. (default: the model's)")),
    run_option(int, typer.Option(None, "--context-factor", help="LR context covers k x the tile. (default: 2)")),
    run_option(str, typer.Option(None, "--bands", help="1-based bands, e.g. 1,2,3. (default: the data's, else RGB)")),
    run_option(float, typer.Option(None, "--scale", help="Value that maps to 1 (255 for 8-bit). (default: the data's)")),
    run_option(str, typer.Option(
        None, "--mean", help="Per-band mean after scaling, e.g. 0.485,0.456,0.406. (default: ImageNet)"
    )),
    run_option(str, typer.Option(None, "--std", help="Per-band std after scaling. (default: ImageNet)")),
)
# --dataset vector: imagery, label polygons, labelled areas (train; eval lists the same flags)
VECTOR_OPTIONS = (
    run_option(List[str], images(None)),
    run_option(Path, labels(None)),
    run_option(str, labels_layer(None)),
    run_option(str, class_field(None)),
    run_option(Path, areas(None)),
    run_option(str, areas_layer(None)),
    run_option(str, split_field(None)),
    run_option(str, background(None)),
    run_option(Path, classes(None)),
    run_option(float, typer.Option(
        None, "--val-fraction", help="Without --areas: share of the imagery's blocks that validate. (default: 0.2)"
    )),
    run_option(bool, skip_non_polygons(None)),
)
CROPS_PER_IMAGE = run_option(int, typer.Option(None, "--crops-per-image", help="Random tiles per image and epoch."))

# How a run goes: the last options of both commands.
RUN_OPTIONS = (
    run_option(Path, typer.Option(None, "--backbone-weights", help="Local ImageNet Swin weights for both encoders.")),
    run_option(int, typer.Option(None, "--epochs", help="Epochs.")),
    run_option(int, batch_size(None, "Tiles per batch and process (per GPU). (default: 4)")),
    run_option(float, typer.Option(None, "--lr", help="Peak learning rate of AdamW.")),
    run_option(float, typer.Option(None, "--min-lr", help="Learning rate at the end of the cosine. (default: 1e-6)")),
    run_option(float, typer.Option(
        None, "--weight-decay", help="AdamW weight decay (not on norms, biases, position tables)."
    )),
    run_option(float, typer.Option(
        None, "--warmup-epochs", help="Linear warmup length in epochs (fractions allowed)."
    )),
    run_option(float, typer.Option(
        None, "--clip-grad", help="Clip the gradient norm to this value. (default: no clipping)"
    )),
    run_option(str, precision(None, PRECISION_HELP + " (default: auto)")),
    run_option(bool, typer.Option(None, "--amp/--no-amp", help="Deprecated: --no-amp is --precision fp32.", hidden=True)),
    run_option(bool, typer.Option(
        None, "--grad-checkpointing/--no-grad-checkpointing", help="Recompute Swin blocks in backward: less memory."
    )),
    run_option(str, device(None, "auto | cpu | cuda | cuda:N. (default: auto)")),
    run_option(int, workers(None, "DataLoader worker processes. (default: 2)")),
    run_option(int, seed(None, "Random seed. (default: 0)")),
    run_option(Path, out(None, "Run directory. (default: runs/<command>-<date>-<time>)")),
    run_option(bool, overwrite(None, "Start over in a non-empty run directory.")),
    run_option(Path, typer.Option(None, "--resume", help="Continue the run in this directory from its last epoch.")),
    run_option(int, typer.Option(
        None, "--stop-after", help="End after this epoch (resume later), e.g. for job time limits."
    )),
    run_option(bool, progress(None, "Progress bars. (default: on)")),
)
