"""Settings shared by ``train`` and ``pretrain``, and config files (JSON or TOML).

A run's settings come from three layers, later ones winning: the dataclass
defaults, an optional config file, the command-line flags. Keys may be
written with dashes or underscores (``fusion-stages`` = ``fusion_stages``).
The resolved settings are written to ``<run>/config.json``, which is also a
valid config file and what ``--resume`` reads back.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.jsonfile import load_json, load_text
from caswit_geo.core.limits import Text, bounded
from caswit_geo.runtime.precision import PRECISIONS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 * 2**20  # a settings file is a few hundred bytes
MAX_CONFIG_DEPTH = 8


@dataclass
class RunConfig:
    """Model, optimiser, hardware and run-directory settings of every training run.

    ``batch_size`` is per process (per GPU with torchrun); the global batch is
    ``batch_size x world size``. ``tile_size`` None = the named model's.
    """

    model: str = "caswit-tiny"
    fusion_stages: str | None = None  # None = the named model's ("all" for caswit-*)
    gate: bool | None = None
    tile_size: int | None = bounded(None, ge=32, multiple_of=32)
    context_factor: int = bounded(2, ge=1, le=8)
    bands: tuple[int, ...] | None = bounded(None, ge=1)  # 1-based; None = the data's (RGB)
    scale: float | None = bounded(None, gt=0)  # None = the data's (255 for 8-bit)
    mean: tuple[float, ...] | None = None  # None = ImageNet statistics
    std: tuple[float, ...] | None = bounded(None, gt=0)
    backbone_weights: Path | None = None  # local ImageNet Swin weights for both encoders
    epochs: int = bounded(20, ge=1)
    batch_size: int = bounded(4, ge=1)
    lr: float = bounded(6e-5, gt=0)
    min_lr: float = bounded(1e-6, ge=0)
    weight_decay: float = bounded(0.01, ge=0)
    warmup_epochs: float = bounded(0.0, ge=0)
    clip_grad: float | None = bounded(None, gt=0)  # max gradient norm; None = no clipping
    precision: str = bounded("auto", Text(choices=PRECISIONS))  # see precision.py; fp16 trains with a GradScaler
    amp: bool | None = None  # deprecated: false = precision fp32 (run directories from before --precision)
    grad_checkpointing: bool = False
    device: str = "auto"
    workers: int = bounded(2, ge=0)
    seed: int = bounded(0, ge=0, le=2**32 - 1)  # numpy's seed range
    out: Path | None = None  # None = runs/<command>-<date>-<time>
    overwrite: bool = False
    resume: Path | None = None
    stop_after: int | None = bounded(None, ge=1)  # end this run after that epoch (resumable), e.g. for job time limits
    progress: bool = True
    command: str | None = None  # the command line, recorded in checkpoints

    def to_dict(self, absolute_paths: bool = False) -> dict:
        """JSON-ready settings; ``absolute_paths`` for a run directory resumed from anywhere."""
        return {k: _plain(v, absolute_paths) for k, v in dataclasses.asdict(self).items()}

    def requested_precision(self) -> str:
        """``precision``, with the deprecated ``amp = false`` meaning fp32."""
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.amp is False:
            if self.precision not in ("auto", "fp32"):
                raise ConfigError(f"--no-amp contradicts --precision {self.precision} (--no-amp is --precision fp32)")
            return "fp32"
        return self.precision

    def resolved_tile_size(self) -> int:
        """``tile_size``, or the named model's tile size."""
        if self.tile_size is not None:
            return self.tile_size
        from caswit_geo.model.configs import get_config  # torch: only when a run starts

        return get_config(self.model, num_classes=1).img_size

    def model_overrides(self, in_chans: int) -> dict:
        """Model config fields set by this run (tile size, bands, and the ablation switches given)."""
        overrides = {"img_size": self.resolved_tile_size(), "in_chans": in_chans}
        if self.fusion_stages is not None:
            overrides["fusion_stages"] = self.fusion_stages
        if self.gate is not None:
            overrides["gate"] = self.gate
        return overrides


# Settings that may differ when a run is resumed: they change where and how
# fast it runs, not what it computes. (The recorded command stays the one that started the run.)
RUNTIME_FIELDS = ("device", "workers", "stop_after", "progress", "resume")


def _plain(value, absolute_paths: bool = False):
    if isinstance(value, Path):
        return os.path.abspath(value) if absolute_paths else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, absolute_paths) for v in value]
    return value


def load_config_file(path: str | Path, section: str | None = None) -> dict:
    """Settings of a ``.json`` or ``.toml`` file: the top level, or its ``section`` table when present.

    One file may thus hold ``[pretrain]`` and ``[train]`` tables side by side.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix.lower() == ".json":
        data = load_json(path, what="the config file", max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH,
                         error=ConfigError)
    elif path.suffix.lower() == ".toml":
        # TOML is bounded by the same rules: read as bytes within the limit, nesting checked after parsing
        raw = load_text(path, what="the config file", max_bytes=MAX_CONFIG_BYTES, error=ConfigError)
        try:
            data = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        except RecursionError:
            raise ConfigError(f"{path}: the config file nests too deep") from None
    else:
        raise ConfigError(f"{path}: config files are .json or .toml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    if section is not None and isinstance(data.get(section), dict):
        return data[section]
    return data


def make_config(cls: type, file_values: dict | None = None, cli_values: dict | None = None, *, source: str = "config"):
    """``cls`` built from defaults < ``file_values`` < ``cli_values`` (None values in CLI = not given)."""
    hints = typing.get_type_hints(cls)
    merged = {}
    for layer, where in ((file_values or {}, source), (cli_values or {}, "command line")):
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in hints:
                raise ConfigError(f"{where}: unknown setting {key!r}")
            if where == "command line" and value is None:
                continue
            merged[name] = _coerce(hints[name], value, f"{where}: {key}")
    return cls(**merged)


def _coerce(hint, value, what: str):
    """Check and convert a config value to the field's type (paths, tuples, numbers)."""
    if value is None:
        return None
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, what)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{what} must be a path, got {value!r}")
        return Path(value)
    if origin in (tuple, list):
        item = args[0] if args else str
        if isinstance(value, (str, Path)):
            # "1,2,3" for numbers; one path stays one path (paths may hold commas and spaces)
            value = [value] if item in (Path, str) else [v for v in value.replace(" ", ",").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{what} must be a list, got {value!r}")
        items = [_coerce(item, v, what) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{what} must be a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a number, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{what} must be a whole number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. fusion_stages = 4 in a TOML file
        if not isinstance(value, str):
            raise ConfigError(f"{what} must be text, got {value!r}")
        return value
    return value


def resolved_for_resume(saved: dict, given, cls: type, source: str):
    """The saved settings of a run, with only the runtime fields taken from ``given``."""
    config = make_config(cls, saved, source=source)
    return dataclasses.replace(config, **{f: getattr(given, f) for f in RUNTIME_FIELDS})
