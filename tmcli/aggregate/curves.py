"""Curves along the completion: how long output stays canonical (the survival of the first
divergence, per group) and where compression sits when every model is pooled (the window
profile per temperature).

They are computed here, from the sums a `groups.Summariser` streamed (no sample kept), rather
than in the figures that draw them, so that `analyze --json` carries every number the report
shows, and a stored analysis read back from Parquet has them too.
"""

from __future__ import annotations

import polars as pl

from tmcli.aggregate.groups import Summariser, group_order
from tmcli.measure.sample_table import SAMPLE_SCHEMA

SURVIVAL_LISTS = {"tokens": pl.List(pl.Int64), "still_canonical": pl.List(pl.Float64),
                  "still_canonical_lo": pl.List(pl.Float64),
                  "still_canonical_hi": pl.List(pl.Float64), "at_risk": pl.List(pl.Int64)}
POOLED_LISTS = {"window_mean": pl.List(pl.Float64), "window_lo": pl.List(pl.Float64),
                "window_hi": pl.List(pl.Float64), "window_n": pl.List(pl.Int64),
                "window_centre": pl.List(pl.Float64)}


def survival(summariser: Summariser, schema: dict) -> pl.DataFrame:
    """Per group: the share of its completions still canonical after each number of tokens
    generated, Kaplan–Meier with Greenwood log-log 95% bounds (`stats.kaplan_meier`).

    A completion that diverges is an event at its first differing position; one that never
    diverges is censored at its last token, so it counts until its own end. Each row holds the
    step function's points: ``tokens`` (0 first), ``still_canonical`` with ``_lo``/``_hi``, and
    ``at_risk`` (completions still observed there); ``n`` counts the group's completions.
    ``schema`` gives the key columns' types."""
    keys, table = summariser.table()
    out_schema = {**{k: schema.get(k, pl.String) for k in keys}, "n": pl.Int64, **SURVIVAL_LISTS}
    rows = []
    for key in sorted(table, key=group_order):
        sums = table[key]
        x, s, lo, hi, at_risk = sums.survival()
        rows.append({**dict(zip(keys, key)), "n": sums.n, "tokens": x.tolist(),
                     "still_canonical": s.tolist(), "still_canonical_lo": lo.tolist(),
                     "still_canonical_hi": hi.tolist(), "at_risk": at_risk.tolist()})
    return pl.DataFrame(rows, schema=out_schema)


def pooled_window_profile(summariser: Summariser) -> pl.DataFrame:
    """Per arm (the canonical mode and truncation settings that are group keys: arms sampled
    differently are never pooled) and temperature, every model's samples together (the study
    averaged model means instead): mean compression per window with its bootstrap interval,
    the samples reaching each window and where its tokens are, as a group's window figures are
    computed; ``max_tokens`` is the longest completion. Samples without a temperature are left
    out."""
    keys, table = summariser.pooled_table()
    schema = {**{k: SAMPLE_SCHEMA[k] for k in keys}, "n": pl.Int64, "max_tokens": pl.Int64,
              **POOLED_LISTS}
    rows = []
    for key in sorted(table, key=group_order):
        sums = table[key]
        profile = sums.windows()
        rows.append({**dict(zip(keys, key)), "n": sums.n, "max_tokens": profile["max_tokens"],
                     **{k: profile[k] for k in POOLED_LISTS}})
    return pl.DataFrame(rows, schema=schema)
