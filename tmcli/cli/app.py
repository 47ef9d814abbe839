"""The command line: parses options, calls the public API, renders. No measurement logic here.

Exit codes (`tmcli.errors`): 0 ok; 1 only when `check` (or `selftest`) fails; 2 a mistake the user
can fix (bad option or input, an OS error on a named path, out of memory, a stdout that cannot
show the data), one line on stderr; 70 an internal error (a bug), one line saying how to see the
traceback (--debug or TMCLI_DEBUG=1); 130 Ctrl-C, 143 SIGTERM; 141 stdout was closed early (a
broken pipe, as when killed by SIGPIPE). Every command gets this mapping from `_App`, so a
command needs no error handling of its own.
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
from tmcli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    InvalidRecord,
    TmcliError,
    from_os_error,
    one_line,
    printable,
)

_state = {"debug": False}
# Typer's (bundled Click's) usage-error classes, reached through a public name so that this works
# whether Typer vendors Click or depends on it.
_UsageError = typer.BadParameter.__bases__[0]
_ClickException = _UsageError.__bases__[0]
SKIP_HINT = "or pass --skip-invalid to skip such lines"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that the same
    clean-up runs (workers stopped, temporary files removed)."""


class StdoutEncodingError(TmcliError):
    """stdout's encoding cannot show a character of the data (a user's locale to fix)."""


def _stdout_unencodable(exc: UnicodeEncodeError):
    """The error handler of stdout: bytes a path or argument carried undecoded (Python's
    surrogate escapes) are written as they were; any other character the encoding lacks stops
    the command with one line (exit 2) instead of a crash."""
    part = exc.object[exc.start:exc.end]
    if all("\udc80" <= c <= "\udcff" for c in part):
        return bytes(ord(c) - 0xDC00 for c in part), exc.end
    char = exc.object[exc.start] if exc.start < len(exc.object) else "?"
    raise StdoutEncodingError(
        f"stdout's encoding ({exc.encoding}) cannot show the character U+{ord(char):04X} of "
        "the output", hint="set PYTHONIOENCODING=utf-8 (or a UTF-8 locale, e.g. LANG=C.UTF-8), "
        "or ask for --json")


def _silence_stdout() -> None:
    """The reader of stdout went away: say nothing more, and let nothing flush into the pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _debug() -> bool:
    return _state["debug"] or os.environ.get("TMCLI_DEBUG") == "1"


def _exit_for(exc: BaseException) -> int:
    """Print the one error line for ``exc`` (and its traceback with --debug); its exit code."""
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    code = EXIT_USAGE
    if isinstance(exc, InvalidRecord) and exc.skippable:
        message = f"{exc}; {SKIP_HINT}" if exc.hint else f"{exc}; fix or drop the line, {SKIP_HINT}"
    elif isinstance(exc, TmcliError):
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
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated:
        typer.echo("Terminated.", err=True)
        raise typer.Exit(EXIT_TERMINATED) from None
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


def _on_sigterm(_signum, _frame):
    raise Terminated()


def _broken_pipe(_console) -> None:
    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def _setup_process() -> None:
    """What the process needs before any command: stdout that refuses (exit 2, one line)
    rather than crashes on a character its encoding lacks; a closed stdout that is exit 141
    also when Typer's own Rich console (help, usage) meets it (Rich would exit 1, the code of a
    failed check); SIGTERM handled as Ctrl-C is."""
    import codecs
    import signal

    from rich.console import Console

    Console.on_broken_pipe = _broken_pipe

    codecs.register_error("tmcli-stdout", _stdout_unencodable)
    try:
        sys.stdout.reconfigure(errors="tmcli-stdout")
    except (AttributeError, ValueError):  # not a TextIOWrapper (embedded, redirected in Python)
        pass
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def main() -> None:
    """Entry point (`tmcli`): the app, with the exit codes above."""
    _setup_process()
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        code = EXIT_INTERRUPTED
    except Terminated:
        typer.echo("Terminated.", err=True)
        code = EXIT_TERMINATED
    except Exception as exc:  # raised outside a command (Typer itself): same mapping
        code = _exit_for(exc)
    try:  # what is still buffered for stdout: a reader gone by now is a broken pipe too
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - e.g. an encoding error in the last buffer
        code = _exit_for(exc)
    sys.exit(code)


# -- shared options -----------------------------------------------------------------------------
def stdin_hint(value):
    """An input argument's callback: reading ``-`` from a terminal says so on stderr, since
    nothing else would tell the user why the command waits."""
    if value == "-":
        try:
            tty = sys.stdin.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            typer.echo("reading from the terminal (stdin): paste the lines, then Ctrl-D to end "
                       "(Ctrl-C to stop); or give a file instead of -", err=True)
    return value


InputArg = Annotated[str, typer.Argument(metavar="INPUT", callback=stdin_hint, help="Outputs: JSONL (.gz/.zst too) from tmcli, vLLM, an OpenAI-compatible server or SGLang, or a Parquet/Arrow table; - for stdin.")]
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
GroupOpt = Annotated[Optional[str], typer.Option("--group-by", metavar="FIELD,FIELD", help="Comma-separated record fields or columns: any field of the records (checkpoint, step, policy_version; a.b reaches into objects), carried into the per-sample table. Default: model, canonical mode and truncation (top_k, top_p, min_p) where they vary, temperature; one figure series per group but temperature.")]
KeepDupOpt = Annotated[bool, typer.Option(
    "--keep-duplicates", help="Count every copy of a record that appears more than once (same "
    "id, model, temperature and canonical mode); by default each counts once.")]
ChatTemplateOpt = Annotated[Optional[str], typer.Option(
    "--chat-template", metavar="FILE", help="Trajectories (records with messages): render them "
    "with the Jinja template in FILE (or a JSON file's chat_template) instead of the "
    "tokenizer's own.")]
