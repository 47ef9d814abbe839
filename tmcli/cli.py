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
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
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



# -- shared options -----------------------------------------------------------------------------
InputArg = Annotated[str, typer.Argument(help="Outputs JSONL (tmcli, vLLM or OpenAI format); - for stdin.")]
TokenizerOpt = Annotated[
    Optional[list[str]],
    typer.Option("--tokenizer", "-t", help="Tokenizer for all records (alias, path, tokenizer.json, "
                 "GGUF, hub id), or NAME=SPEC per record name. Default: each record's own field."),
]
IdsFieldOpt = Annotated[Optional[str], typer.Option("--ids-field", help="Name of the generated-ids field in custom JSONL.")]
WindowOpt = Annotated[int, typer.Option("--window", "-w", min=1, help="Window size in tokens.")]
MethodOpt = Annotated[str, typer.Option("--window-method", help="aligned (windows sum to the whole) or study (each window re-encoded alone, as the study did).")]
SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip invalid lines (and report how many) instead of stopping.")]
ContextOpt = Annotated[bool, typer.Option("--context/--no-context", help="Re-encode the completion after its prompt ids (default) or alone.")]
GroupOpt = Annotated[Optional[str], typer.Option("--group-by", help="Comma-separated columns (default: model,temperature[,canonical]).")]


def _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
              group_by, **kwargs):
    from tmcli.analysis import analyze_file, parse_tokenizer_option

    return analyze_file(
        input, tokenizer=parse_tokenizer_option(tokenizer), ids_field=ids_field, window=window,
        method=window_method, skip_invalid=skip_invalid, context=context,
        group_by=[g.strip() for g in group_by.split(",") if g.strip()] if group_by else None,
        **kwargs,
    )


@app.command()
def analyze(
    input: InputArg,
    tokenizer: TokenizerOpt = None,
    ids_field: IdsFieldOpt = None,
    window: WindowOpt = 64,
    window_method: MethodOpt = "aligned",
    context: ContextOpt = True,
    group_by: GroupOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print group summaries as JSON.")] = False,
    skip_invalid: SkipOpt = False,
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples.")] = 2000,
) -> None:
    """Re-encode completions and report how often and where they are non-canonical."""
    import json

    from tmcli import render

    result = run_command(_analysis, input, tokenizer, ids_field, window, window_method,
                         skip_invalid, context, group_by, n_resamples=resamples)
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=2))
        render.analysis_warnings(result)
    else:
        render.print_analysis(result)


@app.command()
def check(
    input: InputArg,
    max_compression: Annotated[Optional[float], typer.Option(help="Mean compression must be <= this.")] = None,
    max_noncanonical_rate: Annotated[Optional[float], typer.Option(help="Per-token non-canonical rate must be <= this.")] = None,
    max_fraction_compressed: Annotated[Optional[float], typer.Option(help="Share of samples with compression > 0 must be <= this.")] = None,
    max_fraction_noncanonical: Annotated[Optional[float], typer.Option(help="Share of non-canonical samples must be <= this.")] = None,
    per_group: Annotated[bool, typer.Option("--per-group", help="Apply thresholds to every group, not the whole input.")] = False,
    use_upper: Annotated[bool, typer.Option("--ci-upper", help="Compare the upper 95% bound instead of the estimate.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, json, github or junit.")] = "text",
    tokenizer: TokenizerOpt = None,
    ids_field: IdsFieldOpt = None,
    window: WindowOpt = 64,
    context: ContextOpt = True,
    group_by: GroupOpt = None,
    skip_invalid: SkipOpt = False,
) -> None:
    """Gate CI on thresholds: exit 0 when all hold, 1 when one fails, 2 on bad usage or input."""
    from tmcli.check import FORMATS, render, run_check

    if fmt not in FORMATS:
        fail(f"unknown --format '{fmt}'; use one of: {', '.join(FORMATS)}")
    thresholds = {
        "max_compression": max_compression,
        "max_noncanonical_rate": max_noncanonical_rate,
        "max_fraction_compressed": max_fraction_compressed,
        "max_fraction_noncanonical": max_fraction_noncanonical,
    }
    if all(v is None for v in thresholds.values()):
        fail("no threshold given; pass e.g. --max-noncanonical-rate 0.01")
    result = run_command(_analysis, input, tokenizer, ids_field, window, "aligned",
                         skip_invalid, context, group_by, n_resamples=1000)
    verdict = run_command(run_check, result, thresholds, per_group=per_group, use_upper=use_upper)
    typer.echo(render(verdict, fmt))
    raise typer.Exit(verdict.exit_code)


@app.command()
def selftest(
    tokenizer: Annotated[list[str], typer.Option("--tokenizer", "-t", help="Tokenizer(s) to test.")],
    text_file: Annotated[Optional[str], typer.Option("--text-file", help="Extra texts, one per line.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Check that canonically encoded text re-encodes with 0 non-canonical samples."""
    import json
    from pathlib import Path

    from tmcli import render
    from tmcli.selftest import TEXTS, selftest as run_selftest

    texts = None
    if text_file:
        path = Path(text_file)
        if not path.is_file():
            fail(f"no such file: {text_file}")
        texts = TEXTS + [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    results = [run_command(run_selftest, spec, texts) for spec in tokenizer]
    if json_out:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        render.print_selftest(results)
    raise typer.Exit(0 if all(r.passed for r in results) else 1)
