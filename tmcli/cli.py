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

    def advance(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, tokens)
            speed = self.bar.tasks[0].speed
            self.bar.update(self.task, rate=f"{speed:,.0f} tok/s" if speed else "")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Generate completions for models x temperatures x prompts into a JSONL file (resumable)."""
    from tmcli.generation import generate as run_generate, parse_temperatures
    from tmcli.prompts import read_prompts

    models = model or ["smollm2-135m"]
    bar = _Progress(enabled=not quiet and sys.stderr.isatty())

    def run():
        temps = parse_temperatures(temperatures)
        chosen = read_prompts(prompts, field=prompt_field, min_chars=min_chars,
                              n_prompts=n_prompts, shuffle=shuffle, seed=seed)
        return run_generate(models, chosen, output, temperatures=temps,
                            max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, seed=seed,
                            device=device, dtype=dtype, threads=threads, batch_size=batch_size,
                            trust_remote_code=trust_remote_code, engine=engine,
                            progress=bar if bar.enabled else None)

    try:
        summary = run_command(run)
    finally:
        bar.stop()
    if not quiet:
        rate = f", {summary.tokens_per_second:,.0f} tok/s" if summary.seconds else ""
        typer.echo(f"{summary.written} records written, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.new_tokens} new tokens{rate})", err=True)
