"""``caswit-geo`` command line: parses options, calls one engine, prints.

Errors a user can cause are :class:`~caswit_geo.core.errors.CaswitError`: one line
on stderr, exit code 1, no traceback unless ``--debug`` (accepted anywhere on
the command line). Usage errors (unknown option, missing argument, a value
of the wrong type) are the parser's own message, exit code 2.

Start-up stays light: this package and the command modules import only
typer, rich and the engines' config modules (dataclasses, whose defaults the
options show; ``options.py`` holds the options several commands share).
Each command imports its engine (torch, rasterio, ...) in its body, so
``--help``, ``--version`` and usage errors answer at once.

May import: engine, model, geo, data, synthetic, runtime, safeio, core.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import typer

from caswit_geo import __version__
from caswit_geo.cli.console import plain
from caswit_geo.core.errors import CaswitError, one_line, says_disk_full, user_message
from caswit_geo.safeio.signals import EXIT_CODES, interrupted_by, signals_interrupt

app = typer.Typer(
    name="caswit-geo",
    help="Land-cover maps from aerial orthophotos with CASWiT (HR tiles + LR context).",
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"caswit-geo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    _state["debug"] = _state["debug"] or debug


def debug_enabled() -> bool:
    return _state["debug"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from caswit_geo.geo.remote import mask_text  # light: no GDAL import

    if (category.__module__, category.__name__) == ("rasterio.errors", "NotGeoreferencedWarning"):
        return  # planning says it once in our words (see caswit_geo.geo.ignore_not_georeferenced)
    print(f"caswit-geo: warning: {plain(mask_text(one_line(message)))}", file=sys.stderr)


def error_line(exc: BaseException) -> str:
    """The one line printed for an exception that ends a command (URLs masked: no token is printed)."""
    from caswit_geo.geo.remote import mask_text  # light: no GDAL import

    return mask_text(_error_line(exc))


def _error_line(exc: BaseException) -> str:
    name, message = user_message(exc)
    if isinstance(exc, CaswitError):
        return f"caswit-geo: error: {plain(message)}"
    if says_disk_full(exc):  # a full disk no engine caught where it happened
        where = getattr(exc, "filename", None)
        return f"caswit-geo: error: no space left on device{f' ({plain(where)})' if where else ''}"
    from caswit_geo.geo.sources import read_error  # light: no GDAL import

    unreadable = read_error(exc)  # a raster that failed while being read, named as GDAL names it
    if unreadable is not None:
        return f"caswit-geo: error: {plain(one_line(unreadable))}"
    if isinstance(exc, OSError):  # the machine, not a bug: a file or folder that cannot be used
        return f"caswit-geo: error: {plain(message)}"
    return f"caswit-geo: internal error: {name}: {plain(message)} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> None:
    """Console entry point; always ends with SystemExit(code)."""
    argv = list(sys.argv[1:] if argv is None else argv) or ["--help"]  # no arguments: the help, exit 0
    debug = "--debug" in argv
    _state["debug"] = debug
    if debug:
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    else:
        warnings.showwarning = _show_warning
    try:
        with signals_interrupt():  # SIGTERM unwinds like Ctrl-C: every command removes its temporaries
            rv = app(args=argv, prog_name="caswit-geo", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except typer.TyperException as e:  # the parser's usage errors
        e.show()
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = EXIT_CODES["SIGINT"]
        if interrupted_by() is None:
            print("caswit-geo: interrupted", file=sys.stderr)
    except Exception as e:
        if debug:
            raise
        print(error_line(e), file=sys.stderr)
        code = 1
    signame = interrupted_by()  # typer turns an interrupt into exit code 130 without a word
    if signame is not None:
        print(f"caswit-geo: {'stopped by SIGTERM' if signame == 'SIGTERM' else 'interrupted'}", file=sys.stderr)
        code = EXIT_CODES[signame]
    raise SystemExit(code)


# Each command registers itself on `app` when imported.
for _name in ("info", "predict", "eval", "train", "pretrain", "synth", "explain", "convert"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_name}":
            raise
