"""Aggregation: per-group summaries, the canonical-mode comparison and per-model sigmoid fits,
from per-sample rows alone, streamed (`Summariser`: memory does not grow with the rows).

Working from the sample rows (not from the records) lets `report` and `check` re-summarise a
stored `analyze --output` parquet file without re-reading or re-encoding anything; the same rows
in the same order give the same figures, intervals included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import polars as pl

from tmcli.aggregate import stats
from tmcli.aggregate.accumulate import DRIFT_CAUSES, FEW_SAMPLES, QUALITY_MEANS, GroupSums
from tmcli.aggregate.keys import ARMS, SAMPLING_KEYS, series_keys
from tmcli.measure.sample_table import SAMPLE_SCHEMA

# One sample = one id within its model, temperature and canonical mode (tools that number their
# requests 0..N per run reuse ids across runs, which are different samples).
DUPLICATE_KEY = ("id", "model", "temperature", "canonical")
# the default groups before the arms that vary are known: model, arm (`keys.ARMS`), temperature
FINEST = ("model", *ARMS, "temperature")
PAIRED = ("nll_token", "chars_per_token")


_BLAS: list = []


def _one_blas_thread():
    """The resampled sums are small matrix products: BLAS threads only wait for cores that the
    measuring processes use (10-80x slower than one thread on a busy machine)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def group_order(key: tuple) -> tuple:
    return tuple((v is None, v) for v in key)  # sorted by key, nulls last


class Summariser:
    """Group summaries of sample rows given in batches (`add`), in input order.

    ``keys`` None groups by model and temperature, and by canonical mode and each truncation
    setting too where the rows state several values (`keys_used`), known only at the end: rows
    are kept by all of them (`FINEST`), which the canonical comparison reads, and the groups
    merged at the end (`GroupSums.merged`) where a setting only some rows state (the others
    null) splits nothing. With
    ``dedupe`` a row whose `DUPLICATE_KEY` was seen before is dropped (and counted; a row
    without an id of its own, null ``id``, never is): rows are
    remembered by a 128-bit hash of that key (16 bytes per row, the only memory per row)."""

    def __init__(self, keys: list[str] | None, window: int, n_resamples: int = 2000,
                 seed: int = 0, *, dedupe: bool = False, comparison: bool = True,
                 curves: bool = True):
        self.keys, self.window = (list(keys) if keys else None), window
        self.n_resamples, self.seed, self.dedupe = n_resamples, seed, dedupe
        self.finest: dict[tuple, GroupSums] | None = {} if keys is None or comparison else None
        self.explicit: dict[tuple, GroupSums] = {}
        self.curves = curves  # the pooled window profile (`curves.pooled_window_profile`)
        self.pooled: dict[tuple, GroupSums] = {}  # per temperature, every model together
        self.turns: Counter = Counter()  # (turn, what) -> trajectories (`drift_by_turn`)
        self.seen: set[int] = set()
        self.n = self.n_duplicates = 0

    def add(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Add a batch of rows; returns those counted (without duplicates, with ``dedupe``)."""
        missing = [k for k in FINEST if k not in frame.columns]  # rows that never say
        if missing:
            frame = frame.with_columns(pl.lit(None, SAMPLE_SCHEMA[k]).alias(k) for k in missing)
        if self.dedupe and frame.height:
            frame = self._new(frame)
        self.n += frame.height
        with _one_blas_thread():
            if self.finest is not None:
                self._route(frame, FINEST, self.finest, prompts=True)
            if self.keys is not None:
                self._route(frame, self.keys, self.explicit)
            if self.curves:
                self._route(frame.filter(pl.col("temperature").is_not_null()),
                            [*ARMS, "temperature"], self.pooled, windows_only=True)
        if "turn" in frame.columns:
            self._add_turns(frame)
        return frame

    def _route(self, frame: pl.DataFrame, keys, table: dict, prompts: bool = False,
               windows_only: bool = False) -> None:
        parts = frame.partition_by(list(keys), maintain_order=True, as_dict=True) \
            if frame.height else {}
        for key, part in parts.items():
            sums = table.get(key)
            if sums is None:
                sums = table[key] = GroupSums(key, self.window, self.n_resamples, self.seed,
                                              windows_only=windows_only)
            sums.add(part)
            if prompts and "prompt_index" in part.columns:
                sums.add_prompts(part, PAIRED)

    def _new(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` without the rows seen before (in it or in earlier batches)."""
        cols = [c for c in DUPLICATE_KEY if c in frame.columns]
        key = pl.struct(cols)
        hashes = frame.select(a=key.hash(seed=1), b=key.hash(seed=2))
        found = [(a << 64) | b for a, b in zip(hashes["a"].to_list(), hashes["b"].to_list())]
        own = frame["id"].is_not_null().to_list()  # a row without an id is never a duplicate
        fresh = set(found)
        if len(fresh) == len(found) and self.seen.isdisjoint(fresh) and all(own):
            self.seen |= fresh
            return frame
        keep = []
        for h, has_id in zip(found, own):
            keep.append(not has_id or h not in self.seen)
            if has_id:
                self.seen.add(h)
        self.n_duplicates += keep.count(False)
        return frame.filter(pl.Series(keep))

    def _add_turns(self, frame: pl.DataFrame) -> None:
        turns = frame.filter(pl.col("turn").is_not_null())
        if not turns.height:
            return
        here = pl.col("drift").fill_null(False) & (pl.col("drift_turn") == pl.col("turn"))
        counts = turns.group_by("turn").agg(
            pl.len().alias("n_trajectories"), here.sum().alias("n_drift"),
            *[(here & (pl.col("drift_cause") == c)).fill_null(False).sum()
              .alias(f"n_drift_{c}") for c in DRIFT_CAUSES])
        for row in counts.iter_rows(named=True):
            for name, value in row.items():
                if name != "turn":
                    self.turns[row["turn"], name] += int(value)

    def drift_by_turn(self) -> pl.DataFrame:
        """Per sampled turn index: the trajectories that reach it, how many first drift there
        (the drift's ``drift_turn``), by cause, and that share of the trajectories reaching the
        turn (Wilson interval). Empty when the rows hold no trajectory."""
        schema = {"turn": pl.Int64, "n_trajectories": pl.Int64, "n_drift": pl.Int64,
                  **{f"n_drift_{c}": pl.Int64 for c in DRIFT_CAUSES},
                  "fraction_drift": pl.Float64, "fraction_drift_lo": pl.Float64,
                  "fraction_drift_hi": pl.Float64}
        rows = []
        for turn in sorted({t for t, _name in self.turns}):
            n, k = self.turns[turn, "n_trajectories"], self.turns[turn, "n_drift"]
            lo, hi = stats.wilson(k, n)
            rows.append({"turn": turn, "n_trajectories": n, "n_drift": k,
                         **{f"n_drift_{c}": self.turns[turn, f"n_drift_{c}"]
                            for c in DRIFT_CAUSES},
                         "fraction_drift": k / n, "fraction_drift_lo": lo,
                         "fraction_drift_hi": hi})
        return pl.DataFrame(rows, schema=schema)

    def keys_used(self) -> list[str]:
        """The group keys: ``keys``, else model, then each arm key (`keys.ARMS`) where the rows
        state several values, then temperature: arms sampled differently are never pooled."""
        if self.keys is not None:
            return self.keys
        finest = self.finest or {}
        varying = [k for j, k in enumerate(FINEST) if k in ARMS
                   and len({key[j] for key in finest if key[j] is not None}) > 1]
        return ["model", *varying, "temperature"]

    def table(self) -> tuple[list[str], dict[tuple, GroupSums]]:
        """The groups' keys and their sums."""
        keys = self.keys_used()
        if self.keys is not None:
            return keys, self.explicit
        return keys, _project(self.finest or {}, FINEST, keys)

    def pooled_table(self) -> tuple[list[str], dict[tuple, GroupSums]]:
        """Per arm (the arm keys of the groups) and temperature, every model together."""
        arms = [k for k in self.keys_used() if k in ARMS]
        return [*arms, "temperature"], _project(self.pooled, (*ARMS, "temperature"),
                                                [*arms, "temperature"])

    def groups(self) -> pl.DataFrame:
        """One row per group (keys in order, sorted), the group's figures as columns."""
        keys, table = self.table()
        rows = []
        for key in sorted(table, key=group_order):
            row = dict(zip(keys, key))
            row.update(table[key].result())
            rows.append(row)
        return _groups_frame(rows)

    def comparison(self, baseline: str = "off") -> pl.DataFrame:
        """`canonical_comparison` of the rows added: a mode is compared with free generation of
        the same model, truncation and temperature (a run)."""
        schema = _comparison_schema()
        finest = self.finest or {}
        mode_at = FINEST.index("canonical")
        runs: dict[tuple, dict] = {}
        for key, sums in finest.items():
            sums.flush()
            run = key[:mode_at] + key[mode_at + 1:]  # model, top_k, top_p, min_p, temperature
            runs.setdefault(run, {})[key[mode_at]] = sums
        if len({key[mode_at] for key in finest}) < 2:
            return pl.DataFrame(schema=schema)
        rows = []
        for run in sorted(runs, key=group_order):
            modes = runs[run]
            if baseline not in modes or len(modes) < 2:
                continue
            base = modes[baseline]
            for mode in [baseline, *sorted(set(modes) - {baseline})]:
                rows.append(self._comparison_row(run, mode, modes[mode], base, baseline))
        return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)

    def _comparison_row(self, run: tuple, mode: str, g: GroupSums, base: GroupSums,
                        baseline: str) -> dict:
        n, k = g.n, int(g.sums["n_noncanonical"])
        row = {**dict(zip([k for k in FINEST if k != "canonical"], run)), "canonical": mode,
               "n": n, "n_noncanonical": k, "fraction_noncanonical": k / n}
        row["fraction_noncanonical_lo"], row["fraction_noncanonical_hi"] = stats.wilson(k, n)
        _n, *row_mean = g.mean("compression")
        row["mean_compression"], row["mean_compression_lo"], row["mean_compression_hi"] = row_mean
        row.update(g.quality())
        if mode != baseline:
            row["paired_prompts"] = len(set(base.prompts) & set(g.prompts))
            for j, name in enumerate(PAIRED):
                row.update(_paired(g.prompts, base.prompts, j, name, self.n_resamples, self.seed))
        row["few_samples"] = n < FEW_SAMPLES
        return row


def _project(table: dict[tuple, GroupSums], names: tuple, keys: list[str]
             ) -> dict[tuple, GroupSums]:
    """``table`` (keyed by ``names``) keyed by ``keys`` alone, the groups that then share a key
    merged (in key order, so the figures do not depend on the order rows came in)."""
    index = [names.index(k) for k in keys]
    parts: dict[tuple, list[GroupSums]] = {}
    for key in sorted(table, key=group_order):
        parts.setdefault(tuple(key[i] for i in index), []).append(table[key])
    return {key: p[0] if len(p) == 1 else GroupSums.merged(p) for key, p in parts.items()}


def _paired(mode: dict, base: dict, j: int, name: str, n_resamples: int, seed: int) -> dict:
    """Mean over shared prompts of (mode − base) for proxy ``j``, bootstrap CI over prompts.

    Samples are paired by prompt_index (the same prompt and row seed in every mode); a prompt
    with several samples in a mode contributes the mean of them. ``diff_<name>_n`` counts the
    prompts paired."""
    shared = sorted(p for p in set(mode) & set(base) if mode[p][2 * j + 1] and base[p][2 * j + 1])
    d = [mode[p][2 * j] / mode[p][2 * j + 1] - base[p][2 * j] / base[p][2 * j + 1]
         for p in shared]
    out: dict = {f"diff_{name}_n": len(d)}
    if d:
        m, lo, hi = stats.mean_ci(d, n_resamples, seed)
        out.update({f"diff_{name}": m, f"diff_{name}_lo": lo, f"diff_{name}_hi": hi})
    else:
        out.update(dict.fromkeys((f"diff_{name}", f"diff_{name}_lo", f"diff_{name}_hi")))
    return out


def _groups_frame(rows: list[dict]) -> pl.DataFrame:
    out = pl.DataFrame(rows, infer_schema_length=None)
    # a proxy no group has (no NLL in any record) would otherwise be a column of type Null
    casts = [pl.col(c).cast(pl.Float64) for name in QUALITY_MEANS
             for c in (name, name + "_lo", name + "_hi") if c in out.columns]
    if "n_chars" in out.columns:
        casts.append(pl.col("n_chars").cast(pl.Int64))
    return out.with_columns(casts)


def _chunks(samples: pl.DataFrame, size: int = 8192) -> Iterable[pl.DataFrame]:
    for start in range(0, samples.height, size):
        yield samples.slice(start, size)


def summarise(samples: pl.DataFrame, keys: list[str], window: int,
              n_resamples: int = 2000, seed: int = 0) -> pl.DataFrame:
    """One row per group (keys in order, sorted), the group's figures as columns."""
    summariser = Summariser(keys, window, n_resamples, seed, comparison=False, curves=False)
    for chunk in _chunks(samples):
        summariser.add(chunk)
    return summariser.groups()


def _comparison_schema() -> dict:
    schema = {**{k: SAMPLE_SCHEMA[k] for k in ("model", *SAMPLING_KEYS, "temperature",
                                               "canonical")},
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


def canonical_comparison(samples: pl.DataFrame, n_resamples: int = 2000, seed: int = 0,
                         baseline: str = "off") -> pl.DataFrame:
    """Canonical modes vs free generation, per (model, truncation, temperature) run in
    ``baseline`` and at least one other mode: one row per mode, baseline first, then the others
    sorted (a mode is only ever compared with free generation sampled the same way).

    Each row: n, non-canonical share (Wilson CI), mean compression and the text-quality proxies
    (bootstrap CIs), and for the non-baseline modes the paired difference vs the baseline of
    nll_token and chars_per_token over shared prompts (`_paired`). Empty (with its columns) when
    the samples hold one canonical mode, or no (model, temperature) has both.
    """
    if "canonical" not in samples.columns or samples["canonical"].n_unique() < 2:
        return pl.DataFrame(schema=_comparison_schema())
    summariser = Summariser(None, 64, n_resamples, seed)
    for chunk in _chunks(samples):
        summariser.add(chunk)
    return summariser.comparison(baseline)


def sigmoid_fits(groups: pl.DataFrame, keys: list[str] | None = None) -> pl.DataFrame:
    """Per series (the group ``keys`` but temperature; default model and canonical mode):
    logistic fits vs temperature of the fraction compressed (the study's,
    ``midpoint``/``slope``/``rmse``) and of the fraction non-canonical (``nc_`` columns), which
    stays a sigmoid where lengthening re-encodings make the former fall again.
    ``reason``/``nc_reason`` say why a fit is missing (`stats.sigmoid_fit`); null for a fit.
    The series' keys come first (``model`` and ``canonical`` always, null where not a key)."""
    if keys is None:
        keys = [k for k in ("model", "canonical") if k in groups.columns]
    by = [k for k in series_keys(keys) if k in groups.columns]
    schema = {"model": pl.String, "canonical": pl.String,
              **{k: groups.schema[k] for k in by if k not in ("model", "canonical")},
              "n_temperatures": pl.Int64,
              "midpoint": pl.Float64, "slope": pl.Float64, "rmse": pl.Float64,
              "converged": pl.Boolean, "nc_midpoint": pl.Float64, "nc_slope": pl.Float64,
              "nc_rmse": pl.Float64, "nc_converged": pl.Boolean,
              "reason": pl.String, "nc_reason": pl.String}
    if "temperature" not in groups.columns or not by:
        return pl.DataFrame(schema=schema)
    rows = []
    for key, df in groups.filter(pl.col("temperature").is_not_null()).group_by(
            by, maintain_order=True):
        row = {**dict(zip(by, key)), "n_temperatures": df.height}
        for prefix, count in (("", "n_compressed"), ("nc_", "n_noncanonical")):
            fit = stats.sigmoid_fit(df["temperature"].to_numpy(), df[count].to_numpy(),
                                    df["n"].to_numpy())
            for name in ("midpoint", "slope", "rmse", "converged", "reason"):
                row[prefix + name] = fit[name]
        rows.append(row)
    return pl.DataFrame(rows, schema=schema)
