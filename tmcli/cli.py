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
import sys
import traceback
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from tmcli import __version__
from tmcli.errors import EXIT_INTERNAL, EXIT_USAGE, TmcliError, from_os_error, printable

_state = {"debug": False}
# Typer's (bundled Click's) usage-error classes, reached through a public name so that this works
# whether Typer vendors Click or depends on it.
_UsageError = typer.BadParameter.__bases__[0]
_ClickException = _UsageError.__bases__[0]
EXIT_BROKEN_PIPE = 141


def _debug() -> bool:
    return _state["debug"] or os.environ.get("TMCLI_DEBUG") == "1"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


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
        message = (f"internal error ({type(exc).__name__}: {_one_line(exc)}); this is a bug in "
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


class _App(TyperGroup):
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


def run_command(fn, *args, **kwargs):
    """Call the API. Kept for the commands that use it: `_App` maps every error already."""
    return fn(*args, **kwargs)


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
KeepDupOpt = Annotated[bool, typer.Option(
    "--keep-duplicates", help="Count every copy of a record that appears more than once (same "
    "id, model, temperature and canonical mode); by default each counts once.")]


def _groups(group_by: str | None) -> list[str] | None:
    return [g.strip() for g in group_by.split(",") if g.strip()] if group_by else None


def _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
              group_by, **kwargs):
    from tmcli.analysis import analyze_file, parse_tokenizer_option
    from tmcli.store import PARQUET_SUFFIXES, read_parquet

    if str(input).lower().endswith(PARQUET_SUFFIXES):  # a stored analysis: no re-encoding
        return read_parquet(input, group_by=_groups(group_by),
                            **{k: v for k, v in kwargs.items()
                               if k in ("n_resamples", "keep_duplicates")})
    return analyze_file(
        input, tokenizer=parse_tokenizer_option(tokenizer), ids_field=ids_field, window=window,
        method=window_method, skip_invalid=skip_invalid, context=context,
        group_by=_groups(group_by), **kwargs,
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
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write one row per sample to this .parquet file (for report/check).")] = None,
    skip_invalid: SkipOpt = False,
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples.")] = 2000,
    keep_duplicates: KeepDupOpt = False,
) -> None:
    """Re-encode completions and report how often and where they are non-canonical."""
    import json

    from tmcli import render
    from tmcli.store import PARQUET_SUFFIXES, check_parquet_path, write_parquet

    stored = input.lower().endswith(PARQUET_SUFFIXES)
    if output:
        check_parquet_path(output)  # before the analysis, not after it
    result = _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
                       group_by, n_resamples=resamples, keep_duplicates=keep_duplicates,
                       **({} if stored else {"output": output}))
    if output:
        if stored:
            write_parquet(result, output)
        rows = result.samples.height + (0 if stored else result.meta.get("n_duplicates", 0))
        typer.echo(f"wrote {printable(output)} ({rows} sample rows)", err=True)
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
    window: Annotated[Optional[int], typer.Option("--window", "-w", min=1, help="Window size in tokens (JSONL input; default 64).")] = None,
    context: Annotated[Optional[bool], typer.Option("--context/--no-context", help="Re-encode after the prompt ids (JSONL input; default) or alone.")] = None,
    group_by: GroupOpt = None,
    skip_invalid: Annotated[Optional[bool], typer.Option("--skip-invalid", help="Skip invalid lines (JSONL input).")] = None,
    keep_duplicates: KeepDupOpt = False,
) -> None:
    """Gate CI on thresholds: exit 0 when all hold, 1 when one fails, 2 on bad usage or input.

    INPUT is raw outputs (.jsonl, - for stdin) or an `analyze --output` file (.parquet).
    """
    from tmcli import render as terminal
    from tmcli.analysis import parse_tokenizer_option
    from tmcli.check import FORMATS, render, run_check, validate_thresholds
    from tmcli.store import load_analysis

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
    validate_thresholds(thresholds)  # before the analysis, not after it
    result = load_analysis(input, n_resamples=1000, group_by=_groups(group_by),
                           tokenizer=parse_tokenizer_option(tokenizer), ids_field=ids_field,
                           window=window, context=context, skip_invalid=skip_invalid,
                           keep_duplicates=keep_duplicates)
    verdict = run_check(result, thresholds, per_group=per_group, use_upper=use_upper)
    terminal.input_warnings(result)
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
    png_dir: Annotated[Optional[str], typer.Option(
        "--png-dir", metavar="DIR", help="Also write every figure as a PNG here (needs Chromium).")] = None,
    keep_duplicates: KeepDupOpt = False,
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
                           window=window, skip_invalid=skip_invalid or None,
                           keep_duplicates=keep_duplicates)
    if png_dir is not None:
        from tmcli.export import export_png

        pngs = run_command(export_png, analysis, png_dir, temperatures=temps)
        typer.echo(f"wrote {len(pngs)} figures to {png_dir}", err=True)
    if html is None:
        if png_dir is None:
            from tmcli import render

            render.print_analysis(analysis)
        return
    path = run_command(write_report, analysis, html, temperatures=temps)
    for line in warnings(analysis, temps):
        typer.echo(f"warning: {line}", err=True)
    typer.echo(f"wrote {path} ({analysis.samples.height} samples)", err=True)

# -- generate ---------------------------------------------------------------------------------------

class _Progress:
    """A Rich bar on stderr (tokens, tokens/s, ETA); only on a terminal and without --quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                   TextColumn, TimeRemainingColumn)

        self.bar = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
            MofNCompleteColumn(), TextColumn("tokens"),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("", total=total, rate="")

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, tokens)
            speed = self.bar.tasks[0].speed
            self.bar.update(self.task, rate=f"{speed:,.0f} tok/s" if speed else "")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _LineProgress:
    """Off a terminal (a log file, CI, nohup): one plain line on stderr at most every
    ``every`` seconds, so a long run shows how far it is and how long it has left."""

    bars = False  # no Rich bars (model conversion) either

    def __init__(self, every: float = 60.0):
        self.every = every
        self.total = self.done = 0
        self.what = ""

    def start(self, total: int) -> None:
        import time

        self.total, self.done = total, 0
        self.started = self.last = time.monotonic()

    def describe(self, text: str) -> None:
        self.what = text

    def advance(self, tokens: int) -> None:
        import time

        self.done += tokens
        now = time.monotonic()
        if now - self.last < self.every or not self.total:
            return
        self.last = now
        rate = self.done / (now - self.started)
        left = (self.total - self.done) / rate if rate else float("inf")
        typer.echo(f"{self.what}: {self.done:,}/{self.total:,} tokens "
                   f"({100 * self.done / self.total:.0f}%), {rate:,.0f} tok/s, "
                   f"~{left / 60:.0f} min left", err=True)

    def stop(self) -> None: ...


@app.command()
def generate(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Prompt file: one prompt per line, "
                                         "or JSONL with a text field; - for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL file to append records to; "
                                        "rerunning the same command resumes it.")],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Alias (smollm2-135m, gemma3-270m), local path, GGUF file or hub id. "
        "Repeat for several models.")] = None,
    temperatures: Annotated[str, typer.Option(
        "--temperatures", "-t", help="List (0,1,2) or start:stop:step range (0:2:0.2, stop "
        "included); 0 is greedy.")] = "0:2:0.2",
    n_prompts: Annotated[Optional[int], typer.Option(
        "--n-prompts", "-n", help="Use the first N prompts (after --min-chars and --shuffle).")] = None,
    min_chars: Annotated[int, typer.Option(
        "--min-chars", help="Skip prompts shorter than this (the study used 640).")] = 0,
    shuffle: Annotated[bool, typer.Option("--shuffle", help="Shuffle prompts with --seed before "
                                          "taking --n-prompts.")] = False,
    prompt_field: Annotated[str, typer.Option("--prompt-field", help="Prompt field in JSONL.")] = "text",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="New tokens per completion "
                                                "(forced: EOS is suppressed until then).")] = 1024,
    stop_at_eos: Annotated[bool, typer.Option("--stop-at-eos", help="End a completion at its "
                                              "first EOS instead of forcing the length.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same outputs.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU), float32, bfloat16, "
                                       "float16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Rows decoded together (default: as many as fit, up to 256 on CPU). "
        "Smaller batches write their records sooner.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Allow a hub model's own Python code to run.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="auto (fused decoder for Llama-style "
                                        "models) or transformers (the model's own forward).")] = "auto",
    canonical: Annotated[str, typer.Option(
        "--canonical", help="off (plain sampling), constrain (mask tokens that would make the "
        "sequence non-canonical) or retokenize (continue from the canonical re-encoding).")] = "off",
    retokenize_every: Annotated[int, typer.Option(
        "--retokenize-every", help="With --canonical retokenize: re-encode every K steps.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Generate completions for models x temperatures x prompts into a JSONL file (resumable)."""
    from tmcli.generation import generate as run_generate, parse_temperatures
    from tmcli.prompts import read_prompts

    models = model or ["smollm2-135m"]
    bar = _Progress(enabled=not quiet and sys.stderr.isatty())
    lines = _LineProgress() if not quiet and not bar.enabled else None

    def run():
        temps = parse_temperatures(temperatures)
        chosen = read_prompts(prompts, field=prompt_field, min_chars=min_chars,
                              n_prompts=n_prompts, shuffle=shuffle, seed=seed)
        return run_generate(models, chosen, output, temperatures=temps,
                            max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, seed=seed,
                            device=device, dtype=dtype, threads=threads, batch_size=batch_size,
                            trust_remote_code=trust_remote_code, engine=engine,
                            canonical=canonical, retokenize_every=retokenize_every,
                            progress=bar if bar.enabled else lines)

    try:
        summary = run_command(run)
    finally:
        bar.stop()
    if not quiet:
        rate = f", {summary.tokens_per_second:,.0f} tok/s" if summary.seconds else ""
        typer.echo(f"{summary.written} records written, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.new_tokens} new tokens{rate})", err=True)


@app.command()
def score(
    input: Annotated[str, typer.Argument(help="tmcli generate records (.jsonl, - for stdin).")],
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL to append scored records "
                                        "to; rerunning resumes it.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Score with this model (default: each record's own model).")] = None,
    temperatures: Annotated[Optional[str], typer.Option(
        "--temperatures", "-t", help="Score only records at these temperatures (0,1,2 or "
        "0:2:0.2); the rest are copied through unscored.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU), float32, bfloat16, "
                                       "float16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary line.")] = False,
) -> None:
    """Add each completion's NLL under a model, scored on its canonical ids (nll_token, nll_char)."""
    from tmcli.generation import parse_temperatures
    from tmcli.scoring import score as run_score

    temps = run_command(parse_temperatures, temperatures) if temperatures else None
    summary = run_command(run_score, input, output, model=model, temperatures=temps,
                          device=device, dtype=dtype, threads=threads)
    if not quiet:
        copied = f", {summary.passed} copied unscored" if summary.passed else ""
        typer.echo(f"{summary.written} records scored{copied}, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.tokens} tokens in {summary.seconds:.1f} s)", err=True)
