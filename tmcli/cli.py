"""The command line: parses options, calls the public API, renders. No measurement logic here.

Exit codes: 0 ok, 1 a `check` threshold failed, 2 a user mistake (one line on stderr, no traceback
unless TMCLI_DEBUG=1 or --debug).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from tmcli import __version__
from tmcli.errors import TmcliError

app = typer.Typer(
    name="tmcli",
    help="Measure the tokenizer compressibility (non-canonical tokenization) of LLM outputs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tmcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("TMCLI_DEBUG") == "1"


def fail(message: str) -> None:
    """Print one error line to stderr and exit 2."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def main() -> None:
    """Entry point: run the app, mapping user mistakes to one line and exit 2."""
    try:
        app()
    except TmcliError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)


def run_command(fn, *args, **kwargs):
    """Call the API; turn TmcliError into the one-line error (also under CliRunner)."""
    try:
        return fn(*args, **kwargs)
    except TmcliError as exc:
        if _state["debug"]:
            raise
        fail(str(exc))

