"""The command line: parses options, calls the public API, renders. No measurement logic here.

Exit codes (`tmcli.errors`): 0 ok; 1 only when `check` (or `selftest`) fails; 2 a mistake the user
can fix (bad option or input, an OS error on a named path, out of memory), one line on stderr;
70 an internal error (a bug), one line saying how to see the traceback (--debug or
TMCLI_DEBUG=1); 141 stdout was closed early (a broken pipe, as when killed by SIGPIPE). Every
command gets this mapping from `_App`, so a command needs no error handling of its own.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from tmcli import __version__
from tmcli.errors import EXIT_INTERNAL, EXIT_USAGE, TmcliError, from_os_error, one_line, printable

_state = {"debug": False}
# Typer's (bundled Click's) usage-error classes, reached through a public name so that this works
# whether Typer vendors Click or depends on it.
_UsageError = typer.BadParameter.__bases__[0]
_ClickException = _UsageError.__bases__[0]
EXIT_BROKEN_PIPE = 141


def _debug() -> bool:
    return _state["debug"] or os.environ.get("TMCLI_DEBUG") == "1"


def _exit_for(exc: BaseException) -> int:
    """Print the one error line for ``exc`` (and its traceback with --debug); its exit code."""
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        try:  # the reader went away: say nothing more, and let nothing flush into the pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    code = EXIT_USAGE
    if isinstance(exc, TmcliError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = str(from_os_error(exc))
    elif isinstance(exc, MemoryError):
        message = ("out of memory; give a smaller input (or, for generate, a smaller "
                   "--batch-size), or run where more memory is free")
    else:
        code = EXIT_INTERNAL
        message = (f"internal error ({type(exc).__name__}: {one_line(exc)}); this is a bug in "
                   "tmcli: rerun with --debug (or TMCLI_DEBUG=1) to see the traceback, and report it")
    if _debug():
        traceback.print_exception(exc)
    typer.echo(f"Error: {printable(message)}", err=True)
    return code


@contextmanager
def _errors_to_exit():
    """Turn any failure of a command into one line on stderr and an exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except _UsageError as exc:  # bad option values: one line instead of Typer's boxed message
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise
        ctx = getattr(exc, "ctx", None)
        see = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"Error: {printable(exc.format_message())}{see}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except _ClickException:
        raise
    except Exception as exc:
        raise typer.Exit(_exit_for(exc)) from None


# What an option's value looks like in --help, by Python type; flags show nothing (Typer would
# print `<bool>`, and `--shuffle true` then fails).
_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "list[str]": "TEXT"}


def _plain_params(params: list) -> list:
    for p in params:
        if p.param_type_name == "option" and p.metavar is None:
            p.metavar = "" if getattr(p, "is_flag", False) else _METAVARS.get(p.bare_type(), "VALUE")
        elif p.param_type_name == "argument":
            p.display_type_rich = lambda ctx: None  # the name (INPUT) says it; no `<str>`
    return params


class _Command(TyperCommand):
    """Help that reads as the README does: `tmcli analyze [OPTIONS] INPUT`, `--json`,
    `--window N`, never Typer's `{input}`, `<bool>` or `<list[str]>`."""

    def get_params(self, ctx):
        return _plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx):
        return [re.sub(r"^\{(.*)\}", r"\1", p) for p in super().collect_usage_pieces(ctx)]


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _plain_params(super().get_params(ctx))


class _App(_Group):
    """Typer's command group, with every command's failures mapped by `_errors_to_exit`
    (under `main` and under `typer.testing.CliRunner` alike)."""

    def make_context(self, *args, **kwargs):
        with _errors_to_exit():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _errors_to_exit():
            return super().invoke(ctx)


app = typer.Typer(
    name="tmcli",
    cls=_App,
    help="Measure the tokenizer compressibility (non-canonical tokenization) of LLM outputs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


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
    typer.echo(f"Error: {printable(message)}", err=True)
    raise typer.Exit(EXIT_USAGE)


def main() -> None:
    """Entry point (`tmcli`): the app, with the exit codes above."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # raised outside a command (Typer itself): same mapping
        sys.exit(_exit_for(exc))


# -- shared options -----------------------------------------------------------------------------
InputArg = Annotated[str, typer.Argument(metavar="INPUT", help="Outputs: JSONL (.gz/.zst too) from tmcli, vLLM, an OpenAI-compatible server or SGLang, or a Parquet/Arrow table; - for stdin.")]
TokenizerOpt = Annotated[
    Optional[list[str]],
    typer.Option("--tokenizer", "-t", metavar="SPEC", help="Tokenizer for all records (alias, path, tokenizer.json, "
                 "GGUF, hub id), or NAME=SPEC per record name. Default: each record's own field."),
]
IdsFieldOpt = Annotated[Optional[str], typer.Option("--ids-field", help="Name of the generated-ids field (JSONL) or column (Parquet/Arrow); default token_ids.")]
PromptIdsFieldOpt = Annotated[Optional[str], typer.Option("--prompt-ids-field", help="Name of the prompt-ids field or column; default prompt_token_ids.")]
WindowOpt = Annotated[int, typer.Option("--window", "-w", min=1, help="Window size in tokens.")]
MethodOpt = Annotated[str, typer.Option("--window-method", metavar="aligned|study", help="aligned (windows sum to the whole) or study (adds the study script's own figures: each window re-encoded alone, its centre of gravity).")]
SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip invalid lines (and report how many) instead of stopping.")]
ContextOpt = Annotated[bool, typer.Option("--context/--no-context", help="Re-encode the completion after its prompt ids (default) or alone.")]
GroupOpt = Annotated[Optional[str], typer.Option("--group-by", help="Comma-separated columns (default: model,temperature[,canonical]).")]
KeepDupOpt = Annotated[bool, typer.Option(
    "--keep-duplicates", help="Count every copy of a record that appears more than once (same "
    "id, model, temperature and canonical mode); by default each counts once.")]
ChatTemplateOpt = Annotated[Optional[str], typer.Option(
    "--chat-template", metavar="FILE", help="Trajectories (records with messages): render them "
    "with the Jinja template in FILE (or a JSON file's chat_template) instead of the "
    "tokenizer's own.")]
