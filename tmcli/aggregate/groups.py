"""Aggregation: per-group summaries and per-model sigmoid fits, from the per-sample table alone.

Working from the sample table (not from the records) lets `report` and `check` re-summarise a
stored `analyze --output` parquet file without re-reading or re-encoding anything.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from tmcli.aggregate import stats
from tmcli.aggregate.divergence import divergence_summary
from tmcli.measure.causes import cause_counts

FEW_SAMPLES = 30  # below this a group's figures get a visible warning
# One sample = one id within its model, temperature and canonical mode (tools that number their
# requests 0..N per run reuse ids across runs, which are different samples).
DUPLICATE_KEY = ("id", "model", "temperature", "canonical")


def _matrix(lists: pl.Series) -> np.ndarray:
    """(samples × windows) from a list column, short and missing lists padded with 0, built from
    the column's flat values (no Python object per value: groups can hold 10^5 samples)."""
    arr = lists.rechunk().to_arrow()
    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    out: np.ndarray = np.zeros((len(arr), max(int(lengths.max(initial=0)), 1)), dtype=float)
    if lengths.sum():
        values = arr.flatten().fill_null(0).to_numpy(zero_copy_only=False).astype(float)
        rows: np.ndarray = np.repeat(np.arange(len(arr)), lengths)
        cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = values
    return out


class _Rows:
    """The rows of one group, each column gathered only when asked for (``rows[name]``): a
    large group is never copied whole. Has what `summarise_group` reads of a DataFrame."""

    def __init__(self, samples: pl.DataFrame, rows: pl.Series):
        self._samples, self._rows = samples, rows
        self.height, self.columns = len(rows), samples.columns

    def __getitem__(self, name: str) -> pl.Series:
        return self._samples[name].gather(self._rows)


def groups_in_order(samples: pl.DataFrame, keys: list[str], *, copy: bool = True):
    """(key tuple, rows) per group, groups sorted by key (nulls last), rows in input order:
    a DataFrame with ``copy``, else a `_Rows`; a single group is ``samples`` itself.

    Groups come from dense integer codes of the key columns (a few bytes per row) rather than a
    sorted copy of the table or a group-by over it, which cost 100+ bytes per row."""
    code = np.zeros(samples.height, dtype=np.int64)
    for k in keys:
        ranks = samples[k].rank("dense").cast(pl.Int64).fill_null(0).to_numpy()  # null: 0
        # made dense again after each key, so many keys of many values cannot overflow
        code = np.unique(code * (int(ranks.max(initial=0)) + 1) + ranks, return_inverse=True)[1]
    order = np.argsort(code, kind="stable")
    starts = np.flatnonzero(np.diff(code[order], prepend=-1))
    bounds = list(zip(starts, [*starts[1:], len(order)]))
    first = samples.select(keys)[order[starts]]
    null_last = [tuple((v is None, v) for v in row) for row in first.iter_rows()]
    for i in sorted(range(len(bounds)), key=null_last.__getitem__):
        key, (a, b) = first.row(i), bounds[i]
        if len(bounds) == 1:
            yield key, samples
        else:
            rows = pl.Series(order[a:b])
            yield key, samples[rows] if copy else _Rows(samples, rows)


def drop_duplicates(samples: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``samples`` with each `DUPLICATE_KEY` once (its first row), and how many rows went."""
    if samples["id"].n_unique() == samples.height:  # the usual case, and the cheapest test
        return samples, 0
    keys = [k for k in DUPLICATE_KEY if k in samples.columns]
    first = samples.select(pl.struct(keys).is_first_distinct()).to_series()
    dropped = samples.height - int(first.sum())
    return (samples.filter(first), dropped) if dropped else (samples, 0)


def window_profile(df, window: int, n_resamples: int = 2000, seed: int = 0, *,
                   tokens: np.ndarray | None = None) -> dict:
    """Mean compression per window of positions (``window_mean``, its bootstrap ``window_lo``/
    ``window_hi``, ``window_n`` samples reaching it, ``window_centre`` where its tokens are) and
    the centre of gravity (``cog``, ``cog_lo``, ``cog_hi``) of a group's rows."""
    tokens = _matrix(df["window_tokens"]) if tokens is None else tokens
    wb = stats.window_bootstrap(_matrix(df["window_delta"]), tokens, window,
                                min(n_resamples, 1000), seed)
    return {"window_mean": wb["window_mean"].tolist(), "window_lo": wb["window_lo"].tolist(),
            "window_hi": wb["window_hi"].tolist(),
            "window_n": (tokens > 0).sum(axis=0).astype(int).tolist(),
            "window_centre": wb["window_centre"].tolist(),  # where the windows' tokens are
            "cog": wb["cog"], "cog_lo": wb["cog_lo"], "cog_hi": wb["cog_hi"]}


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
    for kind in ("merged", "lengthened", "resegmented", "invalid_utf8", "unknown_id"):
        frac(f"fraction_{kind}", int(counts.get(kind, 0)))
    rate, rlo, rhi = stats.ratio_ci(df["noncanonical_tokens"].to_numpy(),
                                    df["n_tokens"].to_numpy(), n_resamples, seed)
    out.update(token_rate=rate, token_rate_lo=rlo, token_rate_hi=rhi)

    tokens = _matrix(df["window_tokens"])
    wb = window_profile(df, window, n_resamples, seed, tokens=tokens)
    out.update({k: v for k, v in wb.items() if k.startswith("window_")})
    out["centre_of_gravity"] = wb["cog"]
    out["centre_of_gravity_lo"] = wb["cog_lo"]
    out["centre_of_gravity_hi"] = wb["cog_hi"]
    out["median_position"] = stats.median_position(df["n_tokens"].to_numpy())
    # Where the non-canonical tokens sit: the same centre, weighted by the tokens in differing
    # spans instead of the net saving, so it stays defined when lengthening cancels merging.
    nc = stats.window_bootstrap(_matrix(df["window_noncanonical"]).astype(float), tokens, window,
                                min(n_resamples, 1000), seed)
    out["window_noncanonical_rate"] = nc["window_mean"].tolist()
    out["centre_noncanonical"] = nc["cog"]
    out["centre_noncanonical_lo"] = nc["cog_lo"]
    out["centre_noncanonical_hi"] = nc["cog_hi"]
    if "study_window_compression" in df.columns and df["study_window_compression"].null_count() < n:
        from tmcli.aggregate.study_script import study_summary

        by_model: dict = {}  # the script cut each model's lists to that model's shortest
        scores = []
        for model, windows, whole in zip(df["model"].to_list(),
                                         df["study_window_compression"].to_list(),
                                         df["study_compression"].to_list()):
            if windows is not None:
                by_model.setdefault(model, []).append(windows)
                scores.append(whole)
        out.update(study_summary(list(by_model.values()), min(n_resamples, 1000), seed))
        sc = np.asarray(scores, dtype=float)
        out["study_mean_compression"] = float(sc.mean())
        k = int((sc > 0).sum())
        out["study_n_compressed"] = k
        out["study_fraction_compressed"] = k / len(sc)
        out["study_fraction_compressed_lo"], out["study_fraction_compressed_hi"] = \
            stats.wilson(k, len(sc))
    fd = df["first_divergence"].drop_nulls()
    out["median_first_divergence"] = float(fd.median()) if fd.len() else math.nan
    out["n_boundary_merges"] = int(df["boundary_merge"].sum())
    out["n_not_byte_exact"] = int((~df["byte_exact"]).sum())
    out["invalid_bytes"] = int(df["invalid_bytes"].sum())
    for name in ("cut_bytes", "unknown_ids"):
        out[name] = int(df[name].sum()) if name in df.columns else 0
    out["n_normalized"] = int(df["normalized"].sum()) if "normalized" in df.columns else 0
    out.update(quality_summary(df, n_resamples, seed))
    out.update(cause_counts(df))  # spans per cause (tmcli.measure.causes)
    out.update(drift_summary(df))
    out.update(divergence_summary(df, n_resamples, seed))  # score --divergence, when present
    out["few_samples"] = n < FEW_SAMPLES
    return out


DRIFT_CAUSES = ("template", "tokenization")  # tmcli.measure.trajectory.CAUSES


def drift_summary(df) -> dict:
    """Trajectories of a group (the samples that are their sampled turns, counted once each):
    how many, how many drift (share with its Wilson interval), and how many by cause. Empty when
    the group holds no trajectory."""
    if "drift" not in df.columns:
        return {}
    first = (df["turn"] == 0).fill_null(False).to_numpy()  # one row per trajectory
    if not first.any():
        return {}
    drift = df["drift"].fill_null(False).to_numpy()[first].astype(bool)
    causes = np.asarray(df["drift_cause"].to_list(), dtype=object)[first]
    n, k = int(first.sum()), int(drift.sum())
    lo, hi = stats.wilson(k, n)
    out = {"n_trajectories": n, "n_drift": k, "fraction_drift": k / n,
           "fraction_drift_lo": lo, "fraction_drift_hi": hi}
    for cause in DRIFT_CAUSES:
        out[f"n_drift_{cause}"] = int((drift & (causes == cause)).sum())
    return out


def drift_by_turn(samples: pl.DataFrame) -> pl.DataFrame:
    """Per sampled turn index: the trajectories that reach it, how many first drift there (the
    drift's ``drift_turn``), by cause, and that share of the trajectories reaching the turn
    (Wilson interval). Empty when the samples hold no trajectory."""
    schema = {"turn": pl.Int64, "n_trajectories": pl.Int64, "n_drift": pl.Int64,
              **{f"n_drift_{c}": pl.Int64 for c in DRIFT_CAUSES},
              "fraction_drift": pl.Float64, "fraction_drift_lo": pl.Float64,
              "fraction_drift_hi": pl.Float64}
    if "turn" not in samples.columns:
        return pl.DataFrame(schema=schema)
    turns = samples.filter(pl.col("turn").is_not_null())
    here = pl.col("drift").fill_null(False) & (pl.col("drift_turn") == pl.col("turn"))
    out = turns.group_by("turn").agg(
        pl.len().alias("n_trajectories"), here.sum().alias("n_drift"),
        *[(here & (pl.col("drift_cause") == c)).sum().alias(f"n_drift_{c}")
          for c in DRIFT_CAUSES]).sort("turn")
    bounds = [stats.wilson(int(k), int(n)) for k, n in zip(out["n_drift"], out["n_trajectories"])]
    return out.with_columns(
        fraction_drift=pl.col("n_drift") / pl.col("n_trajectories"),
        fraction_drift_lo=pl.Series([b[0] for b in bounds], dtype=pl.Float64),
        fraction_drift_hi=pl.Series([b[1] for b in bounds], dtype=pl.Float64)).cast(schema)


QUALITY_MEANS = ("chars_per_token", "distinct_2", "repetition_4", "nll_token", "nll_char")
PAIRED = ("nll_token", "chars_per_token")


def _null_ci(out: dict, name: str) -> None:
    out[name] = out[name + "_lo"] = out[name + "_hi"] = None


def quality_summary(df: pl.DataFrame, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean and bootstrap CI of each text-quality proxy over the samples that have it.

    ``<metric>_n`` counts those samples; the mean and its bounds are null when none has it
    (e.g. NLLs from records that carry none). ``n_chars`` is the group's total characters.
    """
    out: dict = {}
    if "n_chars" in df.columns:
        out["n_chars"] = int(df["n_chars"].sum()) if df["n_chars"].null_count() < df.height else None
    for name in QUALITY_MEANS:
        values = df[name].drop_nulls().to_numpy() if name in df.columns else np.array([])
        out[name + "_n"] = len(values)
        if len(values):
            out[name], out[name + "_lo"], out[name + "_hi"] = stats.mean_ci(values, n_resamples, seed)
        else:
            _null_ci(out, name)
    return out


def summarise(samples: pl.DataFrame, keys: list[str], window: int,
              n_resamples: int = 2000, seed: int = 0) -> pl.DataFrame:
    """One row per group (keys in order, sorted), the group's figures as columns."""
    rows = []
    for key, df in groups_in_order(samples, keys, copy=False):
        row = dict(zip(keys, key))
        row.update(summarise_group(df, window, n_resamples, seed))
        rows.append(row)
    out = pl.DataFrame(rows, infer_schema_length=None)
    # a proxy no group has (no NLL in any record) would otherwise be a column of type Null
    casts = [pl.col(c).cast(pl.Float64) for name in QUALITY_MEANS
             for c in (name, name + "_lo", name + "_hi") if c in out.columns]
    if "n_chars" in out.columns:
        casts.append(pl.col("n_chars").cast(pl.Int64))
    return out.with_columns(casts)


def _comparison_schema() -> dict:
    schema = {"model": pl.String, "temperature": pl.Float64, "canonical": pl.String,
              "n": pl.Int64, "n_noncanonical": pl.Int64}
    for name in ("fraction_noncanonical", "mean_compression", *QUALITY_MEANS):
        schema.update({name: pl.Float64, name + "_lo": pl.Float64, name + "_hi": pl.Float64})
    for name in QUALITY_MEANS:
        schema[name + "_n"] = pl.Int64
    schema["paired_prompts"] = pl.Int64
    for name in PAIRED:
        schema.update({f"diff_{name}": pl.Float64, f"diff_{name}_lo": pl.Float64,
                       f"diff_{name}_hi": pl.Float64, f"diff_{name}_n": pl.Int64})
    schema["few_samples"] = pl.Boolean
    return schema


def _per_prompt(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Mean of ``name`` per prompt_index (several samples of one prompt count as one)."""
    return (df.filter(pl.col("prompt_index").is_not_null() & pl.col(name).is_not_null())
            .group_by("prompt_index").agg(pl.col(name).mean()))


def paired_difference(mode: pl.DataFrame, base: pl.DataFrame, name: str,
                      n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean over shared prompts of (mode − base) for ``name``, bootstrap CI over prompts.

    Samples are paired by prompt_index (the same prompt and row seed in every mode); a prompt
    with several samples in a mode contributes the mean of them. ``diff_<name>_n`` counts the
    prompts paired.
    """
    joined = _per_prompt(mode, name).join(_per_prompt(base, name), on="prompt_index",
                                          suffix="_base").sort("prompt_index")
    d = (joined[name] - joined[name + "_base"]).to_numpy()
    out: dict[str, float | int | None] = {f"diff_{name}_n": len(d)}
    if len(d):
        m, lo, hi = stats.mean_ci(d, n_resamples, seed)
        out.update({f"diff_{name}": m, f"diff_{name}_lo": lo, f"diff_{name}_hi": hi})
    else:
        _null_ci(out, f"diff_{name}")
    return out


def canonical_comparison(samples: pl.DataFrame, n_resamples: int = 2000, seed: int = 0,
                         baseline: str = "off") -> pl.DataFrame:
    """Canonical modes vs free generation, per (model, temperature) run in ``baseline`` and at
    least one other mode: one row per mode, baseline first, then the others sorted.

    Each row: n, non-canonical share (Wilson CI), mean compression and the text-quality proxies
    (bootstrap CIs), and for the non-baseline modes the paired difference vs the baseline of
    nll_token and chars_per_token over shared prompts (`paired_difference`). Empty (with its
    columns) when the samples hold one canonical mode, or no (model, temperature) has both.
    """
    schema = _comparison_schema()
    if "canonical" not in samples.columns or samples["canonical"].n_unique() < 2:
        return pl.DataFrame(schema=schema)
    rows = []
    keys = ["model", "temperature"]
    for (model, temp), df in groups_in_order(samples, keys):
        modes = set(df["canonical"].to_list())
        if baseline not in modes or len(modes) < 2:
            continue
        base = df.filter(pl.col("canonical") == baseline)
        shared_base = set(base["prompt_index"].drop_nulls().to_list())
        for mode in [baseline, *sorted(modes - {baseline})]:
            g = base if mode == baseline else df.filter(pl.col("canonical") == mode)
            n, k = g.height, int(g["noncanonical"].sum())
            row = {"model": model, "temperature": temp, "canonical": mode, "n": n,
                   "n_noncanonical": k, "fraction_noncanonical": k / n}
            row["fraction_noncanonical_lo"], row["fraction_noncanonical_hi"] = stats.wilson(k, n)
            (row["mean_compression"], row["mean_compression_lo"],
             row["mean_compression_hi"]) = stats.mean_ci(g["compression"].to_numpy(),
                                                          n_resamples, seed)
            row.update(quality_summary(g, n_resamples, seed))
            if mode != baseline:
                row["paired_prompts"] = len(shared_base
                                            & set(g["prompt_index"].drop_nulls().to_list()))
                for name in PAIRED:
                    row.update(paired_difference(g, base, name, n_resamples, seed))
            row["few_samples"] = n < FEW_SAMPLES
            rows.append(row)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)


def sigmoid_fits(groups: pl.DataFrame) -> pl.DataFrame:
    """Per model (and canonical mode): logistic fits vs temperature of the fraction compressed
    (the study's, ``midpoint``/``slope``/``rmse``) and of the fraction non-canonical (``nc_``
    columns), which stays a sigmoid where lengthening re-encodings make the former fall again.
    ``reason``/``nc_reason`` say why a fit is missing (`stats.sigmoid_fit`); null for a fit."""
    schema = {"model": pl.String, "canonical": pl.String, "n_temperatures": pl.Int64,
              "midpoint": pl.Float64, "slope": pl.Float64, "rmse": pl.Float64,
              "converged": pl.Boolean, "nc_midpoint": pl.Float64, "nc_slope": pl.Float64,
              "nc_rmse": pl.Float64, "nc_converged": pl.Boolean,
              "reason": pl.String, "nc_reason": pl.String}
    if "temperature" not in groups.columns or "model" not in groups.columns:
        return pl.DataFrame(schema=schema)
    by = ["model", "canonical"] if "canonical" in groups.columns else ["model"]
    rows = []
    for key, df in groups.filter(pl.col("temperature").is_not_null()).group_by(
            by, maintain_order=True):
        row = {"model": key[0], "canonical": key[1] if len(key) > 1 else None,
               "n_temperatures": df.height}
        for prefix, count in (("", "n_compressed"), ("nc_", "n_noncanonical")):
            fit = stats.sigmoid_fit(df["temperature"].to_numpy(), df[count].to_numpy(),
                                    df["n"].to_numpy())
            for name in ("midpoint", "slope", "rmse", "converged", "reason"):
                row[prefix + name] = fit[name]
        rows.append(row)
    return pl.DataFrame(rows, schema=schema)
