"""Figures against temperature: the share of samples compressed with its sigmoid fit, and mean
compression.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl

from tmcli.aggregate import stats
from tmcli.present.figures.style import (
    LAYOUT,
    _band,
    _colour,
    _hollow,
    _hover,
    _legend_right,
    _warn,
    series,
)


def fraction_compressed(groups: pl.DataFrame, fits: pl.DataFrame,
                        max_temperature: float | None = None) -> go.Figure:
    """Figure 1: share of samples with compression > 0, Wilson intervals, fitted sigmoid."""
    fig = go.Figure()
    fit_of = {(r["model"], r.get("canonical")): r for r in fits.iter_rows(named=True)}
    for i, (label, df) in enumerate(series(groups)):
        if max_temperature is not None:
            df = df.filter(pl.col("temperature") <= max_temperature + 1e-9)
        if df.height == 0:
            continue
        y = df["fraction_compressed"]
        fig.add_trace(go.Scatter(
            x=df["temperature"], y=y, mode="markers", name=label, legendgroup=label,
            marker=dict(color=_colour(i), size=9),
            error_y=dict(type="data", symmetric=False, array=df["fraction_compressed_hi"] - y,
                         arrayminus=y - df["fraction_compressed_lo"], color=_colour(i, 0.6)),
            customdata=df.select("n", "n_compressed", "fraction_compressed_lo",
                                 "fraction_compressed_hi").to_numpy(),
            hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", "compressed %{y:.1%}",
                                  "95% CI %{customdata[2]:.1%} – %{customdata[3]:.1%}",
                                  "%{customdata[1]} of n=%{customdata[0]} samples"])))
        _hollow(fig, df["temperature"], y, df["few_samples"], i, label)
        nc = df["fraction_noncanonical"]
        fig.add_trace(go.Scatter(
            x=df["temperature"], y=nc, mode="markers", name=f"{label} non-canonical",
            legendgroup=label, marker=dict(color=_colour(i), size=8, symbol="diamond-open"),
            error_y=dict(type="data", symmetric=False, array=df["fraction_noncanonical_hi"] - nc,
                         arrayminus=nc - df["fraction_noncanonical_lo"], color=_colour(i, 0.4)),
            customdata=df.select("n", "n_noncanonical").to_numpy(),
            hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", "non-canonical %{y:.1%}",
                                  "%{customdata[1]} of n=%{customdata[0]} samples"])))
        key = (df["model"][0], df["canonical"][0] if "canonical" in df.columns else None)
        fit = fit_of.get(key) or fit_of.get((key[0], None))
        t = np.linspace(0, float(df["temperature"].max()), 200)
        for prefix, dash, what in (("", "dash", "compressed"), ("nc_", "dot", "non-canonical")):
            if not fit or fit.get(prefix + "midpoint") is None:
                continue
            mid, slope = fit[prefix + "midpoint"], fit[prefix + "slope"]
            fig.add_trace(go.Scatter(
                x=t, y=stats.sigmoid(t, mid, slope), mode="lines",
                line=dict(color=_colour(i), dash=dash, width=1.5), legendgroup=label,
                name=f"{label} {what} fit", showlegend=False,
                hovertemplate=_hover([f"<b>{label}</b> sigmoid fit ({what})",
                                      f"midpoint T={mid:.2f}, slope {slope:.2f}",
                                      "T=%{x:.2f}: %{y:.1%}"])))
    zoom = f", T ≤ {max_temperature:g}" if max_temperature is not None else ""
    fig.update_layout(title=f"Samples compressed (●, dashed fit) and non-canonical (◇, dotted "
                            f"fit){zoom}",
                      xaxis_title="temperature", yaxis_title="share of samples",
                      yaxis_tickformat=".0%", **LAYOUT)
    shown = groups if max_temperature is None else groups.filter(
        pl.col("temperature") <= max_temperature + 1e-9)
    run = shown["temperature"].drop_nulls()
    _temperature_range(fig, 0.0, max(max_temperature or 0.0, run.max() if run.len() else 0.0))
    return _legend_right(_warn(fig, shown))


def _temperature_range(fig: go.Figure, lo: float, hi: float) -> None:
    """The x axis from ``lo`` to ``hi`` (a little beyond): with one temperature, Plotly's own
    range would run from -1 to 1 around it."""
    pad = 0.04 * max(hi - lo, 0.5)
    fig.update_xaxes(range=[lo - pad, hi + pad])


def _line_with_band(fig, df, x, col: str, label: str, i: int, hover: list[str], fmt: str,
                    **where) -> None:
    _band(fig, df[x], df[f"{col}_lo"], df[f"{col}_hi"], _colour(i, 0.18), label, **where)
    fig.add_trace(go.Scatter(
        x=df[x], y=df[col], mode="lines+markers", name=label, legendgroup=label,
        line=dict(color=_colour(i)), marker=dict(size=8),
        customdata=df.select("n", f"{col}_lo", f"{col}_hi").to_numpy(),
        hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", *hover, f"%{{y:{fmt}}}",
                              f"95% CI %{{customdata[1]:{fmt}}} – %{{customdata[2]:{fmt}}}",
                              "n=%{customdata[0]} samples"])), **where)
    _hollow(fig, df[x], df[col], df["few_samples"], i, label, size=8, **where)


def _vs_temperature(groups: pl.DataFrame, col: str, hover: str, fmt: str, title: str,
                    yaxis_title: str, tickformat: str) -> go.Figure:
    """One line per model of a group metric vs temperature, with its CI band."""
    fig = go.Figure()
    for i, (label, df) in enumerate(series(groups)):
        _line_with_band(fig, df, "temperature", col, label, i, [hover], fmt)
    fig.update_layout(title=title, xaxis_title="temperature", yaxis_title=yaxis_title,
                      yaxis_tickformat=tickformat, **LAYOUT)
    return _legend_right(_warn(fig, groups))


def mean_compression(groups: pl.DataFrame) -> go.Figure:
    """Figure 2: mean (signed) compression per sample, bootstrap band."""
    return _vs_temperature(groups, "mean_compression", "mean compression", ".3%",
                           "Mean compression vs temperature (band: 95% bootstrap CI)",
                           "(n − len(re-encoding)) / n", ".2%")


def nearest_temperatures(available, wanted) -> list[tuple[float, float]]:
    """(wanted, nearest available) for each wanted temperature, without repeats."""
    avail = sorted({float(t) for t in available if t is not None})
    out: list[tuple[float, float]] = []
    for w in wanted:
        if not avail:
            break
        got = min(avail, key=lambda t: (abs(t - w), t))
        if got not in [g for _, g in out]:
            out.append((float(w), got))
    return out
