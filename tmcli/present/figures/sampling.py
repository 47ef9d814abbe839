"""The figure against the truncation setting: how much of the effect top-k, top-p and min-p hide.

At the temperature(s) where a model was sampled with the most truncation settings (pure
sampling, top-k 50, top-p 0.95, min-p 0.05...: a sweep), the share of samples non-canonical and
the share compressed, per setting, with Wilson intervals: one series per model (and canonical
mode, and any other group key that varies) and temperature.
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from tmcli.aggregate.keys import SAMPLING_KEYS, group_keys, group_label, truncation_label
from tmcli.present.figures.style import LAYOUT, _colour, _hollow, _hover, _legend_above, _warn

PANELS = (("fraction_noncanonical", "samples non-canonical"),
          ("fraction_compressed", "samples compressed (the study's count)"))


def _order(row: dict) -> tuple:
    """Pure sampling first, then top-p, min-p and top-k settings, each from the least to the
    most truncating."""
    k, p, m = (row.get(name) for name in SAMPLING_KEYS)
    k, p, m = k or 0, 1.0 if p is None else p, m or 0.0
    return (bool(k or p < 1 or m), bool(k), bool(m), -p, m, -k if k else 0)


def truncation_figure(groups: pl.DataFrame) -> go.Figure | None:
    """Shares non-canonical and compressed per truncation setting, or None where no model and
    temperature was sampled with two settings or more (nothing to compare)."""
    keys = group_keys(groups)
    cut_keys = [k for k in SAMPLING_KEYS if k in keys]
    if not cut_keys or "temperature" not in keys:
        return None
    rows = groups.filter(pl.col("temperature").is_not_null())
    rows = rows.with_columns(setting=pl.struct(cut_keys).map_elements(
        lambda r: truncation_label(*(r.get(k) for k in SAMPLING_KEYS)), return_dtype=pl.String))
    others = [k for k in keys if k not in cut_keys and k != "temperature"]
    runs = [(dict(zip([*others, "temperature"], key)), df) for key, df in
            rows.sort([*others, "temperature"]).group_by([*others, "temperature"],
                                                         maintain_order=True)]
    runs = [(at, df) for at, df in runs if df["setting"].n_unique() > 1]
    if not runs:
        return None
    # the sweep: the runs with the most settings (a study's main and pure arms meet at every
    # temperature, two points each, which would bury it); keys that never vary are not named
    most = max(df["setting"].n_unique() for _at, df in runs)
    runs = [(at, df) for at, df in runs if df["setting"].n_unique() == most]
    named = [k for k in others if len({at[k] for at, _df in runs}) > 1 or k == "model"]
    lines = [(f"{group_label(at, named)} T={at['temperature']:g}",
              sorted(df.iter_rows(named=True), key=_order)) for at, df in runs]
    order = sorted({r["setting"]: r for _l, rs in lines for r in rs}.values(), key=_order)
    categories = [r["setting"] for r in order]
    fig = make_subplots(rows=1, cols=len(PANELS), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[title for _c, title in PANELS])
    for i, (label, rs) in enumerate(lines):
        x = [r["setting"] for r in rs]
        for c, (col, title) in enumerate(PANELS, start=1):
            y = [r[col] for r in rs]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
                showlegend=c == 1, line=dict(color=_colour(i), width=1, dash="dot"),
                marker=dict(size=9, color=_colour(i)),
                error_y=dict(type="data", symmetric=False, color=_colour(i, 0.6),
                             array=[r[f"{col}_hi"] - v for r, v in zip(rs, y)],
                             arrayminus=[v - r[f"{col}_lo"] for r, v in zip(rs, y)]),
                customdata=[[r["n"], r[f"{col}_lo"], r[f"{col}_hi"], r["mean_compression"]]
                            for r in rs],
                hovertemplate=_hover([f"<b>{label}</b> %{{x}}", f"{title} %{{y:.1%}}",
                                      "95% CI %{customdata[1]:.1%} – %{customdata[2]:.1%}",
                                      "mean compression %{customdata[3]:+.2%}",
                                      "n=%{customdata[0]} samples"])), row=1, col=c)
            _hollow(fig, x, y, [r["few_samples"] for r in rs], i, label, row=1, col=c)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=categories,
                     title_text="truncation")
    fig.update_yaxes(tickformat=".0%", range=[-0.03, 1.03])
    fig.update_yaxes(title_text="share of samples", col=1)
    fig.update_layout(title="How truncation hides non-canonical output (95% Wilson intervals)",
                      **LAYOUT)
    shown = pl.DataFrame([r for _l, rs in lines for r in rs])
    return _legend_above(_warn(fig, shown, "each series: one model at the temperature(s) "
                                           "sampled with the most truncation settings"))


def figures(groups: pl.DataFrame) -> list[tuple[str, str, go.Figure]]:
    """The report's truncation section: (anchor, caption, figure), none with one setting."""
    cut = truncation_figure(groups)
    return [("truncation", "Share of samples non-canonical and compressed per truncation "
             "setting, at each temperature where several were run (same prompts and seeds): how "
             "much top-k, top-p and min-p hide.", cut)] if cut else []
