"""``caswit-geo`` command line: parses options, calls one engine, prints.

Errors a user can cause are :class:`~caswit_geo.errors.CaswitError`: one line
on stderr, exit code 1, no traceback unless ``--debug`` (accepted anywhere on
the command line).
"""

from __future__ import annotations

import importlib
import sys
import warnings

import click
import typer

from ..errors import CaswitError
from ..signals import EXIT_CODES, interrupted_by, signals_interrupt

app = typer.Typer(
    name="caswit-geo",
    help="Land-cover maps from aerial orthophotos with CASWiT (HR tiles + LR context).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors.")) -> None:
    _state["debug"] = _state["debug"] or debug


def debug_enabled() -> bool:
    return _state["debug"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"caswit-geo: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; always ends with SystemExit(code)."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
    except CaswitError as e:
        if debug:
            raise
        print(f"caswit-geo: error: {_one_line(e)}", file=sys.stderr)
        code = 1
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = EXIT_CODES["SIGINT"]
    except Exception as e:  # a bug, not a user error: still one line unless --debug
        if debug:
            raise
        print(
            f"caswit-geo: internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        code = 2
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
