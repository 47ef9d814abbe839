"""`tmcli report` without `--html`: the same summary as a Rich table in the terminal.

The table is data, so it goes to stdout; caveats (too few samples, skipped records) go to stderr.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich import box
from rich.table import Table

from tmcli.summary import FEW_SAMPLES


def _pct(v, digits: int = 1) -> str:
    return "–" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}"


def _ci(row: dict, col: str, digits: int = 1) -> str:
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return _pct(row.get(col), digits)
    return f"{_pct(row.get(col), digits)}\n[dim]{_pct(lo, digits)}–{_pct(hi, digits)}[/]"


def summary_table(analysis) -> Table:
    """One row per group; every figure in percent with its 95% interval beside it."""
    g = analysis.groups
    keys = [k for k in ("model", "canonical", "temperature") if k in g.columns]
    table = Table(title=f"tmcli report: {analysis.samples.height} samples; "
                        "percent, 95% interval below", title_justify="left",
                  caption="compr.: samples compressed; non-can.: samples non-canonical; mean: "
                          "mean compression; tok. rate: tokens in differing spans; centre: "
                          "compression-weighted mean position", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for k in keys:
        table.add_column({"temperature": "T"}.get(k, k), no_wrap=k == "model")
    for name in ("n", "compr.", "non-can.", "mean", "tok. rate", "centre/\nmedian"):
        table.add_column(name, justify="right", overflow="fold")
    for r in g.iter_rows(named=True):
        cog = r["centre_of_gravity"]
        centre = "–" if cog is None or math.isnan(cog) else f"{cog:.0f}"
        n = f"[bold yellow]{r['n']}⚠[/]" if r["few_samples"] else str(r["n"])
        cells = [f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        table.add_row(*cells, n, _ci(r, "fraction_compressed"), _ci(r, "fraction_noncanonical"),
                      _ci(r, "mean_compression", 2), _ci(r, "token_rate", 2),
                      f"{centre}/{r['median_position']:.0f}")
    return table


def print_summary(analysis, console: Console | None = None,
                  err_console: Console | None = None) -> None:
    """Print the group table and the sigmoid fits; caveats go to ``err_console`` (stderr)."""
    out = console or Console(highlight=False)
    err = err_console or Console(stderr=True, highlight=False)
    out.print(summary_table(analysis))
    for r in analysis.fits.iter_rows(named=True):
        label = r["model"] + (f" (canonical {r['canonical']})" if r.get("canonical") else "")
        if r["midpoint"] is None:
            out.print(f"sigmoid fit, {label}: none (all 0, all 1, or fewer than 3 temperatures)")
        else:
            out.print(f"sigmoid fit, {label}: midpoint T={r['midpoint']:.2f}, "
                      f"slope {r['slope']:.2f}")
    few = analysis.groups.filter(analysis.groups["few_samples"])
    if few.height:
        err.print(f"[yellow]⚠ {few.height} group(s) have fewer than {FEW_SAMPLES} samples "
                  "(marked ⚠); their intervals are wide.[/]")
    if analysis.skipped:
        err.print(f"[yellow]⚠ {len(analysis.skipped)} invalid record(s) were skipped.[/]")
