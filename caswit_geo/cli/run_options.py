"""Options shared by ``train`` and ``pretrain``, and how they become a config.

Every option defaults to None ("not given") so that a config file can fill
it and the engine's dataclass default applies last. Multi-GPU and
multi-node runs start the same command under torchrun::

    torchrun --nproc_per_node 4 --no-python caswit-geo train ...
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from caswit_geo.engine.train.config import RUNTIME_FIELDS, load_config_file, make_config
from caswit_geo.core.errors import ConfigError
from caswit_geo.safeio.signals import EXIT_CODES

CONFIG = typer.Option(None, "--config", help="JSON or TOML file of settings (keys as the flags); flags override it.")
MODEL = typer.Option(None, "--model", help="Named model (caswit-geo info --list). (default: caswit-tiny)")
FUSION_STAGES = typer.Option(None, "--fusion-stages", help="none | all | 1 | 4 | 1,4 ... (default: the model's)")
GATE = typer.Option(None, "--gate/--no-gate", help="Gated fusion (tanh of a learned scalar). (default: off)")
TILE_SIZE = typer.Option(None, "--tile-size", help="Tile size T in px, a multiple of 32. (default: the model's)")
CONTEXT_FACTOR = typer.Option(None, "--context-factor", help="LR context covers k x the tile. (default: 2)")
BANDS = typer.Option(None, "--bands", help="1-based bands, e.g. 1,2,3. (default: the data's, else RGB)")
SCALE = typer.Option(None, "--scale", help="Value that maps to 1 (255 for 8-bit). (default: the data's)")
MEAN = typer.Option(None, "--mean", help="Per-band mean after scaling, e.g. 0.485,0.456,0.406. (default: ImageNet)")
STD = typer.Option(None, "--std", help="Per-band std after scaling. (default: ImageNet)")
BACKBONE_WEIGHTS = typer.Option(None, "--backbone-weights", help="Local ImageNet Swin weights for both encoders.")
EPOCHS = typer.Option(None, "--epochs", help="Epochs.")
BATCH_SIZE = typer.Option(None, "--batch-size", help="Tiles per batch and process (per GPU). (default: 4)")
LR = typer.Option(None, "--lr", help="Peak learning rate of AdamW.")
MIN_LR = typer.Option(None, "--min-lr", help="Learning rate at the end of the cosine. (default: 1e-6)")
WEIGHT_DECAY = typer.Option(None, "--weight-decay", help="AdamW weight decay (not on norms, biases, position tables).")
WARMUP_EPOCHS = typer.Option(None, "--warmup-epochs", help="Linear warmup length in epochs (fractions allowed).")
CLIP_GRAD = typer.Option(None, "--clip-grad", help="Clip the gradient norm to this value. (default: no clipping)")
PRECISION_HELP = (
    "auto | fp32 | bf16 | fp16. auto: bf16 on GPUs that have it, else fp16; bf16 on CPUs with AMX "
    "for models it speeds up; else fp32."
)
PRECISION = typer.Option(None, "--precision", help=PRECISION_HELP + " (default: auto)")
AMP = typer.Option(None, "--amp/--no-amp", help="Deprecated: --no-amp is --precision fp32.", hidden=True)
GRAD_CHECKPOINTING = typer.Option(
    None, "--grad-checkpointing/--no-grad-checkpointing", help="Recompute Swin blocks in backward: less memory."
)
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N. (default: auto)")
WORKERS = typer.Option(None, "--workers", help="DataLoader worker processes. (default: 2)")
SEED = typer.Option(None, "--seed", help="Random seed. (default: 0)")
OUT = typer.Option(None, "--out", "-o", help="Run directory. (default: runs/<command>-<date>-<time>)")
OVERWRITE = typer.Option(None, "--overwrite", help="Start over in a non-empty run directory.")
RESUME = typer.Option(None, "--resume", help="Continue the run in this directory from its last epoch.")
STOP_AFTER = typer.Option(None, "--stop-after", help="End after this epoch (resume later), e.g. for job time limits.")
PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bars. (default: on)")


def parse_list(value: Optional[str], kind: type, flag: str) -> Optional[list]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (None stays None)."""
    if value is None:
        return None
    try:
        return [kind(v) for v in value.replace(" ", ",").split(",") if v]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma-separated list of numbers, got {value!r}") from None


def build_config(cls: type, command: str, config_file: Optional[Path], given: dict):
    """``cls`` from defaults < ``config_file`` < ``given`` flags (None = not given).

    With ``resume``, only the runtime settings may be given: the run
    continues with the settings saved in its directory.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("resume") is not None:
        fixed = sorted(k for k in given if k not in RUNTIME_FIELDS)
        if config_file is not None or fixed:
            flags = ["--config"] if config_file is not None else []
            flags += ["--" + k.replace("_", "-") for k in fixed]
            raise ConfigError(
                f"{', '.join(flags)}: a resumed run keeps the settings in {given['resume']}/config.json "
                "(only --device, --workers, --stop-after and --progress may change)"
            )
    file_values = load_config_file(config_file, section=command) if config_file is not None else {}
    given["command"] = command_line(command, config_file, given)
    return make_config(cls, file_values, given, source=str(config_file))


def command_line(command: str, config_file: Optional[Path], given: dict) -> str:
    """The command as it could be typed again (flags in canonical form)."""
    words = ["caswit-geo", command]
    if config_file is not None:
        words += ["--config", str(config_file)]
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            words += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, (list, tuple)):
            for v in value:  # repeatable option, e.g. --images
                words += [flag, str(v)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def exit_if_stopped(command: str, result) -> None:
    """A run a signal stopped: say where, how to continue, and exit 143 (SIGTERM) or 130 (SIGINT)."""
    if result.stopped_by is None:
        return
    epoch, done = result.stopped_at
    where = f"at epoch {epoch}, iteration {done}" if done else f"after epoch {epoch - 1}"
    typer.echo(
        f"caswit-geo: stopped by {result.stopped_by} {where}; the state is saved in {result.run_dir}; "
        f"continue with: caswit-geo {command} --resume {result.run_dir}",
        err=True,
    )
    raise typer.Exit(EXIT_CODES.get(result.stopped_by, 143))
