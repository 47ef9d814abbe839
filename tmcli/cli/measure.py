"""`analyze`, `check`, `selftest`, `report`, `diff` and `filter`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tmcli.cli.app import (
    ChatTemplateOpt,
    ContextOpt,
    GroupOpt,
    IdsFieldOpt,
    InputArg,
    KeepDupOpt,
    MethodOpt,
    PromptIdsFieldOpt,
    SkipOpt,
    TokenizerOpt,
    WindowOpt,
    _Command,
    app,
    fail,
)
from tmcli.errors import EXIT_CHECK_FAILED, EXIT_OK, printable


def _groups(group_by: str | None) -> list[str] | None:
    return [g.strip() for g in group_by.split(",") if g.strip()] if group_by else None


def _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid, context,
              group_by, prompt_ids_field=None, **kwargs):
    from tmcli.aggregate.analysis import analyze_file, parse_tokenizer_option
    from tmcli.aggregate.stored import is_stored_analysis, read_parquet

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
    on_ray: Annotated[bool, typer.Option(
        "--ray", help="INPUT is a folder or quoted glob of shards, measured on Ray workers "
        "(pip install 'tmcli[ray]'); --output then names a folder for the per-sample Parquet "
        "dataset.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", metavar="HOST:PORT", help="With --ray: join this Ray cluster (the shards "
        "and --output on storage every node sees); without it a local Ray runs.")] = None,
    chat_template: ChatTemplateOpt = None,
) -> None:
    """Re-encode completions and report how often and where they are non-canonical; check
    trajectories (records with messages) for drift from their chat template."""
    import json

    from tmcli.aggregate.stored import is_stored_analysis, write_parquet
    from tmcli.io.outputs import check_parquet_path
    from tmcli.present import terminal

    if (on_ray or ray_address) and not is_stored_analysis(input):
        if chat_template:
            fail("--chat-template is not supported with --ray (shards are checked with each "
                 "tokenizer's own template); run without --ray to use it")
        from tmcli.aggregate.analysis import parse_tokenizer_option
        from tmcli.aggregate.distributed import analyze_on_ray

        stored = False
        result = analyze_on_ray(
            input, address=ray_address, output=output,
            tokenizer=parse_tokenizer_option(tokenizer), window=window, method=window_method,
            context=context, group_by=_groups(group_by), ids_field=ids_field,
            prompt_ids_field=prompt_ids_field, skip_invalid=skip_invalid,
            n_resamples=resamples, keep_duplicates=keep_duplicates)
    else:
        stored = is_stored_analysis(input)
        if output:
            check_parquet_path(output)  # before the analysis, not after it
        result = _analysis(input, tokenizer, ids_field, window, window_method, skip_invalid,
                           context, group_by, prompt_ids_field=prompt_ids_field,
                           n_resamples=resamples, keep_duplicates=keep_duplicates,
                           **({} if stored else {"output": output,
                                                 "chat_template": chat_template}))
    if output:
        if stored:
            write_parquet(result, output)
        rows = result.samples.height + (0 if stored else result.meta.get("n_duplicates", 0))
        typer.echo(f"wrote {printable(output)} ({rows} sample rows)", err=True)
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=2))
        terminal.analysis_warnings(result)
    else:
        terminal.print_analysis(result)


@app.command(cls=_Command)
def check(
    input: InputArg,
    max_compression: Annotated[Optional[float], typer.Option(help="Mean compression must be <= this.")] = None,
    max_noncanonical_rate: Annotated[Optional[float], typer.Option(help="Per-token non-canonical rate must be <= this.")] = None,
    max_fraction_compressed: Annotated[Optional[float], typer.Option(help="Share of samples with compression > 0 must be <= this.")] = None,
    max_fraction_noncanonical: Annotated[Optional[float], typer.Option(help="Share of non-canonical samples must be <= this.")] = None,
    max_fraction_drift: Annotated[Optional[float], typer.Option(help="Share of trajectories that drift from their chat template must be <= this.")] = None,
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
    chat_template: ChatTemplateOpt = None,
) -> None:
    """Gate CI on thresholds: exit 0 when all hold, 1 when one fails, 2 on bad usage or input.

    INPUT is raw outputs (.jsonl[.gz|.zst], a Parquet/Arrow table, - for stdin) or an
    `analyze --output` file (.parquet). Per sample, a pipeline can gate (--on-mismatch error:
    list every non-canonical sample and fail), log (--on-mismatch warn: list them, exit by the
    thresholds alone) or drop (`tmcli filter --keep canonical`).
    """
    from tmcli.aggregate.analysis import parse_tokenizer_option
    from tmcli.aggregate.stored import load_analysis
    from tmcli.gates.check import FORMATS, render, run_check, validate_thresholds
    from tmcli.present import terminal

    if fmt not in FORMATS:
        fail(f"unknown --format '{fmt}'; use one of: {', '.join(FORMATS)}")
    thresholds = {
        "max_compression": max_compression,
        "max_noncanonical_rate": max_noncanonical_rate,
        "max_fraction_compressed": max_fraction_compressed,
        "max_fraction_noncanonical": max_fraction_noncanonical,
        "max_fraction_drift": max_fraction_drift,
    }
    if all(v is None for v in thresholds.values()) and on_mismatch is None:
        fail("no threshold given; pass e.g. --max-noncanonical-rate 0.01 or --on-mismatch error")
    validate_thresholds(thresholds, on_mismatch)  # before the analysis, not after it
    result = load_analysis(input, n_resamples=1000, group_by=_groups(group_by),
                           tokenizer=parse_tokenizer_option(tokenizer), ids_field=ids_field,
                           prompt_ids_field=prompt_ids_field, window=window, context=context,
                           skip_invalid=skip_invalid, keep_duplicates=keep_duplicates,
                           chat_template=chat_template)
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

    from tmcli.gates.selftest import TEXTS
    from tmcli.gates.selftest import selftest as run_selftest
    from tmcli.present import terminal

    texts = None
    if text_file:
        path = Path(text_file)
        if not path.is_file():
            fail(f"no such file: {text_file}")
        texts = TEXTS + [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    results = [run_selftest(spec, texts) for spec in tokenizer]
    if json_out:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        terminal.print_selftest(results)
    raise typer.Exit(EXIT_OK if all(r.passed for r in results) else EXIT_CHECK_FAILED)


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
    chat_template: ChatTemplateOpt = None,
) -> None:
    """Show the study's figures with confidence intervals: an HTML report or a terminal table."""
    from tmcli.aggregate.analysis import parse_tokenizer_option
    from tmcli.aggregate.stored import load_analysis
    from tmcli.present.html_report import check_path, parse_temperatures, warnings, write_report

    temps = parse_temperatures(temperatures) if temperatures else None
    if html is not None:
        check_path(html)  # before the analysis, not after it
    analysis = load_analysis(source,
                             tokenizer=parse_tokenizer_option(tokenizer),
                             window=window, skip_invalid=skip_invalid or None,
                             ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                             keep_duplicates=keep_duplicates, chat_template=chat_template)
    if png_dir is not None:
        from tmcli.present.png import export_png

        pngs = export_png(analysis, png_dir, temperatures=temps)
        typer.echo(f"wrote {len(pngs)} figures to {png_dir}", err=True)
    if html is None:
        if png_dir is None:
            from tmcli.present import terminal

            terminal.print_analysis(analysis)
        return
    path = write_report(analysis, html, temperatures=temps)
    for line in warnings(analysis, temps):
        typer.echo(f"warning: {line}", err=True)
    typer.echo(f"wrote {path} ({analysis.samples.height} samples)", err=True)


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
    chat_template: ChatTemplateOpt = None,
) -> None:
    """Show each difference of each non-canonical sample, with its context and cause.

    Per span: its position, the generated and the canonical tokens (whitespace and bytes shown
    unambiguously), --context tokens either side. Colours on a terminal only; exit 0 whether or
    not samples differ.
    """
    import orjson

    from tmcli.aggregate.analysis import parse_tokenizer_option
    from tmcli.gates.diff import diff_records, plain, render

    stats: dict = {}

    def run():
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
        for item in diff_records(input, tokenizer=parse_tokenizer_option(tokenizer),
                                 ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                                 record_id=record_id, limit=limit, context=context_tokens,
                                 in_context=in_context, skip_invalid=skip_invalid, stats=stats,
                                 chat_template=chat_template):
            if json_out:
                typer.echo(orjson.dumps(item, default=str).decode())
            else:
                console.print(render(item))

    run()
    where = (f"showed the first {stats['shown']}; stopped reading (--limit {limit})"
             if stats.get("stopped") else f"showed {stats.get('shown', 0)}")
    skipped = f", {stats['skipped']} invalid line(s) skipped" if stats.get("skipped") else ""
    drift = (f"; {stats['drift']} of {stats['trajectories']} trajectories drift from their "
             "chat template" if stats.get("trajectories") else "")
    typer.echo(f"{stats.get('noncanonical', 0)} of {stats.get('samples', 0)} sample(s) read are "
               f"non-canonical ({where}{skipped}){drift} in {plain(input)}", err=True)


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
    chat_template: ChatTemplateOpt = None,
) -> None:
    """Write the canonical (or non-canonical) input records unchanged, in input order.

    A line with several completions (n > 1) is kept by --keep canonical only when all are
    canonical, by --keep noncanonical when any is not; a trajectory counts as canonical when it
    does not drift and each of its sampled turns is canonical. Prints how many were kept and
    dropped.
    """
    from tmcli.aggregate.analysis import parse_tokenizer_option
    from tmcli.gates.filter import filter_file

    if keep not in ("canonical", "noncanonical"):
        fail(f"unknown --keep '{keep}'; use canonical or noncanonical")
    summary = filter_file(input, output, keep=keep,
                          tokenizer=parse_tokenizer_option(tokenizer),
                          ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                          skip_invalid=skip_invalid, context=context,
                          chat_template=chat_template)
    invalid = f", {summary.invalid} invalid dropped" if summary.invalid else ""
    typer.echo(f"kept {summary.kept} {keep} record(s), dropped {summary.dropped}{invalid} -> "
               f"{summary.output}", err=True)
