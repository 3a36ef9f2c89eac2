"""How the options of ``train`` and ``pretrain`` become a config (they are declared in ``options.py``).

Every option defaults to None ("not given") so that a config file can fill
it and the engine's dataclass default applies last. Multi-GPU and
multi-node runs start the same command under torchrun::

    torchrun --nproc_per_node 4 --no-python caswit-geo train ...
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from caswit_geo.cli.console import after_outputs, make_console, safe
from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.train.config import RUNTIME_FIELDS, load_config_file, make_config
from caswit_geo.safeio.signals import EXIT_CODES

if TYPE_CHECKING:
    from rich.console import Console


def parse_list(value: Optional[str], kind: type, flag: str) -> Optional[list]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (None stays None)."""
    if value is None:
        return None
    try:
        return [kind(v) for v in value.replace(" ", ",").split(",") if v]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma-separated list of numbers, got {value!r}") from None


def run_config(cls: type, command: str, given: dict):
    """``cls`` from the option values of ``command``, its ``--config`` file among them."""
    given = dict(given)
    config_file = given.pop("config")
    for key, kind in (("bands", int), ("mean", float), ("std", float)):
        given[key] = parse_list(given[key], kind, "--" + key)
    return build_config(cls, command, config_file, given)


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
    """The command as it could be typed again (flags in canonical form), URLs without their query or
    credentials (it is recorded in ``config.json`` and the checkpoints)."""
    from caswit_geo.geo.remote import mask_text  # light: no GDAL import

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
    return mask_text(shlex.join(words))


def report(command: str, result, print_result: Callable[[Any, Console], None]) -> None:
    """End ``command``: print its summary (``print_result``) or, for a run a signal stopped, where its
    state is and how to continue, and exit 143 (SIGTERM) or 130 (SIGINT)."""
    if result.stopped_by is not None:
        epoch, done = result.stopped_at
        where = f"at epoch {epoch}, iteration {done}" if done else f"after epoch {epoch - 1}"
        typer.echo(
            f"caswit-geo: stopped by {result.stopped_by} {where}; the state is saved in {result.run_dir}; "
            f"continue with: caswit-geo {command} --resume {result.run_dir}",
            err=True,
        )
        raise typer.Exit(EXIT_CODES.get(result.stopped_by, 143))
    with after_outputs():
        console = make_console()
        if not result.completed:  # --stop-after ended it: resumable
            last = result.history[-1]["epoch"] if result.history else 0
            console.print(f"stopped after epoch {last}; continue with: caswit-geo {command} --resume {safe(result.run_dir)}")
        print_result(result, console)
