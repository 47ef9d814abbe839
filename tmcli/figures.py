"""Plotly figures of the study, each with the uncertainty the study lacked.

One function per figure. Each takes the analysis' frames (groups, fits, samples) and returns a
`plotly.graph_objects.Figure`; nothing here writes files. Every point carries its interval (error
bars or a band) and its sample count in the hover; groups with too few samples are drawn hollow
and named in a warning on the figure itself, so a screenshot cannot lose the caveat.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from tmcli import stats
from tmcli.summary import FEW_SAMPLES, summarise

PALETTE = qualitative.Plotly
LAYOUT = dict(template="plotly_white", height=460, margin=dict(l=70, r=30, t=120, b=60),
              legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
              hoverlabel=dict(align="left"))


def series(groups: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """(escaped label, rows sorted by temperature) per model, and per canonical mode if any."""
    keys = ["model", "canonical"] if "canonical" in groups.columns else ["model"]
    rows = groups.filter(pl.col("temperature").is_not_null()).sort([*keys, "temperature"])
    out = []
    for key, df in rows.group_by(keys, maintain_order=True):
        label = str(key[0]) if len(key) == 1 else f"{key[0]} (canonical {key[1]})"
        out.append((html.escape(label), df))
    return out


def _rows(nrows: int, panel_px: int, gap_px: int = 110) -> tuple[float, int]:
    """(vertical_spacing, figure height) for ``nrows`` rows of panels ``panel_px`` tall with
    ``gap_px`` between them (room for a subplot title and tick labels). Plotly takes the spacing
    as a fraction of the plot area and refuses one above 1/(rows - 1); a fixed gap in pixels stays
    below that for any number of rows (50 models make 25 rows of heatmaps)."""
    area = nrows * panel_px + (nrows - 1) * gap_px
    margin = LAYOUT["margin"]
    return gap_px / area, area + margin["t"] + margin["b"]


def _colour(i: int, alpha: float = 1.0) -> str:
    """Series i's colour; i < 0 is the pooled "all models" curve."""
    h = "#3d3d3d" if i < 0 else PALETTE[i % len(PALETTE)]
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
        names = [f"{html.escape(str(r['model']))} T={_t(r['temperature'])} (n={r['n']})"
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
    rows, used = 0, LEGEND_ROW_PX
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
    out = []
    for w in wanted:
        if not avail:
            break
        got = min(avail, key=lambda t: (abs(t - w), t))
        if got not in [g for _, g in out]:
            out.append((float(w), got))
    return out


def window_profile(samples: pl.DataFrame, groups: pl.DataFrame, window: int,
                   temperatures=(2.0, 0.8), n_resamples: int = 1000) -> go.Figure:
    """Figure 3: mean compression by window position at chosen temperatures.

    Left: all models pooled (their samples together; the study averaged model means), right: per
    model. A wanted temperature that was not run is replaced by the nearest one, and said so.
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
        pooled = summarise(samples.filter(pl.col("temperature") == t), ["temperature"], window,
                           n_resamples=n_resamples)
        curves = [("all models", pooled, -1)] + [(label, df.filter(pl.col("temperature") == t), i)
                                                  for i, (label, df) in enumerate(labels)]
        for label, row, i in curves:
            if row.height == 0:
                continue
            g = row.row(0, named=True)
            m = np.array(g["window_mean"], dtype=float)
            x = np.array(g["window_centre"], dtype=float)  # where each window's tokens are
            starts = np.arange(len(m)) * window
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
    longest = samples.filter(pl.col("temperature").is_in([g for _, g in picks]))["n_tokens"].max()
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
    fig.update_layout(title="Mean compression by temperature and position",
                      coloraxis=dict(colorscale="RdBu_r", cmid=0, colorbar=dict(tickformat=".1%")),
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
        fig.add_trace(go.Scatter(
            x=df["temperature"], y=df["median_position"], mode="lines", legendgroup=label,
            name=f"{label}: median position", line=dict(color=_colour(i), dash="dot", width=1.5),
            hovertemplate=_hover([f"<b>{label}</b> T=%{{x}}", "median position %{y:.0f}"])))
        if "centre_noncanonical" in df.columns:
            y = df["centre_noncanonical"]
            fig.add_trace(go.Scatter(
                x=df["temperature"], y=y, mode="lines+markers", legendgroup=label,
                name=f"{label}: non-canonical tokens", line=dict(color=_colour(i), dash="dash"),
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


def token_rate(groups: pl.DataFrame) -> go.Figure:
    """Figure 6b: tokens inside differing spans / all tokens (comparable with later studies)."""
    return _vs_temperature(groups, "token_rate", "non-canonical tokens", ".2%",
                           "Per-token non-canonical rate vs temperature (band: 95% bootstrap CI)",
                           "tokens in differing spans", ".1%")


def first_divergence(samples: pl.DataFrame) -> go.Figure:
    """Figure 6c: survival of canonical output: share still canonical up to each position.

    Kaplan–Meier, so completions that never diverge count up to their own length (censored),
    with Greenwood log-log 95% bands. One panel per model, one curve per temperature.
    """
    rows = samples.filter(pl.col("temperature").is_not_null())
    keys = ["model", "canonical"] if rows["canonical"].n_unique() > 1 else ["model"]
    panels = list(rows.sort(keys).group_by(keys, maintain_order=True))
    temps = sorted(rows["temperature"].unique().to_list())
    scale = sample_colorscale("Plasma", [0.85 * k / max(len(temps) - 1, 1)
                                         for k in range(len(temps))])
    cols = min(len(panels), 2) or 1
    nrows = max(1, math.ceil(len(panels) / cols))
    spacing, height = _rows(nrows, 290)
    fig = make_subplots(rows=nrows, cols=cols, shared_yaxes=True, vertical_spacing=spacing,
                        subplot_titles=[html.escape(" · ".join(map(str, k))) for k, _ in panels])
    shown = set()
    for p, (_key, df) in enumerate(panels):
        where = dict(row=p // cols + 1, col=p % cols + 1)
        for (t,), g in df.sort("temperature").group_by("temperature", maintain_order=True):
            t_idx = temps.index(t)
            event = g["first_divergence"].is_not_null().to_numpy()
            time = np.where(event, g["first_divergence"].fill_null(0).to_numpy(),
                            g["n_tokens"].to_numpy() - 1)
            x, s, lo, hi, at_risk = stats.kaplan_meier(time, event)
            colour = scale[t_idx].replace("rgb", "rgba").replace(")", ",0.07)")
            _band(fig, x, lo, hi, colour, f"T={t:g}", shape="hv", **where)
            fig.add_trace(go.Scatter(
                x=x, y=s, mode="lines", line=dict(color=scale[t_idx], shape="hv"),
                name=f"T={t:g}", legendgroup=f"T={t:g}", showlegend=t not in shown,
                legendrank=t_idx,
                customdata=np.column_stack([lo, hi, at_risk]),
                hovertemplate=_hover([f"T={t:g}, n={g.height}",
                                      "canonical after %{x} tokens: %{y:.1%}",
                                      "95% CI %{customdata[0]:.1%} – %{customdata[1]:.1%}",
                                      "%{customdata[2]} samples still observed"])), **where)
            shown.add(t)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_yaxes(title_text="still canonical", col=1)
    fig.update_xaxes(title_text="tokens generated")
    fig.update_layout(title="Survival of canonical output: position of the first divergence",
                      **dict(LAYOUT, height=height))
    g = samples.group_by("model", "temperature").len().sort("model", "temperature")
    few = g.filter(pl.col("len") < FEW_SAMPLES).rename({"len": "n"}).with_columns(
        few_samples=pl.lit(True))
    return _legend_above(_warn(fig, few, "band: 95% CI (Kaplan–Meier, Greenwood); a completion "
                                         "that never diverges counts until its end"))


COMPARE_PANELS = (
    ("fraction_noncanonical", "non-canonical samples", ".1%", ".0%"),
    ("nll_token", "NLL per token (nats)", ".3f", ".3~g"),
    ("chars_per_token", "characters per token", ".3f", ".3~g"),
    ("distinct_2", "distinct word bigrams", ".3f", ".3~g"),
)


def canonical_comparison(comparison: pl.DataFrame) -> go.Figure:
    """Canonical modes vs free generation: per model (rows), metrics vs temperature (columns),
    one line per canonical mode with its 95% band (Wilson for the share, bootstrap otherwise).

    ``comparison`` is `summary.canonical_comparison`: only (model, temperature) pairs run both
    free ("off") and in another mode. A panel stays empty where the records carry no value
    (e.g. no NLL).
    """
    rows = comparison.filter(pl.col("temperature").is_not_null())
    models = sorted(rows["model"].unique().to_list())
    modes = rows["canonical"].unique(maintain_order=True).to_list()  # "off" first
    ncols = len(COMPARE_PANELS)
    titles = [f"{html.escape(str(m))}: {title}" for m in models for _c, title, _f, _t in
              COMPARE_PANELS]
    fig = make_subplots(rows=max(len(models), 1), cols=ncols, subplot_titles=titles or None,
                        horizontal_spacing=0.06, vertical_spacing=0.2 / max(len(models), 1))
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
                _band(fig, x, lo, hi, _colour(i, 0.18), label, **where)
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
