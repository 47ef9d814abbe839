"""Figures of `score --divergence`: how far the model's next-token distribution after a
non-canonical span differs from the one after the canonical ids of the same text, against the
tokens since the span and against temperature (`tmcli.aggregate.divergence` computes them).
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

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


def has_divergence(groups: pl.DataFrame) -> bool:
    """Whether any group holds samples scored with ``score --divergence``."""
    return "div_n" in groups.columns and bool(groups["div_n"].fill_null(0).sum())


def by_since(profile: pl.DataFrame) -> go.Figure:
    """KL(generated ‖ canonical) (log scale) and top-1 agreement at each number of tokens since
    the span, one line per model and temperature, with 95% bootstrap bands over samples."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("KL(generated ‖ canonical), nats",
                                        "top-1 agreement"))
    keys = [k for k in ("model", "temperature") if k in profile.columns]
    for i, (key, df) in enumerate(profile.sort([*keys, "since"]).group_by(keys,
                                                                           maintain_order=True)):
        label = html.escape(" ".join(f"T={_t(v)}" if k == "temperature" else str(v)
                                     for k, v in zip(keys, key)))
        x = df["since"]
        for row, m, fmt in ((1, "kl", ".3f"), (2, "top1", ".1%")):
            where = dict(row=row, col=1)
            _band(fig, x, df[f"{m}_lo"], df[f"{m}_hi"], _colour(i, 0.15), label, "linear", **where)
            fig.add_trace(go.Scatter(
                x=x, y=df[m], mode="lines+markers", name=label, legendgroup=label,
                showlegend=row == 1, line=dict(color=_colour(i)), marker=dict(size=5),
                customdata=df.select("n", f"{m}_lo", f"{m}_hi").to_numpy(),
                hovertemplate=_hover([f"<b>{label}</b> %{{x}} tokens after the span",
                                      f"{m} %{{y:{fmt}}}",
                                      f"95% CI %{{customdata[1]:{fmt}}} – %{{customdata[2]:{fmt}}}",
                                      "n=%{customdata[0]} samples"])), **where)
    fig.update_layout(**{**LAYOUT, "height": 640},
                      title="Next-token divergence after a non-canonical span")
    fig.update_xaxes(title_text="tokens since the end of the span (0 = right after it)",
                     row=2, col=1)
    fig.update_yaxes(type="log", row=1, col=1)  # it falls by orders of magnitude
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=2, col=1)
    return _legend_above(fig)


def by_temperature(groups: pl.DataFrame) -> go.Figure:
    """Per model against temperature: mean KL(generated ‖ canonical) and top-1 agreement after
    a span (samples with one) and at the end of the completion (every scored sample, canonical
    ones counting 0 and 1), with 95% bootstrap intervals."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("KL(generated ‖ canonical), nats", "top-1 agreement"))
    rows = groups.filter(pl.col("div_n").fill_null(0) > 0)
    for i, (label, df) in enumerate(series(rows)):
        for col, m, fmt in ((1, "kl", ".3f"), (2, "top1", ".1%")):
            for name, what, symbol, n_col in ((f"div_{m}", "after a span", "circle", "div_n_after"),
                                              (f"div_end_{m}", "end of completion",
                                               "diamond-open", "div_n")):
                y = df[name]
                fig.add_trace(go.Scatter(
                    x=df["temperature"], y=y, mode="lines+markers", name=f"{label} {what}",
                    legendgroup=f"{label} {what}", showlegend=col == 1,
                    line=dict(color=_colour(i), dash="solid" if symbol == "circle" else "dot"),
                    marker=dict(color=_colour(i), size=8, symbol=symbol),
                    error_y=dict(type="data", symmetric=False, array=df[name + "_hi"] - y,
                                 arrayminus=y - df[name + "_lo"], color=_colour(i, 0.5)),
                    customdata=df.select(n_col).to_numpy(),
                    hovertemplate=_hover([f"<b>{label}</b> T=%{{x}} {what}",
                                          f"{m} %{{y:{fmt}}}", "n=%{customdata[0]} samples"])),
                    row=1, col=col)
                if symbol == "circle":
                    _hollow(fig, df["temperature"], y, df["few_samples"], i, f"{label} {what}",
                            row=1, col=col)
    fig.update_layout(**LAYOUT, title="Divergence by temperature")
    fig.update_xaxes(title_text="temperature")
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    return _legend_above(_warn(fig, rows))


def merge_curves(by_layer: pl.DataFrame, by_length: pl.DataFrame) -> go.Figure:
    """Seed 001's curves (`tmcli.merge_table` pooled over lengths, and over cuts): agreement of
    the merged model with the unmerged one against the layer cut, and top-1 agreement against
    the prefix length, one line per way of positioning merged states, 95% Wilson intervals."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("against the layer cut (all lengths)",
                                        "top-1 against the prefix length"))
    measures = (("top1", "top-1", "circle"), ("top5", "top-5 accuracy", "square-open"),
                ("overlap5", "top-5 overlap", "diamond-open"))
    for i, (key, df) in enumerate(by_layer.sort("positions", "layer").group_by(
            "positions", maintain_order=True)):
        for m, what, symbol in measures:
            name = html.escape(f"{what}, {key[0]} positions")
            fig.add_trace(go.Scatter(
                x=df["layer"], y=df[m], mode="lines+markers", name=name,
                line=dict(color=_colour(i), dash="solid" if m == "top1" else "dot"),
                marker=dict(color=_colour(i), symbol=symbol, size=8),
                error_y=dict(type="data", symmetric=False, array=df[m + "_hi"] - df[m],
                             arrayminus=df[m] - df[m + "_lo"], color=_colour(i, 0.4)),
                customdata=df.select("n").to_numpy(),
                hovertemplate=_hover([f"<b>{name}</b> cut after layer %{{x}}",
                                      "%{y:.1%}", "n=%{customdata[0]}"])), row=1, col=1)
    for i, (key, df) in enumerate(by_length.sort("positions", "length").group_by(
            "positions", maintain_order=True)):
        name = html.escape(f"top-1, {key[0]} positions")
        fig.add_trace(go.Scatter(
            x=df["length"], y=df["top1"], mode="lines+markers", name=name, showlegend=False,
            line=dict(color=_colour(i)), marker=dict(color=_colour(i), size=8),
            error_y=dict(type="data", symmetric=False, array=df["top1_hi"] - df["top1"],
                         arrayminus=df["top1"] - df["top1_lo"], color=_colour(i, 0.4)),
            customdata=df.select("n").to_numpy(),
            hovertemplate=_hover([f"<b>{name}</b> length %{{x}}", "%{y:.1%}",
                                  "n=%{customdata[0]}"])), row=1, col=2)
    fig.update_layout(**{**LAYOUT, "height": 520},
                      title="Seed 001's SLERP merge against the unmerged model")
    fig.update_xaxes(title_text="layer cut (merged after this layer)", row=1, col=1)
    lengths = sorted(set(by_length["length"].to_list()))
    fig.update_xaxes(title_text="prefix length (tokens)", type="log", tickvals=lengths,
                     row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _legend_above(fig)


def figures(analysis) -> list[tuple[str, str, go.Figure]]:
    """The report's divergence figures, (anchor, caption, figure); none without divergence data."""
    from tmcli.aggregate.divergence import divergence_profile

    if not has_divergence(analysis.groups) or "temperature" not in analysis.groups.columns:
        return []
    return [
        ("divergence", "How far the model's next-token distribution after a non-canonical span "
         "(the ids it sampled) differs from the one after the canonical ids of the same text, "
         "by tokens since the span (tmcli score --divergence): mean over samples of each "
         "sample's mean at that offset, 95% bootstrap band.",
         by_since(divergence_profile(analysis.samples))),
        ("divergence-temperature", "The same by temperature: after a span (samples with one) "
         "and at the end of the completion (every scored sample; canonical ones count KL 0 and "
         "agreement 1).", by_temperature(analysis.groups)),
    ]
