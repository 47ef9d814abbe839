"""Group summaries from a stream of sample rows, in memory that does not grow with the input.

A group's figures are sums over its samples (counts, totals, per-window sums, histograms of the
integer positions whose medians are reported) plus, for every interval, the same sums under the
weights of the Poisson bootstrap (`stats.PoissonBootstrap`): each sample enters each resample
with a Poisson(1) weight drawn as it streams past, so a resample is a running sum and the group
never needs its samples again. `GroupSums.add` takes one batch of a group's rows, `result` gives
the row of `groups.summarise`. Only ``--window-method study`` keeps a list per sample: the script
cut each group's window lists to the shortest one, known only at the end.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl

from tmcli.aggregate import stats
from tmcli.aggregate.divergence import AFTER_SPAN, AT_END, divergence_summary
from tmcli.measure.causes import CAUSES, column

DRIFT_CAUSES = ("template", "tokenization")  # tmcli.measure.trajectory.CAUSES
FEW_SAMPLES = 30  # below this a group's figures get a visible warning
KINDS = ("merged", "lengthened", "resegmented", "invalid_utf8", "unknown_id")
QUALITY_MEANS = ("chars_per_token", "distinct_2", "repetition_4", "nll_token", "nll_char")
WINDOW_RESAMPLES = 1000  # at most, for the per-window figures and the centres
DIVERGENCE_COLUMNS = ["div_positions", *(f"div_{m}" for m in AFTER_SPAN),
                      *(f"div_end_{m}" for m in AT_END)]
BUFFER = 256  # a group's rows held before they are summed (`GroupSums.add`)
# Columns of a group's resampled scalar sums: weight, then (count, total) of each mean
_MEANS = ("compression", *QUALITY_MEANS)


def _median(hist: Counter) -> float:
    """The median of integer values given as value -> count (the lower middle value for an
    even count's midpoint average, as polars' median)."""
    total = sum(hist.values())
    if not total:
        return math.nan
    values = sorted(hist)
    cum = np.cumsum([hist[v] for v in values])
    lo = values[int(np.searchsorted(cum, (total - 1) // 2 + 1))]
    hi = values[int(np.searchsorted(cum, total // 2 + 1))]
    return (lo + hi) / 2


class GroupSums:
    """The running sums of one group (see the module doc); ``key`` seeds its resamples. With
    ``windows_only`` it sums only what `windows` reads (the pooled window profile)."""

    def __init__(self, key: tuple, window: int, n_resamples: int, seed: int = 0, *,
                 windows_only: bool = False):
        self.window, self.windows_only, self.seed = window, windows_only, seed
        self.n_win = min(n_resamples, WINDOW_RESAMPLES)
        if windows_only:
            n_resamples = self.n_win
        self.boot = stats.PoissonBootstrap(n_resamples, key, seed)
        self.n = 0
        self.sums: Counter[str] = Counter()  # counts
        self.totals: dict[str, float] = {}  # sums of the means' values
        self.kinds: Counter = Counter()
        self.causes: Counter = Counter()
        self.lengths: Counter = Counter()  # n_tokens -> samples (the median position)
        self.first: Counter = Counter()  # first divergence -> samples
        self.censored: Counter = Counter()  # last position of those that never diverge
        self.lo = dict.fromkeys(_MEANS, math.inf)  # to tell a constant column
        self.hi = dict.fromkeys(_MEANS, -math.inf)
        self.n_chars: int | None = None
        self.win = np.zeros((5, 1))  # delta, tokens, offsets, non-canonical, samples reaching
        # resampled: total weight, non-canonical tokens, tokens, then (count, total) per mean
        self.n_resamples = n_resamples
        self.resampled = np.zeros((0, 0))  # allocated with the first rows summed
        self.resampled_win = np.zeros((self.n_win, 4, 1))
        self.held: list[pl.DataFrame] = []  # rows not summed yet (`BUFFER`)
        self.n_held = 0
        self.study: dict = {}  # model -> per-sample study window lists
        self.study_scores: list = []
        self.prompts: dict = {}  # prompt_index -> [sum, count] per paired proxy
        self.divergence: list[pl.DataFrame] = []  # scored samples' divergence figures

    def add(self, df: pl.DataFrame) -> None:
        """One batch of the group's rows, in input order. Rows are held until the group has
        `BUFFER` of them: a small group (one of thousands, grouped by prompt) costs its rows, not
        the resampled sums; held or not, each row gets the same weights, in the same order."""
        if df.height:
            self.held.append(df)
            self.n_held += df.height
        if self.n_held >= BUFFER:
            self.flush()

    def flush(self) -> None:
        """Sum the rows held (before any figure is read)."""
        if not self.held:
            return
        df = self.held[0] if len(self.held) == 1 else pl.concat(self.held, how="vertical_relaxed")
        self.held, self.n_held = [], 0
        if not self.resampled.size:  # a windows-only group reads the total weight alone
            width = 1 if self.windows_only else 3 + 2 * len(_MEANS)
            self.resampled = np.zeros((self.n_resamples, width))
        if self.windows_only:
            self.n += df.height
            self.lengths.update(df["n_tokens"].to_list())
            weights = self.boot.weights(df.height)
            self.resampled[:, 0] += weights.sum(axis=0)
            self._add_windows(df, weights)
            return
        self._add(df)

    def _add(self, df: pl.DataFrame) -> None:
        m = df.height
        self.n += m
        n_tokens = df["n_tokens"].to_numpy().astype(float)
        nc = df["noncanonical_tokens"].to_numpy().astype(float)
        sums = self.sums
        sums["n_tokens"] += int(n_tokens.sum())
        sums["noncanonical_tokens"] += int(nc.sum())
        sums["n_compressed"] += int((df["compression"].to_numpy() > 0).sum())
        sums["n_noncanonical"] += int(df["noncanonical"].sum())
        sums["n_boundary_merges"] += int(df["boundary_merge"].sum())
        sums["n_not_byte_exact"] += int((~df["byte_exact"]).sum())
        for name in ("invalid_bytes", "cut_bytes", "unknown_ids", "normalized"):
            if name in df.columns:
                sums[name] += int(df[name].sum())
        self.kinds.update(df["kind"].to_list())
        if "causes" in df.columns:
            self.causes.update(c for cs in df["causes"].to_list() if cs for c in cs)
        self.lengths.update(df["n_tokens"].to_list())
        first = df["first_divergence"]
        self.first.update(first.drop_nulls().to_list())
        self.censored.update((df["n_tokens"].filter(first.is_null()) - 1).to_list())
        if "turn" in df.columns:
            self._add_drift(df)
        if "div_positions" in df.columns and df["div_positions"].null_count() < m:
            # score --divergence's per-sample figures: kept (a few floats per scored sample:
            # scoring is a forward pass each, never the bulk of an input)
            self.divergence.append(df.filter(pl.col("div_positions").is_not_null())
                                   .select(DIVERGENCE_COLUMNS))
        if "n_chars" in df.columns and df["n_chars"].null_count() < m:
            self.n_chars = (self.n_chars or 0) + int(df["n_chars"].sum())
        cols, targets = [nc, n_tokens], [1, 2]  # resampled column 0 is the total weight
        for j, name in enumerate(_MEANS):
            x = df[name].cast(pl.Float64).to_numpy() if name in df.columns else np.full(m, np.nan)
            ok = ~np.isnan(x)
            if not ok.any():
                continue
            self.lo[name] = min(self.lo[name], float(x[ok].min()))
            self.hi[name] = max(self.hi[name], float(x[ok].max()))
            sums["count:" + name] += int(ok.sum())
            self.totals[name] = self.totals.get(name, 0.0) + float(x[ok].sum())
            if not ok.all():  # else its count is the total weight
                cols.append(ok.astype(float))
                targets.append(3 + 2 * j)
            cols.append(np.where(ok, x, 0.0))
            targets.append(4 + 2 * j)
        weights = self.boot.weights(m)
        total = weights.sum(axis=0)
        self.resampled[:, 0] += total
        self.resampled[:, targets] += weights.T @ np.column_stack(cols)
        for j in range(len(_MEANS)):
            if (3 + 2 * j) not in targets and (4 + 2 * j) in targets:
                self.resampled[:, 3 + 2 * j] += total
        self._add_windows(df, weights[:, : self.n_win])
        if "study_window_compression" in df.columns:
            self._add_study(df)

    def _add_windows(self, df: pl.DataFrame, weights: np.ndarray) -> None:
        """Window sums, and their resampled sums: the saved and non-canonical tokens of the
        samples that have any, the tokens (and offsets) once per distinct row of them (the
        completions of a run mostly share one length)."""
        delta, tokens = stats.matrix(df["window_delta"]), stats.matrix(df["window_tokens"])
        nc = stats.matrix(df["window_noncanonical"])
        width = max(delta.shape[1], tokens.shape[1], nc.shape[1], self.win.shape[1])
        delta, tokens, nc = (stats.grow(a, width) for a in (delta, tokens, nc))
        half = tokens * (tokens - 1) / 2
        self.win = stats.grow(self.win, width)
        for k, a in enumerate((delta, tokens, half, nc)):
            self.win[k] += a.sum(axis=0)
        self.win[4] += (tokens > 0).sum(axis=0)
        r = self.resampled_win = stats.grow(self.resampled_win, width)
        rows = np.flatnonzero(delta.any(axis=1) | nc.any(axis=1))
        if len(rows):
            both = weights[rows].T @ np.hstack([delta[rows], nc[rows]])
            r[:, 0] += both[:, :width]
            r[:, 3] += both[:, width:]
        shapes, which = np.unique(tokens, axis=0, return_inverse=True)
        if len(shapes) * 4 <= len(tokens):
            member = which.ravel() == np.arange(len(shapes))[:, None]  # (shapes × rows)
            both = (member.astype(float) @ weights).T @ np.hstack([shapes, shapes * (shapes - 1) / 2])
        else:
            both = weights.T @ np.hstack([tokens, half])
        r[:, 1] += both[:, :width]
        r[:, 2] += both[:, width:]

    def _add_drift(self, df: pl.DataFrame) -> None:
        """Trajectories (counted once each, on the row of their first sampled turn), those that
        drift, and those by cause."""
        first = df.filter(pl.col("turn") == 0)
        if not first.height:
            return
        drift = first["drift"].fill_null(False)
        self.sums["n_trajectories"] += first.height
        self.sums["n_drift"] += int(drift.sum())
        for cause in DRIFT_CAUSES:
            self.sums["n_drift_" + cause] += int((drift & (first["drift_cause"] == cause))
                                                 .fill_null(False).sum())

    def _add_study(self, df: pl.DataFrame) -> None:
        for model, windows, whole in zip(df["model"].to_list(),
                                         df["study_window_compression"].to_list(),
                                         df["study_compression"].to_list()):
            if windows is not None:
                self.study.setdefault(model, []).append(windows)
                self.study_scores.append(whole)

    def add_prompts(self, df: pl.DataFrame, names: tuple[str, ...]) -> None:
        """Per prompt_index sums of ``names`` (the canonical comparison's paired figures)."""
        cols = [df["prompt_index"].to_list()] + [df[n].to_list() for n in names]
        for index, *values in zip(*cols):
            if index is None:
                continue
            entry = self.prompts.setdefault(index, [0.0, 0] * len(names))
            for k, v in enumerate(values):
                if v is not None and v == v:
                    entry[2 * k] += v
                    entry[2 * k + 1] += 1

    @classmethod
    def merged(cls, parts: list[GroupSums]) -> GroupSums:
        """One group's sums from those of disjoint parts of it (sums of disjoint streams add,
        resampled ones too: each sample kept its own Poisson weights). For the default groups,
        where a setting that only some records state (the others null) splits nothing."""
        for part in parts:
            part.flush()
        first = parts[0]
        out = cls((), first.window, first.n_resamples, windows_only=first.windows_only)
        out.n_resamples, out.n_win = first.n_resamples, first.n_win
        width = max(p.win.shape[1] for p in parts)
        out.win = np.zeros((5, width))
        out.resampled_win = np.zeros((first.n_win, 4, width))
        out.resampled = np.zeros_like(first.resampled) if first.resampled.size else out.resampled
        for p in parts:
            out.n += p.n
            for name in ("sums", "kinds", "causes", "lengths", "first", "censored"):
                getattr(out, name).update(getattr(p, name))
            for name, value in p.totals.items():
                out.totals[name] = out.totals.get(name, 0.0) + value
            for name in _MEANS:
                out.lo[name] = min(out.lo[name], p.lo[name])
                out.hi[name] = max(out.hi[name], p.hi[name])
            if p.n_chars is not None:
                out.n_chars = (out.n_chars or 0) + p.n_chars
            out.win += stats.grow(p.win, width)
            out.resampled_win += stats.grow(p.resampled_win, width)
            if p.resampled.size:
                if not out.resampled.size:
                    out.resampled = np.zeros_like(p.resampled)
                out.resampled += p.resampled
            for model, lists in p.study.items():
                out.study.setdefault(model, []).extend(lists)
            out.study_scores.extend(p.study_scores)
            out.divergence.extend(p.divergence)
            for index, entry in p.prompts.items():
                mine = out.prompts.setdefault(index, [0.0, 0] * (len(entry) // 2))
                for k, v in enumerate(entry):
                    mine[k] += v
        return out

    # -- the group's figures ------------------------------------------------------------------
    def mean(self, name: str) -> tuple[int, float, float, float]:
        """Samples with a value of ``name``, and its mean with the interval."""
        self.flush()
        n = int(self.sums["count:" + name])
        if not n:
            return 0, math.nan, math.nan, math.nan
        m = self.totals[name] / n
        if n == 1 or self.lo[name] == self.hi[name]:
            return n, m, m, m
        k = 3 + 2 * _MEANS.index(name)
        count, total = self.resampled[:, k], self.resampled[:, k + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            lo, hi = self.boot.interval(total / count, count > 0)
        return n, m, lo, hi

    def quality(self) -> dict:
        """Mean and interval of each text-quality proxy over the samples that have it
        (``<metric>_n``; null when none has it) and the group's total ``n_chars``."""
        out: dict = {"n_chars": self.n_chars}
        for name in QUALITY_MEANS:
            n, m, lo, hi = self.mean(name)
            out[name + "_n"] = n
            out[name], out[name + "_lo"], out[name + "_hi"] = (m, lo, hi) if n else (None,) * 3
        return out

    def _token_rate(self) -> dict:
        nc, total = self.sums["noncanonical_tokens"], self.sums["n_tokens"]
        if total <= 0:
            rate = lo = hi = math.nan
        else:
            rate = lo = hi = nc / total
            if self.n > 1 and nc > 0:
                r = self.resampled
                lo, hi = stats.ratio_interval(r[:, 1], r[:, 2], r[:, 0] > 0)
        return {"token_rate": rate, "token_rate_lo": lo, "token_rate_hi": hi}

    def survival(self) -> tuple:
        """`stats.kaplan_meier` of the first divergences: (x, s, lo, hi, at_risk)."""
        self.flush()
        return stats.kaplan_meier_counts(dict(self.first), dict(self.censored))

    def drift(self) -> dict:
        """Trajectories of the group, the share that drift (Wilson interval), and the counts by
        cause; empty when the group holds no trajectory."""
        self.flush()
        n, k = int(self.sums["n_trajectories"]), int(self.sums["n_drift"])
        if not n:
            return {}
        lo, hi = stats.wilson(k, n)
        out = {"n_trajectories": n, "n_drift": k, "fraction_drift": k / n,
               "fraction_drift_lo": lo, "fraction_drift_hi": hi}
        out.update({f"n_drift_{c}": int(self.sums["n_drift_" + c]) for c in DRIFT_CAUSES})
        return out

    def windows(self) -> dict:
        """The window figures alone (`result` has them too), and the longest completion."""
        self.flush()
        return {**self._windows(), "max_tokens": max(self.lengths, default=0)}

    def _windows(self) -> dict:
        win, r = self.win, self.resampled_win
        valid = self.resampled[: self.n_win, 0] > 0
        wb = stats.window_figures(win[[0, 1, 2]], r[:, [0, 1, 2]], valid, self.window, self.n)
        nc = stats.window_figures(win[[3, 1, 2]], r[:, [3, 1, 2]], valid, self.window, self.n)
        return {
            "window_mean": wb["window_mean"].tolist(), "window_lo": wb["window_lo"].tolist(),
            "window_hi": wb["window_hi"].tolist(), "window_n": win[4].astype(int).tolist(),
            "window_centre": wb["window_centre"].tolist(),  # where the windows' tokens are
            "centre_of_gravity": wb["cog"], "centre_of_gravity_lo": wb["cog_lo"],
            "centre_of_gravity_hi": wb["cog_hi"],
            "median_position": stats.median_position_of(self.lengths),
            # where the non-canonical tokens sit: weighted by the tokens in differing spans
            # instead of the net saving, so it stays defined when lengthening cancels merging
            "window_noncanonical_rate": nc["window_mean"].tolist(),
            "centre_noncanonical": nc["cog"], "centre_noncanonical_lo": nc["cog_lo"],
            "centre_noncanonical_hi": nc["cog_hi"],
        }

    def _study(self) -> dict:
        from tmcli.aggregate.study_script import study_summary

        out = study_summary(list(self.study.values()), self.n_win, 0)
        sc = np.asarray(self.study_scores, dtype=float)
        out["study_mean_compression"] = float(sc.mean())
        k = int((sc > 0).sum())
        out["study_n_compressed"] = k
        out["study_fraction_compressed"] = k / len(sc)
        out["study_fraction_compressed_lo"], out["study_fraction_compressed_hi"] = \
            stats.wilson(k, len(sc))
        return out

    def result(self) -> dict:
        """Every figure of the group, each with its interval and the sample count beside it."""
        self.flush()
        n = self.n
        _k, m, lo, hi = self.mean("compression")
        out: dict = {"n": n, "n_tokens": int(self.sums["n_tokens"]), "mean_compression": m,
                     "mean_compression_lo": lo, "mean_compression_hi": hi}

        def frac(name: str, k: int):
            out[name] = k / n if n else math.nan
            out[name + "_lo"], out[name + "_hi"] = stats.wilson(k, n)
            out["n_" + name.removeprefix("fraction_")] = k

        frac("fraction_compressed", int(self.sums["n_compressed"]))
        frac("fraction_noncanonical", int(self.sums["n_noncanonical"]))
        for kind in KINDS:
            frac(f"fraction_{kind}", int(self.kinds.get(kind, 0)))
        out.update(self._token_rate())
        out.update(self._windows())
        if self.study:
            out.update(self._study())
        out["median_first_divergence"] = _median(self.first)
        for name in ("n_boundary_merges", "n_not_byte_exact", "invalid_bytes", "cut_bytes",
                     "unknown_ids"):
            out[name] = int(self.sums[name])
        out["n_normalized"] = int(self.sums["normalized"])
        out.update(self.quality())
        out.update({column(c): int(self.causes.get(c, 0)) for c in CAUSES})
        out.update(self.drift())
        if self.divergence:  # score --divergence, when present
            out.update(divergence_summary(pl.concat(self.divergence), self.n_resamples,
                                          self.seed))
        out["few_samples"] = n < FEW_SAMPLES
        return out
