"""Figures of what differs and of the canonical modes: span kinds, and canonical generation
against free generation.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from tmcli.aggregate.groups import FEW_SAMPLES
from tmcli.present.figures.style import (
    LAYOUT,
    _band,
    _colour,
    _hollow,
    _hover,
    _legend_above,
    _t,
    _warn,
    series,
)

KINDS = (("merged", "merged (shorter when re-encoded)"),
         ("lengthened", "lengthened (longer when re-encoded)"),
         ("resegmented", "re-segmented (same length)"))


def kinds(groups: pl.DataFrame) -> go.Figure:
    """Figure 6a: shares of samples merged / lengthened / re-segmented, Wilson bands."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in KINDS],
                        shared_yaxes=True, horizontal_spacing=0.04)
    for i, (label, df) in enumerate(series(groups)):
        for c, (kind, _title) in enumerate(KINDS, start=1):
            col = f"fraction_{kind}"
            _band(fig, df["temperature"], df[f"{col}_lo"], df[f"{col}_hi"], _colour(i, 0.15),
                  label, row=1, col=c)
            fig.add_trace(go.Scatter(
                x=df["temperature"], y=df[col], mode="lines+markers", name=label,
                legendgroup=label, showlegend=c == 1, line=dict(color=_colour(i)),
                marker=dict(size=7),
                customdata=df.select("n", f"n_{kind}", f"{col}_lo", f"{col}_hi").to_numpy(),
                hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", f"{kind} %{{y:.1%}}",
                                      "95% CI %{customdata[2]:.1%} – %{customdata[3]:.1%}",
                                      "%{customdata[1]} of n=%{customdata[0]} samples"])),
                row=1, col=c)
            _hollow(fig, df["temperature"], df[col], df["few_samples"], i, label, size=7,
                    row=1, col=c)
    fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title_text="share of samples", row=1, col=1)
    fig.update_xaxes(title_text="temperature")
    fig.update_layout(title="Kinds of non-canonical samples (band: 95% Wilson CI)", **LAYOUT)
    return _legend_above(_warn(fig, groups))


COMPARE_PANELS = (
    ("fraction_noncanonical", "non-canonical samples", ".1%", ".0%"),
    ("nll_token", "NLL per token (nats)", ".3f", ".3~g"),
    ("chars_per_token", "characters per token", ".3f", ".3~g"),
    ("distinct_2", "distinct word bigrams", ".3f", ".3~g"),
)


def canonical_comparison(comparison: pl.DataFrame) -> go.Figure:
    """Canonical modes vs free generation: per model (rows), metrics vs temperature (columns),
    one line per canonical mode with its 95% band (Wilson for the share, bootstrap otherwise).

    ``comparison`` is `groups.canonical_comparison`: only (model, temperature) pairs run both
    free ("off") and in another mode. A panel stays empty where the records carry no value
    (e.g. no NLL).
    """
    rows = comparison.filter(pl.col("temperature").is_not_null())
    models = sorted(rows["model"].unique().to_list())
    modes = rows["canonical"].unique(maintain_order=True).to_list()  # "off" first
    ncols = len(COMPARE_PANELS)
    # Panel titles name the metric only (four "model: metric" titles ran into each other at
    # 1,100 px); the model names its row, on the first panel's y axis.
    titles = [title for _m in models for _c, title, _f, _t in COMPARE_PANELS]
    fig = make_subplots(rows=max(len(models), 1), cols=ncols, subplot_titles=titles or None,
                        horizontal_spacing=0.06, vertical_spacing=0.2 / max(len(models), 1))
    fig.update_annotations(font_size=13)  # the subplot titles, before any warning is added
    for r, model in enumerate(models, start=1):
        fig.update_yaxes(title_text=f"<b>{html.escape(str(model))}</b>", row=r, col=1)
    shown, empty = set(), set()
    for r, model in enumerate(models, start=1):
        for i, mode in enumerate(modes):
            df = rows.filter((pl.col("model") == model) & (pl.col("canonical") == mode)).sort(
                "temperature")
            if df.height == 0:
                continue
            label = html.escape(str(mode))
            for c, (col, title, fmt, _tick) in enumerate(COMPARE_PANELS, start=1):
                where = dict(row=r, col=c)
                x = df["temperature"].to_list()
                y, lo, hi = (df[k].to_list() for k in (col, f"{col}_lo", f"{col}_hi"))
                if all(v is None for v in y):
                    empty.add(title)
                    continue
                _band(fig, x, lo, hi, _colour(i, 0.18), label, row=r, col=c)
                lone = dict(type="data", symmetric=False, color=_colour(i, 0.6),  # no band
                            array=[hi[0] - y[0]], arrayminus=[y[0] - lo[0]])
                count = f"{col}_n" if f"{col}_n" in df.columns else "n_noncanonical"
                fig.add_trace(go.Scatter(
                    x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
                    showlegend=label not in shown, line=dict(color=_colour(i)),
                    marker=dict(size=8), error_y=lone if len(x) == 1 else None,
                    customdata=df.select("n", f"{col}_lo", f"{col}_hi",
                                         pl.col(count).alias("k")).to_numpy(),
                    hovertemplate=_hover([f"<b>{html.escape(str(model))}</b> {label} T=%{{x}}",
                                          f"{title} %{{y:{fmt}}}",
                                          f"95% CI %{{customdata[1]:{fmt}}} – "
                                          f"%{{customdata[2]:{fmt}}}",
                                          ("%{customdata[3]} of " if count == "n_noncanonical"
                                           else "from %{customdata[3]} of ")
                                          + "n=%{customdata[0]} samples"])), **where)
                shown.add(label)
                _hollow(fig, x, y, df["few_samples"].to_list(), i, label, size=8, **where)
    for c, (_col, _title, _fmt, tick) in enumerate(COMPARE_PANELS, start=1):
        fig.update_yaxes(tickformat=tick, col=c)
    fig.update_xaxes(title_text="temperature", row=max(len(models), 1))
    fig.update_layout(title="Canonical vs free generation (band: 95% CI)",
                      **dict(LAYOUT, height=340 * max(len(models), 1) + 140))
    notes = []
    few = rows.filter(pl.col("few_samples"))
    if few.height:
        names = [f"{html.escape(str(r['model']))} {html.escape(str(r['canonical']))} "
                 f"T={_t(r['temperature'])} (n={r['n']})" for r in few.iter_rows(named=True)]
        notes.append(f"⚠ fewer than {FEW_SAMPLES} samples (hollow markers): "
                     + ", ".join(names[:4])
                     + (f" and {len(names) - 4} more" if len(names) > 4 else ""))
    if empty:
        notes.append("no line where the records carry no value: "
                     + ", ".join(t for _c, t, _f, _k in COMPARE_PANELS if t in empty))
    return _legend_above(_warn(fig, rows[:0], "<br>".join(notes)))
