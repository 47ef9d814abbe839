"""Aggregation: per-group summaries and per-model sigmoid fits, from the per-sample table alone.

Working from the sample table (not from the records) lets `report` and `check` re-summarise a
stored `analyze --output` parquet file without re-reading or re-encoding anything.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from tmcli import stats

FEW_SAMPLES = 30  # below this a group's figures get a visible warning


def _matrix(lists: pl.Series) -> np.ndarray:
    rows = lists.to_list()
    width = max((len(r) for r in rows if r is not None), default=0)
    out = np.zeros((len(rows), max(width, 1)), dtype=float)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = [0.0 if v is None else v for v in r]
    return out


def summarise_group(df: pl.DataFrame, window: int, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Every figure of one group, each with its interval and the sample count beside it."""
    n = df.height
    comp = df["compression"].to_numpy()
    mean, lo, hi = stats.mean_ci(comp, n_resamples, seed)
    out = {"n": n, "n_tokens": int(df["n_tokens"].sum()),
           "mean_compression": mean, "mean_compression_lo": lo, "mean_compression_hi": hi}

    def frac(name: str, k: int):
        out[name] = k / n if n else math.nan
        out[name + "_lo"], out[name + "_hi"] = stats.wilson(k, n)
        out["n_" + name.removeprefix("fraction_")] = k

    frac("fraction_compressed", int((comp > 0).sum()))
    frac("fraction_noncanonical", int(df["noncanonical"].sum()))
    kinds = df["kind"].value_counts()
    counts = dict(zip(kinds["kind"].to_list(), kinds["count"].to_list()))
    for kind in ("merged", "lengthened", "resegmented"):
        frac(f"fraction_{kind}", int(counts.get(kind, 0)))
    rate, rlo, rhi = stats.ratio_ci(df["noncanonical_tokens"].to_numpy(),
                                    df["n_tokens"].to_numpy(), n_resamples, seed)
    out.update(token_rate=rate, token_rate_lo=rlo, token_rate_hi=rhi)

    delta = _matrix(df["window_delta"])
    tokens = _matrix(df["window_tokens"])
    wb = stats.window_bootstrap(delta, tokens, window, min(n_resamples, 1000), seed)
    out["window_mean"] = wb["window_mean"].tolist()
    out["window_lo"] = wb["window_lo"].tolist()
    out["window_hi"] = wb["window_hi"].tolist()
    out["window_n"] = (tokens > 0).sum(axis=0).astype(int).tolist()
    out["centre_of_gravity"] = wb["cog"]
    out["centre_of_gravity_lo"] = wb["cog_lo"]
    out["centre_of_gravity_hi"] = wb["cog_hi"]
    out["median_position"] = stats.median_position(df["n_tokens"].to_numpy())
    if "study_window_compression" in df.columns and df["study_window_compression"].null_count() < n:
        sw = df["study_window_compression"].drop_nulls()
        out["study_window_mean"] = np.nanmean(_matrix(sw), axis=0).tolist()
        out["study_mean_compression"] = float(df["study_compression"].drop_nulls().mean())
    fd = df["first_divergence"].drop_nulls()
    out["median_first_divergence"] = float(fd.median()) if fd.len() else math.nan
    out["n_boundary_merges"] = int(df["boundary_merge"].sum())
    out["n_not_byte_exact"] = int((~df["byte_exact"]).sum())
    out["invalid_bytes"] = int(df["invalid_bytes"].sum())
    out["few_samples"] = n < FEW_SAMPLES
    return out


def summarise(samples: pl.DataFrame, keys: list[str], window: int,
              n_resamples: int = 2000, seed: int = 0) -> pl.DataFrame:
    """One row per group (keys in order, sorted), the group's figures as columns."""
    rows = []
    for key, df in samples.sort(keys, nulls_last=True).group_by(keys, maintain_order=True):
        row = dict(zip(keys, key))
        row.update(summarise_group(df, window, n_resamples, seed))
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def sigmoid_fits(groups: pl.DataFrame) -> pl.DataFrame:
    """Per model (and canonical mode): logistic fit of the fraction compressed vs temperature."""
    schema = {"model": pl.String, "canonical": pl.String, "n_temperatures": pl.Int64,
              "midpoint": pl.Float64, "slope": pl.Float64, "rmse": pl.Float64,
              "converged": pl.Boolean}
    if "temperature" not in groups.columns or "model" not in groups.columns:
        return pl.DataFrame(schema=schema)
    by = ["model", "canonical"] if "canonical" in groups.columns else ["model"]
    rows = []
    for key, df in groups.filter(pl.col("temperature").is_not_null()).group_by(
            by, maintain_order=True):
        fit = stats.sigmoid_fit(df["temperature"].to_numpy(), df["n_compressed"].to_numpy(),
                                df["n"].to_numpy())
        row = {"model": key[0], "canonical": key[1] if len(key) > 1 else None,
               "n_temperatures": df.height, "midpoint": None, "slope": None, "rmse": None,
               "converged": None}
        if fit:
            row.update(fit)
        rows.append(row)
    return pl.DataFrame(rows, schema=schema)
