"""What `tmcli score --divergence` wrote into a record, as per-sample columns of the analysis.

The record's ``divergence`` field (`tmcli.scoring.divergence`) holds, per aligned position
after a non-canonical span, ``since`` (tokens since the span) and each of `COMPARISON_METRICS`,
their per-sample ``mean`` and the ``end``-of-completion comparison. The analysis keeps the
means (``div_<metric>``), the end figures, the count of positions and, for the by-position
figure, ``since``, KL and top-1 agreement per position. A record without the field (or with a
malformed one) gets nulls: it was not scored, which is not the same as "no difference".
"""

from __future__ import annotations

import polars as pl

from tmcli.measure.text_quality import record_float

# The comparison of two next-token distributions (reference vs alternative), shared by
# `score --divergence` and `score --merge`: see `tmcli.scoring.compare`.
COMPARISON_METRICS = ("kl", "kl_rev", "top1", "top3", "top5", "overlap5", "nll_ref", "nll_alt",
                      "entropy_ref", "entropy_alt")
END_METRICS = ("kl", "kl_rev", "top1", "overlap5")

DIVERGENCE_SCHEMA = {
    "div_positions": pl.Int64,
    **{f"div_{m}": pl.Float64 for m in COMPARISON_METRICS},
    **{f"div_end_{m}": pl.Float64 for m in END_METRICS},
    "div_since": pl.List(pl.Int64), "div_kl_at": pl.List(pl.Float64),
    "div_top1_at": pl.List(pl.Float64),
}


def _floats(values) -> list[float | None] | None:
    if not isinstance(values, list):
        return None
    return [record_float(v) for v in values]


def divergence_columns(field) -> dict:
    """The analysis columns of one record's ``divergence`` field (nulls without one)."""
    out: dict = {name: None for name in DIVERGENCE_SCHEMA}
    if not isinstance(field, dict):
        return out
    positions = field.get("positions")
    since = field.get("since")
    if isinstance(positions, bool) or not isinstance(positions, int) or not isinstance(since, list) \
            or any(isinstance(s, bool) or not isinstance(s, int) for s in since):
        return out
    kl, top1 = _floats(field.get("kl")), _floats(field.get("top1"))
    if kl is None or top1 is None or not len(kl) == len(top1) == len(since):
        return out
    out["div_positions"] = positions
    mean, end = field.get("mean"), field.get("end")
    mean = mean if isinstance(mean, dict) else {}
    end = end if isinstance(end, dict) else {}
    for m in COMPARISON_METRICS:
        out[f"div_{m}"] = record_float(mean.get(m))
    for m in END_METRICS:
        out[f"div_end_{m}"] = record_float(end.get(m))
    out["div_since"], out["div_kl_at"], out["div_top1_at"] = since, kl, top1
    return out
