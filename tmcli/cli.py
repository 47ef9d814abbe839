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


@app.command()
def report(
    source: Annotated[str, typer.Argument(
        metavar="INPUT",
        help="Raw outputs (.jsonl, - for stdin) or `analyze --output` (.parquet).")],
    html: Annotated[Optional[str], typer.Option(
        "--html", metavar="PATH",
        help="Write a self-contained HTML report here (.html); else print a summary.")] = None,
    temperatures: Annotated[str, typer.Option(
        "--temperatures", metavar="T,T",
        help="Temperatures of the by-position figure; the nearest run is used.")] = "2.0,0.8",
    tokenizer: Annotated[Optional[list[str]], typer.Option(
        "--tokenizer", metavar="SPEC",
        help="JSONL only: tokenizer for all records, or NAME=SPEC per name.")] = None,
    window: Annotated[Optional[int], typer.Option(
        "--window", metavar="N", help="JSONL only: window size in tokens (default 64).")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="JSONL only: skip unusable records instead of stopping.")] = False,
) -> None:
    """Show the study's figures with confidence intervals: an HTML report or a terminal table."""
    from tmcli.analysis import parse_tokenizer_option
    from tmcli.report import check_path, parse_temperatures, warnings, write_report
    from tmcli.store import load_analysis

    temps = run_command(parse_temperatures, temperatures)
    if html is not None:
        run_command(check_path, html)  # before the analysis, not after it
    analysis = run_command(load_analysis, source,
                           tokenizer=run_command(parse_tokenizer_option, tokenizer),
                           window=window, skip_invalid=skip_invalid or None)
    if html is None:
        from tmcli.terminal import print_summary

        print_summary(analysis)
        return
    path = run_command(write_report, analysis, html, temperatures=temps)
    for line in warnings(analysis, temps):
        typer.echo(f"warning: {line}", err=True)
    typer.echo(f"wrote {path} ({analysis.samples.height} samples)", err=True)

