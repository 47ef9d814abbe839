"""The trajectories figure: how many trajectories drift from their chat template, by cause, per
group, and at which sampled turn the first difference falls.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from tmcli.aggregate.groups import DRIFT_CAUSES, drift_by_turn
from tmcli.present.figures.style import LAYOUT, _colour, _hover, _legend_above, _t, _warn

CAUSE_TEXT = {"template": "template (other text rendered)",
              "tokenization": "tokenization (same text, other ids)"}


def has_trajectories(groups: pl.DataFrame) -> bool:
    return "n_trajectories" in groups.columns and groups["n_trajectories"].null_count() < \
        groups.height


def _label(row: dict, keys: list[str]) -> str:
    return html.escape(" ".join(f"T={_t(row[k])}" if k == "temperature" else str(row[k])
                                for k in keys))


def drift(groups: pl.DataFrame, samples: pl.DataFrame, keys: list[str]) -> go.Figure:
    """Left: per group, the share of trajectories that drift, stacked by cause, with the
    Wilson interval of the whole share. Right: per sampled turn, the share of the trajectories
    reaching it whose first difference is there, stacked by cause."""
    rows = [r for r in groups.iter_rows(named=True) if r.get("n_trajectories")]
    labels = [_label(r, keys) for r in rows]
    by_turn = drift_by_turn(samples)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=[
        "share of trajectories that drift, by group", "first drift, by sampled turn"])
    for i, cause in enumerate(DRIFT_CAUSES):
        name = CAUSE_TEXT[cause]
        n = [r["n_trajectories"] for r in rows]
        k = [r[f"n_drift_{cause}"] for r in rows]
        last = i == len(DRIFT_CAUSES) - 1
        total = [r["fraction_drift"] for r in rows]
        err = dict(type="data", symmetric=False, color="#3d3d3d",
                   array=[r["fraction_drift_hi"] - r["fraction_drift"] for r in rows],
                   arrayminus=[r["fraction_drift"] - r["fraction_drift_lo"] for r in rows])
        fig.add_trace(go.Bar(
            x=labels, y=[a / b for a, b in zip(k, n)], name=name, legendgroup=cause,
            marker_color=_colour(i), error_y=err if last else None,
            customdata=list(zip(k, n, total)),
            hovertemplate=_hover(["<b>%{x}</b>", f"{cause}: %{{customdata[0]}} of "
                                  "%{customdata[1]} trajectories (%{y:.1%})",
                                  "all causes %{customdata[2]:.1%} (bar: 95% Wilson CI)"])),
            row=1, col=1)
        t = by_turn
        fig.add_trace(go.Bar(
            x=t["turn"].to_list(), y=(t[f"n_drift_{cause}"] / t["n_trajectories"]).to_list(),
            name=name, legendgroup=cause, showlegend=False, marker_color=_colour(i),
            customdata=list(zip(t[f"n_drift_{cause}"].to_list(), t["n_trajectories"].to_list())),
            hovertemplate=_hover(["<b>turn %{x}</b>", f"first drift here, {cause}: "
                                  "%{customdata[0]} of %{customdata[1]} trajectories reaching "
                                  "it (%{y:.1%})"])), row=1, col=2)
    fig.update_layout(barmode="stack", title="Trajectories: drift from the chat template",
                      **LAYOUT)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_yaxes(title_text="share of trajectories", row=1, col=1)
    fig.update_yaxes(title_text="share of trajectories reaching the turn", row=1, col=2)
    fig.update_xaxes(title_text="sampled turn", dtick=1, row=1, col=2)
    few = [f"{lab} (n={r['n_trajectories']})" for lab, r in zip(labels, rows)
           if r["n_trajectories"] < 30]
    note = (f"⚠ fewer than 30 trajectories: {', '.join(few[:4])}"
            + (f" and {len(few) - 4} more" if len(few) > 4 else "")) if few else ""
    return _legend_above(_warn(fig, groups[:0], note))


def figures(analysis) -> list[tuple[str, str, go.Figure]]:
    """The report's trajectories figure as (anchor, caption, figure), if there are any."""
    if not has_trajectories(analysis.groups):
        return []
    return [("trajectories", "Trajectories whose messages, rendered with the chat template, do "
             "not give the sampled ids, by cause (bar: 95% Wilson interval); and the sampled "
             "turn where the first difference falls.",
             drift(analysis.groups, analysis.samples, analysis.group_by))]


def section(analysis, figure_html: str | None) -> str:
    """The report's trajectories section (table, then the figure); empty without one."""
    if figure_html is None:
        return ""
    return ("<h2 id=trajectories>Trajectories</h2>"
            + summary_html(analysis.groups, analysis.group_by) + figure_html)


def summary_html(groups: pl.DataFrame, keys: list[str]) -> str:
    """The report's trajectories table: per group, trajectories, the share that drifts (its
    Wilson interval) and the count per cause; every value escaped."""
    head = [*keys, "trajectories", "drift", *DRIFT_CAUSES]
    rows = []
    for r in groups.iter_rows(named=True):
        if not r.get("n_trajectories"):
            continue
        share = (f"{r['n_drift']} · {r['fraction_drift']:.1%} <span class=ci>"
                 f"[{r['fraction_drift_lo']:.1%}, {r['fraction_drift_hi']:.1%}]</span>")
        cells = [html.escape(_t(r[k]) if k == "temperature" else str(r[k])) for k in keys]
        cells += [str(r["n_trajectories"]), share, *(str(r[f"n_drift_{c}"])
                                                      for c in DRIFT_CAUSES)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<p class=caption>A trajectory drifts when its messages, rendered with the chat "
            "template and encoded as a trainer does, do not give the ids it sampled (text "
            "after the last sampled end-of-turn token aside). template: the rendering writes "
            "other text there (reasoning dropped, an empty think block added, a tool call "
            "re-serialised, whitespace); tokenization: the same text, other ids (non-canonical "
            "sampling, special-token parsing).</p><table class=summary><thead><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
