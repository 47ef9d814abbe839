"""Figures along the completion: the window profile, heatmaps, centre of gravity, the per-token
rate and the first divergence.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from tmcli.aggregate.groups import FEW_SAMPLES
from tmcli.present.figures.style import (
    LAYOUT,
    _band,
    _colour,
    _hollow,
    _hover,
    _legend_above,
    _legend_right,
    _rows,
    _warn,
    series,
)
from tmcli.present.figures.temperature import _vs_temperature, nearest_temperatures


def window_profile(pooled: pl.DataFrame, groups: pl.DataFrame, window: int,
                   temperatures=(2.0, 0.8)) -> go.Figure:
    """Figure 3: mean compression by window position at chosen temperatures.

    Left: all models pooled (``pooled``, `curves.pooled_window_profile`: their samples together;
    the study averaged model means), right: per model (``groups``). A wanted temperature that
    was not run is replaced by the nearest one, and said so.
    """
    picks = nearest_temperatures(groups["temperature"].to_list(), temperatures)
    titles = []
    for _w, got in picks:
        titles += [f"T={got:g}: all models pooled", f"T={got:g}: per model"]
    spacing, height = _rows(max(len(picks), 1), 290, 70)
    fig = make_subplots(rows=max(len(picks), 1), cols=2, subplot_titles=titles or None,
                        shared_xaxes=True, vertical_spacing=spacing, horizontal_spacing=0.08)
    labels = series(groups)
    shown = set()
    for r, (_w, t) in enumerate(picks, start=1):
        curves = [("all models", pooled.filter(pl.col("temperature") == t), -1)] + [(label, df.filter(pl.col("temperature") == t), i)
                                                  for i, (label, df) in enumerate(labels)]
        for label, row, i in curves:
            if row.height == 0:
                continue
            g = row.row(0, named=True)
            m = np.array(g["window_mean"], dtype=float)
            x = np.array(g["window_centre"], dtype=float)  # where each window's tokens are
            starts: np.ndarray = np.arange(len(m)) * window
            col = 1 if label == "all models" else 2
            _band(fig, x, g["window_lo"], g["window_hi"], _colour(i, 0.18), label, row=r, col=col)
            custom = np.column_stack([starts, starts + window - 1, g["window_lo"], g["window_hi"],
                                      g["window_n"]])
            few = [n < FEW_SAMPLES for n in g["window_n"]]
            lone = dict(type="data", symmetric=False, color=_colour(i, 0.6),  # no band to fill
                        array=np.array(g["window_hi"]) - m, arrayminus=m - np.array(g["window_lo"]))
            fig.add_trace(go.Scatter(
                x=x, y=m, mode="lines+markers", name=label, legendgroup=label,
                showlegend=label not in shown, line=dict(color=_colour(i)),
                marker=dict(size=7), error_y=lone if len(m) == 1 else None, customdata=custom,
                hovertemplate=_hover([f"<b>{label}</b> T={t:g}",
                                      "tokens %{customdata[0]}–%{customdata[1]}", "%{y:.3%}",
                                      "95% CI %{customdata[2]:.3%} – %{customdata[3]:.3%}",
                                      "n=%{customdata[4]} samples reach this window"])),
                row=r, col=col)
            _hollow(fig, x, m, few, i, label, size=7, row=r, col=col)
            shown.add(label)
    fig.update_yaxes(tickformat=".2%")
    fig.update_xaxes(title_text="token position (centre of each window's tokens)",
                     row=len(picks) or 1)
    longest = pooled.filter(pl.col("temperature").is_in([g for _, g in picks]))["max_tokens"].max()
    if longest:  # the positions the completions span, not Plotly's range around one window
        fig.update_xaxes(range=[-0.02 * longest, 1.02 * (longest - 1)])
    layout = dict(LAYOUT, height=height)
    fig.update_layout(title=f"Mean compression by position ({window}-token windows)", **layout)
    notes = [f"T={w:g} was not run; showing nearest T={g:g}" for w, g in picks if abs(w - g) > 1e-9]
    hollow = f"hollow markers: windows reached by fewer than {FEW_SAMPLES} samples"
    rows = groups.filter(pl.col("temperature").is_in([g for _, g in picks]))
    return _legend_above(_warn(fig, rows, "; ".join([hollow, *notes])))


def heatmaps(groups: pl.DataFrame, window: int) -> go.Figure:
    """Figure 4: per model, mean compression by temperature × window position (shared scale)."""
    labels = series(groups)
    cols = 2 if len(labels) > 1 else 1
    nrows = max(1, math.ceil(len(labels) / cols))
    spacing, height = _rows(nrows, 290)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[l for l, _ in labels] or None,
                        horizontal_spacing=0.1, vertical_spacing=spacing)
    for k, (label, df) in enumerate(labels):
        width = max(len(w) for w in df["window_mean"].to_list())
        z, lo, hi, n = (np.full((df.height, width), np.nan) for _ in range(4))
        for j, g in enumerate(df.iter_rows(named=True)):
            w = len(g["window_mean"])
            z[j, :w], lo[j, :w], hi[j, :w] = g["window_mean"], g["window_lo"], g["window_hi"]
            n[j, :w] = g["window_n"]
        x = [f"{s}–{s + window - 1}" for s in range(0, width * window, window)]
        marks = np.where(n < FEW_SAMPLES, "⚠", "")
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=[f"{t:g}" for t in df["temperature"]], coloraxis="coloraxis",
            text=marks, texttemplate="%{text}", customdata=np.dstack([lo, hi, n]),
            hovertemplate=_hover([f"<b>{label}</b> T=%{{y}}", "tokens %{x}", "%{z:.3%}",
                                  "95% CI %{customdata[0]:.3%} – %{customdata[1]:.3%}",
                                  "n=%{customdata[2]} samples"])),
            row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(title_text="token positions", type="category")
    fig.update_yaxes(title_text="temperature", type="category")
    # One scale for every panel, as wide as the data and centred on 0 (white: no net change).
    # Plotly's own would span the colour axis' nominal range, and ±4% of data on it looks blank.
    reach = max((float(np.nanmax(np.abs(t.z), initial=0.0)) for t in fig.data), default=0.0)
    reach = reach or 1e-3
    fig.update_layout(title="Mean compression by temperature and position",
                      coloraxis=dict(colorscale="RdBu_r", cmin=-reach, cmax=reach,
                                     colorbar=dict(tickformat=".1%")),
                      **dict(LAYOUT, height=height))
    return _warn(fig, groups, f"⚠ in a cell: fewer than {FEW_SAMPLES} samples reach that window; "
                              "hover for the 95% CI")


def centre_of_gravity(groups: pl.DataFrame) -> go.Figure:
    """Figure 5: compression-weighted mean position vs temperature, with the median position."""
    fig = go.Figure()
    for i, (label, df) in enumerate(series(groups)):
        y = df["centre_of_gravity"]
        fig.add_trace(go.Scatter(
            x=df["temperature"], y=y, mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=_colour(i)),
            marker=dict(size=9),
            error_y=dict(type="data", symmetric=False, color=_colour(i, 0.6),
                         array=(df["centre_of_gravity_hi"] - y).fill_nan(None),
                         arrayminus=(y - df["centre_of_gravity_lo"]).fill_nan(None)),
            customdata=df.select("n", "centre_of_gravity_lo", "centre_of_gravity_hi",
                                 "median_position").to_numpy(),
            hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", "centre of gravity %{y:.0f}",
                                  "95% CI %{customdata[1]:.0f} – %{customdata[2]:.0f}",
                                  "median position %{customdata[3]:.0f}",
                                  "n=%{customdata[0]} samples"])))
        _hollow(fig, df["temperature"], y, df["few_samples"], i, label)
        # one legend entry per series (it toggles all three lines); the title says which is which
        fig.add_trace(go.Scatter(
            x=df["temperature"], y=df["median_position"], mode="lines", legendgroup=label,
            name=f"{label}: median position", showlegend=False,
            line=dict(color=_colour(i), dash="dot", width=1.5),
            hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", "median position %{y:.0f}"])))
        if "centre_noncanonical" in df.columns:
            y = df["centre_noncanonical"]
            fig.add_trace(go.Scatter(
                x=df["temperature"], y=y, mode="lines+markers", legendgroup=label,
                name=f"{label}: non-canonical tokens", showlegend=False,
                line=dict(color=_colour(i), dash="dash"),
                marker=dict(size=7, symbol="diamond-open"),
                error_y=dict(type="data", symmetric=False, color=_colour(i, 0.4),
                             array=(df["centre_noncanonical_hi"] - y).fill_nan(None),
                             arrayminus=(y - df["centre_noncanonical_lo"]).fill_nan(None)),
                customdata=df.select("n", "centre_noncanonical_lo", "centre_noncanonical_hi").to_numpy(),
                hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", "centre of non-canonical "
                                      "tokens %{y:.0f}", "95% CI %{customdata[1]:.0f} – "
                                      "%{customdata[2]:.0f}", "n=%{customdata[0]} samples"])))
    fig.update_layout(title="Centre of gravity of compression (●), of non-canonical tokens (◇, "
                            "dashed); dotted: median token position",
                      xaxis_title="temperature", yaxis_title="token position",
                      yaxis_rangemode="tozero", **LAYOUT)  # from the first token: no zoom
    return _legend_right(_warn(fig, groups, "no point where a group has no net compression "
                              "(no interval where most resamples have none)"))


def token_rate(groups: pl.DataFrame) -> go.Figure:
    """Figure 6b: tokens inside differing spans / all tokens (comparable with later studies)."""
    return _vs_temperature(groups, "token_rate", "non-canonical tokens", ".2%",
                           "Per-token non-canonical rate vs temperature (band: 95% bootstrap CI)",
                           "tokens in differing spans", ".1%")


def first_divergence(survival: pl.DataFrame, keys: list[str]) -> go.Figure:
    """Figure 6c: survival of canonical output: share still canonical up to each position.

    ``survival`` is `curves.survival` by ``keys``: one panel per group of the keys other than
    temperature, one curve per temperature (Kaplan–Meier, so completions that never diverge
    count up to their own length; Greenwood log-log 95% bands).
    """
    rows = survival.filter(pl.col("temperature").is_not_null())
    by = [k for k in keys if k != "temperature"]
    panels = list(rows.sort(by).group_by(by, maintain_order=True)) if by else [((), rows)]
    names = [" · ".join(map(str, k)) or "all samples" for k, _ in panels]
    temps = sorted(rows["temperature"].unique().to_list())
    scale = sample_colorscale("Plasma", [0.85 * k / max(len(temps) - 1, 1)
                                         for k in range(len(temps))])
    cols = min(len(panels), 2) or 1
    nrows = max(1, math.ceil(len(panels) / cols))
    spacing, height = _rows(nrows, 290)
    fig = make_subplots(rows=nrows, cols=cols, shared_yaxes=True, vertical_spacing=spacing,
                        subplot_titles=[html.escape(n) for n in names])
    shown = set()
    for p, (_key, df) in enumerate(panels):
        where = dict(row=p // cols + 1, col=p % cols + 1)
        for g in df.sort("temperature").iter_rows(named=True):
            t = g["temperature"]
            t_idx = temps.index(t)
            x, s, lo, hi = (g[k] for k in ("tokens", "still_canonical", "still_canonical_lo",
                                           "still_canonical_hi"))
            colour = scale[t_idx].replace("rgb", "rgba").replace(")", ",0.07)")
            _band(fig, x, lo, hi, colour, f"T={t:g}", shape="hv", **where)
            fig.add_trace(go.Scatter(
                x=x, y=s, mode="lines", line=dict(color=scale[t_idx], shape="hv"),
                name=f"T={t:g}", legendgroup=f"T={t:g}", showlegend=t not in shown,
                legendrank=t_idx,
                customdata=np.column_stack([lo, hi, g["at_risk"]]),
                hovertemplate=_hover([f"T={t:g}, n={g['n']}",
                                      "canonical after %{x} tokens: %{y:.1%}",
                                      "95% CI %{customdata[0]:.1%} – %{customdata[1]:.1%}",
                                      "%{customdata[2]} samples still observed"])), **where)
            shown.add(t)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_yaxes(title_text="still canonical", col=1)
    fig.update_xaxes(title_text="tokens generated")
    fig.update_layout(title="Survival of canonical output: position of the first divergence",
                      **dict(LAYOUT, height=height))
    few = pl.DataFrame(
        [{"model": name, "temperature": g["temperature"], "n": g["n"], "few_samples": True}
         for name, (_k, df) in zip(names, panels) for g in df.sort("temperature").iter_rows(named=True)
         if g["n"] < FEW_SAMPLES],
        schema={"model": pl.String, "temperature": pl.Float64, "n": pl.Int64,
                "few_samples": pl.Boolean})
    return _legend_above(_warn(fig, few, "band: 95% CI (Kaplan–Meier, Greenwood); a completion "
                                         "that never diverges counts until its end"))
