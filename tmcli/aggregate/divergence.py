"""Group figures of `score --divergence`: how far the generated and the canonical context of the
same text disagree, per group and by tokens since the span, each with its interval.

Means over positions are taken per sample first (a sample is the unit: its positions are not
independent), then over the group's samples with a bootstrap interval. The figures after a span
(``div_kl``, ``div_top1``, ...) average the samples that have an aligned position after a span;
the end-of-completion figures (``div_end_kl``, ``div_end_top1``) average every scored sample,
canonical ones (exactly 0 and 1) included, so they read as "what retokenizing this completion
now would change, on average".
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tmcli.aggregate import stats

AFTER_SPAN = ("kl", "kl_rev", "top1", "top3", "top5", "overlap5", "nll_ref", "nll_alt",
              "entropy_ref", "entropy_alt")
AT_END = ("kl", "top1")


def divergence_summary(df, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The group's divergence figures (empty when no sample was scored with --divergence).

    ``div_n``: samples scored; ``div_n_after``: those with a position after a span;
    ``div_<metric>`` with ``_lo``/``_hi``: means over those; ``div_nll_gap``: mean of
    (NLL under the canonical context − NLL under the generated one) of the token sampled next;
    ``div_end_kl``, ``div_end_top1``: at the end of the completion, over all scored samples."""
    if "div_positions" not in df.columns:
        return {}
    positions = df["div_positions"].to_numpy()
    positions = np.asarray(positions, dtype=float)
    scored = ~np.isnan(positions)
    if not scored.any():
        return {}
    after = scored & (np.nan_to_num(positions) > 0)
    out: dict = {"div_n": int(scored.sum()), "div_n_after": int(after.sum())}

    def put(name: str, values: np.ndarray) -> None:
        out[name], out[name + "_lo"], out[name + "_hi"] = stats.mean_ci(values, n_resamples, seed)

    def column(name: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(df[name].to_numpy(), dtype=float)[rows]

    for m in AFTER_SPAN:
        put(f"div_{m}", column(f"div_{m}", after))
    put("div_nll_gap", column("div_nll_alt", after) - column("div_nll_ref", after))
    for m in AT_END:
        put(f"div_end_{m}", column(f"div_end_{m}", scored))
    return out


def divergence_profile(samples: pl.DataFrame, keys: list[str] | None = None,
                       n_resamples: int = 1000, seed: int = 0) -> pl.DataFrame:
    """KL(generated ‖ canonical) and top-1 agreement by tokens since the span, per group:
    one row per (group, since) with the samples that have that offset (``n``), the mean over
    them of each sample's own mean at that offset, and bootstrap intervals."""
    keys = [k for k in (keys or ["model", "temperature"]) if k in samples.columns]
    schema: dict = {**{k: samples.schema[k] for k in keys}, "since": pl.Int64, "n": pl.Int64,
              **{f"{m}{s}": pl.Float64 for m in ("kl", "top1") for s in ("", "_lo", "_hi")}}
    if "div_positions" not in samples.columns:
        return pl.DataFrame(schema=schema)
    rows = samples.filter(pl.col("div_positions") > 0)
    if rows.height == 0:
        return pl.DataFrame(schema=schema)
    per = (rows.select([*keys, "div_since", "div_kl_at", "div_top1_at"])
           .with_row_index("sample")
           .explode(["div_since", "div_kl_at", "div_top1_at"])
           .group_by(["sample", *keys, "div_since"])
           .agg(pl.col("div_kl_at").mean(), pl.col("div_top1_at").mean()))
    out = []
    for key, g in per.group_by([*keys, "div_since"], maintain_order=True):
        row = dict(zip([*keys, "since"], key))
        row["n"] = g.height
        for m, col in (("kl", "div_kl_at"), ("top1", "div_top1_at")):
            row[m], row[m + "_lo"], row[m + "_hi"] = stats.mean_ci(
                g[col].drop_nulls().to_numpy(), n_resamples, seed)
        out.append(row)
    return pl.DataFrame(out, schema=schema).sort([*keys, "since"], nulls_last=True)
