"""Terminal rendering (Rich): group summaries, sigmoid fits, self-test results.

Data goes to stdout; warnings and hints go to stderr (see `warn`). Every piece of data (model
names, group keys, paths, messages) goes through `data`, so it is never read as Rich markup and
its control characters are shown escaped.
"""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tmcli.errors import printable

stdout = Console(highlight=False, soft_wrap=False)
stderr = Console(stderr=True, highlight=False)


def data(value) -> Text:
    """A value from the data as terminal text: literal (no markup, no emoji codes), control
    characters (ANSI/OSC escapes, newlines) shown as escapes."""
    return Text(printable(value if isinstance(value, str) else str(value)))


def warn(message: str) -> None:
    stderr.print(Text("warning: ", style="yellow") + data(message), soft_wrap=True)


def _num(v, pct: bool = False, digits: int = 3) -> str:
    """Percentages as plain numbers (the column header says %), others to `digits` figures."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits - 1}f}" if pct else f"{v:.{digits}g}"


def _ci(row: dict, name: str, pct: bool = True, digits: int = 3) -> str:
    """The estimate, and its 95% interval dimmed on the line below."""
    lo, hi = row.get(name + "_lo"), row.get(name + "_hi")
    main = _num(row.get(name), pct, digits)
    if lo is None or hi is None or (isinstance(lo, float) and (math.isnan(lo) or math.isnan(hi))):
        return main
    return f"{main}\n[dim]{_num(lo, pct, digits)}–{_num(hi, pct, digits)}[/]"


def _figures_table(title: str, caption: str) -> Table:
    """The compact style of the figure tables: two-line cells (value, interval below)."""
    return Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                 box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)


def groups_table(analysis) -> Table:
    """One row per group; every figure with its 95% interval below it."""
    keys = analysis.group_by
    table = _figures_table(
        f"Re-encoding by group: {analysis.samples.height} samples; percent, 95% interval below",
        "compr.: samples compressed; non-can.: samples non-canonical; mean: mean compression; "
        "tok. rate: tokens in differing spans; merged/longer/reseg.: kinds of non-canonical "
        "samples; centre: compression-weighted mean position vs the median position")
    for k in keys:
        table.add_column({"temperature": "T"}.get(k, k), no_wrap=k == "model")
    for name in ("n", "compr.", "non-can.", "mean", "tok. rate", "merged/\nlonger/reseg.",
                 "centre/\nmedian"):
        table.add_column(name, justify="right", overflow="fold")
    for row in analysis.groups.iter_rows(named=True):
        n = f"[bold yellow]{row['n']}⚠[/]" if row.get("few_samples") else str(row["n"])
        kinds = "/".join(_num(row[f"fraction_{k}"], True, 2)
                         for k in ("merged", "lengthened", "resegmented"))
        cog = _ci(row, "centre_of_gravity", pct=False, digits=4)
        cells = [data(f"{row[k]:g}" if isinstance(row[k], float) else row[k]) for k in keys]
        table.add_row(*cells, n, _ci(row, "fraction_compressed", digits=2),
                      _ci(row, "fraction_noncanonical", digits=2),
                      _ci(row, "mean_compression", digits=3), _ci(row, "token_rate", digits=3),
                      kinds, f"{cog}\n/{_num(row['median_position'], digits=4)}")
    return table


def fits_table(analysis) -> Table | None:
    fits = analysis.fits.filter(analysis.fits["midpoint"].is_not_null()
                                | analysis.fits["nc_midpoint"].is_not_null())
    if fits.height == 0:
        return None
    table = Table(title="Share of samples compressed / non-canonical vs temperature: logistic fits",
                  title_justify="left")
    for name in ("model", "canonical", "temperatures", "compr. midpoint T", "slope", "rmse",
                 "non-can. midpoint T", "slope", "rmse"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in fits.iter_rows(named=True):
        table.add_row(data(row["model"]), data(row["canonical"] or "–"), str(row["n_temperatures"]),
                      *(_num(row.get(p + k)) for p in ("", "nc_") for k in ("midpoint", "slope", "rmse")))
    return table


def comparison_table(analysis) -> Table | None:
    """Canonical modes vs free ("off") per model and temperature; None with one mode."""
    comp = getattr(analysis, "comparison", None)
    if comp is None or comp.height == 0:
        return None
    table = _figures_table(
        "Canonical vs free: per model and temperature, 95% interval below; Δ: paired "
        "difference vs off over shared prompts",
        "non-can.: samples non-canonical (%); mean: mean compression (%); chars/tok: characters "
        "per generated token; dist-2: distinct word bigrams; rep-4: repeated word 4-grams; "
        "nll/tok, nll/char: mean NLL (nats) from the records; pairs: prompts in both modes")
    for name in ("model", "T", "mode"):
        table.add_column(name, no_wrap=name == "model")
    for name in ("n", "non-can.", "mean", "chars/tok", "dist-2", "rep-4", "nll/tok",
                 "nll/char", "pairs", "Δ nll/tok", "Δ chars/tok"):
        table.add_column(name, justify="right", overflow="fold")
    for row in comp.iter_rows(named=True):
        n = f"[bold yellow]{row['n']}⚠[/]" if row.get("few_samples") else str(row["n"])
        t = row["temperature"]
        table.add_row(
            data(row["model"]), "–" if t is None else f"{t:g}", data(row["canonical"]), n,
            _ci(row, "fraction_noncanonical", digits=2), _ci(row, "mean_compression", digits=3),
            *(_ci(row, name, pct=False, digits=3) for name in
              ("chars_per_token", "distinct_2", "repetition_4", "nll_token", "nll_char")),
            "–" if row["paired_prompts"] is None else str(row["paired_prompts"]),
            _ci(row, "diff_nll_token", pct=False, digits=3),
            _ci(row, "diff_chars_per_token", pct=False, digits=3))
    return table


def print_analysis(analysis, console: Console | None = None) -> None:
    console = console or stdout
    console.print(groups_table(analysis))
    fits = fits_table(analysis)
    if fits is not None:
        console.print(fits)
    comparison = comparison_table(analysis)
    if comparison is not None:
        console.print(comparison)
    analysis_warnings(analysis)


def input_warnings(analysis) -> None:
    """What was left out of the input: invalid lines skipped, duplicate records counted once."""
    if analysis.skipped:
        first = analysis.skipped[0]
        warn(f"skipped {len(analysis.skipped)} invalid line(s); first: {first}")
    dupes = analysis.meta.get("n_duplicates") or 0
    if dupes:
        warn(f"{dupes} duplicate record(s) (an id seen before with the same model, temperature "
             "and canonical mode) counted once; pass --keep-duplicates to count every copy")


def analysis_warnings(analysis) -> None:
    g = analysis.groups
    input_warnings(analysis)
    not_exact = int(g["n_not_byte_exact"].sum())
    if not_exact:
        warn(f"{not_exact} sample(s) could not be handled byte-exactly "
             f"({int(g['invalid_bytes'].sum())} invalid UTF-8 byte(s) kept as generated)")
    merges = int(g["n_boundary_merges"].sum())
    if merges:
        warn(f"{merges} sample(s) merge across the prompt/completion boundary "
             "(reported apart, not counted as the model's)")
    few = int(g["few_samples"].sum())
    if few:
        warn(f"{few} group(s) have fewer than 30 samples: their intervals are wide")


def print_selftest(results, console: Console | None = None) -> None:
    console = console or stdout
    table = Table(title="Self-test: canonical text must re-encode unchanged", title_justify="left")
    for name in ("tokenizer", "family", "samples", "non-canonical", "control", "result"):
        table.add_column(name)
    for r in results:
        table.add_row(data(r.tokenizer), data(r.family), str(r.n_samples), str(r.n_noncanonical),
                      "detected" if r.control_detected else "[red]missed[/red]",
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
    console.print(table)
    for r in results:
        for f in r.failures[:5]:
            warn(f"{r.tokenizer}: {f}")
