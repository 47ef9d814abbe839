"""What every figure shares: colours, the layout, legends sized to their entries, hollow markers
for groups with few samples, and the warning written on the figure itself.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative

from tmcli.aggregate.groups import FEW_SAMPLES
from tmcli.aggregate.keys import group_keys, group_label, series_keys

PALETTE = qualitative.Plotly


LAYOUT: dict[str, Any] = dict(template="plotly_white", height=460, margin=dict(l=70, r=30, t=120, b=60),
              legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
              hoverlabel=dict(align="left"))


def series(groups: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """(escaped label, rows sorted by temperature) per series: one per value of the group keys
    but temperature (model, canonical mode, truncation, a field a user grouped by)."""
    keys = series_keys(group_keys(groups))
    rows = groups.filter(pl.col("temperature").is_not_null()).sort([*keys, "temperature"])
    if not keys:
        return [(html.escape(group_label({}, keys)), rows)] if rows.height else []
    out = []
    for key, df in rows.group_by(keys, maintain_order=True):
        out.append((html.escape(group_label(dict(zip(keys, key)), keys)), df))
    return out


def _rows(nrows: int, panel_px: int, gap_px: int = 110) -> tuple[float, int]:
    """(vertical_spacing, figure height) for ``nrows`` rows of panels ``panel_px`` tall with
    ``gap_px`` between them (room for a subplot title and tick labels). Plotly takes the spacing
    as a fraction of the plot area and refuses one above 1/(rows - 1); a fixed gap in pixels stays
    below that for any number of rows (50 models make 25 rows of heatmaps)."""
    area = nrows * panel_px + (nrows - 1) * gap_px
    margin = LAYOUT["margin"]
    return gap_px / area, area + margin["t"] + margin["b"]


GREYS = ("#3d3d3d", "#8c8c8c", "#5e5e5e", "#b5b5b5")  # pooled curves, one per arm


def _colour(i: int, alpha: float = 1.0) -> str:
    """Series i's colour; i < 0 is a pooled "all models" curve (-1, -2...: one per arm)."""
    h = GREYS[(-i - 1) % len(GREYS)] if i < 0 else PALETTE[i % len(PALETTE)]
    h = h.lstrip("#")
    r, g, b = (int(h[k:k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _hollow(fig, x, y, few, i: int, group: str, size: int = 9, **where) -> None:
    """Redraw the points of too-small groups hollow, on top (the legend keeps a solid marker)."""
    keep = [k for k, f in enumerate(few) if f]
    if not keep:
        return
    xs, ys = list(x), list(y)
    fig.add_trace(go.Scatter(
        x=[xs[k] for k in keep], y=[ys[k] for k in keep], mode="markers", showlegend=False,
        legendgroup=group, hoverinfo="skip",
        marker=dict(size=size, color="white", line=dict(color=_colour(i), width=2))), **where)


def _band(fig, x, lo, hi, colour: str, group: str, shape: str = "linear", **where) -> None:
    """A filled interval behind a line (hidden from the legend, toggled with its series)."""
    line = dict(width=0, shape=shape)
    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line=line, showlegend=False,
                             legendgroup=group, hoverinfo="skip"), **where)
    fig.add_trace(go.Scatter(x=x, y=lo, mode="lines", line=line, fill="tonexty",
                             fillcolor=colour, showlegend=False, legendgroup=group,
                             hoverinfo="skip"), **where)


def _warn(fig: go.Figure, groups: pl.DataFrame, extra: str = "") -> go.Figure:
    """Name the groups with too few samples on the figure (and any other caveat)."""
    lines = []
    few = groups.filter(pl.col("few_samples")) if "few_samples" in groups.columns else groups[:0]
    if few.height:
        keys = series_keys(group_keys(few))
        names = [f"{html.escape(group_label(r, keys))} T={_t(r.get('temperature'))} (n={r['n']})"
                 for r in few.iter_rows(named=True)]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        lines.append(f"⚠ fewer than {FEW_SAMPLES} samples (hollow markers): {shown}")
    if extra:
        lines.append(extra)
    if lines:
        fig.add_annotation(text="<br>".join(lines), xref="paper", yref="paper", x=0, y=0,
                           yshift=-52, xanchor="left", yanchor="top", showarrow=False,
                           align="left", font=dict(size=12, color="#9a3412"))
        n_lines = sum(1 + line.count("<br>") for line in lines)
        fig.update_layout(margin=dict(b=64 + 18 * n_lines),
                          height=fig.layout.height + 18 * n_lines)
    return fig


LEGEND_CHAR_PX = 6.6  # average width of a character of the 12-px legend font


LEGEND_ROW_PX = 700  # a legend row's width: a 900-px figure less its margins (wider ones fit more)


TITLE_PX = 56  # the title at the top edge, and the gap below it


def _legend_entries(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data if t.showlegend is not False and t.name]


def _legend_rows(fig: go.Figure) -> int:
    """Rows a horizontal legend (entries flowing left to right) needs in a 900-px figure."""
    rows, used = 0, float(LEGEND_ROW_PX)
    for name in _legend_entries(fig):
        width = 40 + LEGEND_CHAR_PX * len(html.unescape(name))
        if used + width > LEGEND_ROW_PX:
            rows, used = rows + 1, 0
        used += width
    return rows


def _title_and_legend(fig: go.Figure, lift: int = 0) -> go.Figure:
    """Title at the top edge, then the legend's rows, then ``lift`` pixels (subplot titles),
    then the plot: the top margin is sized to hold them, so the legend never runs into the
    title however many rows it wraps to (the plot keeps its height)."""
    m = fig.layout.margin
    top = TITLE_PX + 20 * _legend_rows(fig) + lift
    height = (fig.layout.height or 450) + max(0, top - (m.t or 0))
    plot = height - top - (m.b or 0)
    fig.update_layout(title=dict(y=1, yref="container", yanchor="top", pad=dict(t=18)),
                      legend=dict(orientation="h", traceorder="normal", yanchor="bottom",
                                  y=1 + (lift + 4) / max(plot, 100)),
                      margin=dict(t=top), height=height)
    return fig


def _legend_right(fig: go.Figure, most_above: int = 4) -> go.Figure:
    """With more than ``most_above`` legend entries a horizontal legend would take rows of its
    own: stack it on the right (as wide as its longest entry) instead; else above the plot."""
    names = _legend_entries(fig)
    if len(names) <= most_above:
        return _title_and_legend(fig)
    widest = max(len(html.unescape(n)) for n in names)
    groups = {t.legendgroup for t in fig.data if t.showlegend is not False and t.name}
    need = TITLE_PX + 80 + 20 * len(names) + 10 * len(groups)  # every entry shown, none cut
    if need > (fig.layout.height or 450):
        fig.update_layout(height=need)
    fig.update_layout(title=dict(y=1, yref="container", yanchor="top", pad=dict(t=18)),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"),
                      margin=dict(r=min(60 + int(LEGEND_CHAR_PX * widest), 420), t=TITLE_PX + 14))
    return fig


def _legend_above(fig: go.Figure, px: int = 34) -> go.Figure:
    """The legend ``px`` pixels above the top plot, clear of subplot titles, under the title."""
    return _title_and_legend(fig, lift=px)


def _t(value) -> str:
    return "–" if value is None else f"{value:g}"


def _hover(rows: list[str]) -> str:
    return "<br>".join(rows) + "<extra></extra>"
