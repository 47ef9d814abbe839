"""Curves along the completion: how long output stays canonical (the survival of the first
divergence, per group) and where compression sits when every model is pooled (the window
profile per temperature).

They are computed here, from the per-sample table, rather than in the figures that draw them,
so that `analyze --json` carries every number the report shows, and a stored analysis read back
from Parquet has them too.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tmcli.aggregate import stats
from tmcli.aggregate.groups import groups_in_order, window_profile

SURVIVAL_LISTS = {"tokens": pl.List(pl.Int64), "still_canonical": pl.List(pl.Float64),
                  "still_canonical_lo": pl.List(pl.Float64),
                  "still_canonical_hi": pl.List(pl.Float64), "at_risk": pl.List(pl.Int64)}
POOLED_LISTS = {"window_mean": pl.List(pl.Float64), "window_lo": pl.List(pl.Float64),
                "window_hi": pl.List(pl.Float64), "window_n": pl.List(pl.Int64),
                "window_centre": pl.List(pl.Float64)}


def survival(samples: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per group of ``keys``: the share of its completions still canonical after each number of
    tokens generated, Kaplan–Meier with Greenwood log-log 95% bounds (`stats.kaplan_meier`).

    A completion that diverges is an event at its first differing position; one that never
    diverges is censored at its last token, so it counts until its own end. Each row holds the
    step function's points: ``tokens`` (0 first), ``still_canonical`` with ``_lo``/``_hi``, and
    ``at_risk`` (completions still observed there); ``n`` counts the group's completions."""
    schema = {**{k: samples.schema[k] for k in keys}, "n": pl.Int64, **SURVIVAL_LISTS}
    rows = []
    for key, df in groups_in_order(samples, keys, copy=False):
        event = df["first_divergence"].is_not_null().to_numpy()
        time = np.where(event, df["first_divergence"].fill_null(0).to_numpy(),
                        df["n_tokens"].to_numpy() - 1)
        x, s, lo, hi, at_risk = stats.kaplan_meier(time, event)
        rows.append({**dict(zip(keys, key)), "n": df.height, "tokens": x.tolist(),
                     "still_canonical": s.tolist(), "still_canonical_lo": lo.tolist(),
                     "still_canonical_hi": hi.tolist(), "at_risk": at_risk.tolist()})
    return pl.DataFrame(rows, schema=schema)


def pooled_window_profile(samples: pl.DataFrame, window: int, n_resamples: int = 2000,
                          seed: int = 0) -> pl.DataFrame:
    """Per temperature, every model's samples together (the study averaged model means
    instead): mean compression per window with its bootstrap interval, the samples reaching each
    window and where its tokens are, as `groups.window_profile` computes them for one group;
    ``max_tokens`` is the longest completion. Samples without a temperature are left out."""
    schema = {"temperature": pl.Float64, "n": pl.Int64, "max_tokens": pl.Int64, **POOLED_LISTS}
    rows = []
    known = samples.filter(pl.col("temperature").is_not_null())
    for (t,), df in groups_in_order(known, ["temperature"], copy=False):
        profile = window_profile(df, window, n_resamples, seed)
        rows.append({"temperature": t, "n": df.height, "max_tokens": int(df["n_tokens"].max()),
                     **{k: profile[k] for k in POOLED_LISTS}})
    return pl.DataFrame(rows, schema=schema)
