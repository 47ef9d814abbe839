"""Statistics: confidence intervals, centre of gravity and the sigmoid fit.

The study's main weakness was noise, so every figure here comes with an interval: Wilson for
fractions, the percentile bootstrap (resampling samples, not tokens: tokens of one completion are
not independent) for means, per-token rates and the centre of gravity, in its streaming form
(`PoissonBootstrap`), so that intervals need no sample kept.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

Z95 = 1.959963984540054
CHUNK = 4096  # samples weighted at once by the array functions below (bounded memory)


def matrix(lists: pl.Series) -> np.ndarray:
    """(samples × windows) from a list column, short and missing lists padded with 0, built from
    the column's flat values (no Python object per value)."""
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


def grow(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` widened (last axis) to ``width`` with zeros."""
    if a.shape[-1] >= width:
        return a
    pad = [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])]
    return np.pad(a, pad)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (NaNs when n == 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


# Poisson(1)'s distribution function F(0..19); 1 - F(19) < 2**-53
_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])


class PoissonBootstrap:
    """The Poisson bootstrap: resamples of a stream of samples, built as the samples pass.

    The classic bootstrap draws n samples with replacement, so a sample's count in a resample is
    Binomial(n, 1/n), which needs n in advance and all samples at once. Its limit, Poisson(1),
    does not: each sample gets one Poisson(1) weight per resample as it streams past, and a
    resample's statistic is a ratio of weighted sums kept as running totals (Hanley & MacGibbon
    2006; Chamandy et al. 2012, "Estimating uncertainty for massive data streams"). Memory is
    resamples × statistics, whatever the number of samples, and sums of disjoint streams add.
    A resample that drew no sample at all (chance e^-n) has no statistic and is left out.
    ``key`` (a group's key values) and ``seed`` seed the weights: the same samples in the same
    order give the same interval.
    """

    def __init__(self, n_resamples: int, key: tuple = (), seed: int = 0):
        import hashlib

        self.n_resamples = int(n_resamples)
        digest = hashlib.blake2b(repr(tuple(key)).encode(), digest_size=8).digest()
        self.rng = np.random.default_rng([seed, int.from_bytes(digest, "little")])

    def weights(self, m: int) -> np.ndarray:
        """The next ``m`` samples' weights, (m × resamples): Poisson(1) by inversion of its
        distribution function F on uniform u (the weight is the number of k with F(k) <= u),
        a few vectorised comparisons per weight, the rare tail (u >= F(7), p = 1e-5) looked up."""
        out = np.empty((m, self.n_resamples))
        for start in range(0, m, 64):  # in blocks that stay in the cache
            u = self.rng.random((min(64, m - start), self.n_resamples))
            w = out[start : start + len(u)]
            np.greater_equal(u, _POISSON_CDF[0], out=w, casting="unsafe")
            for level in _POISSON_CDF[1:8]:
                w += u >= level
            tail = u >= _POISSON_CDF[7]
            if tail.any():
                w[tail] = np.searchsorted(_POISSON_CDF, u[tail], side="right")
        return out

    @staticmethod
    def interval(values: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
        """The 95% percentile interval of the resampled ``values`` where ``valid``."""
        v = values[valid]
        v = v[~np.isnan(v)]
        if not len(v):
            return (math.nan, math.nan)
        return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))


def _weighted_sums(columns: list[np.ndarray], n_resamples: int, seed: int) -> np.ndarray:
    """(resamples × columns) Poisson-weighted sums of the columns' rows, chunk by chunk; the
    first column of the result is the total weight."""
    boot = PoissonBootstrap(n_resamples, (), seed)
    data = np.column_stack([np.ones(len(columns[0])), *columns])
    out = np.zeros((n_resamples, data.shape[1]))
    for start in range(0, len(data), CHUNK):
        rows = data[start : start + CHUNK]
        out += boot.weights(len(rows)).T @ rows
    return out


def mean_ci(values, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean with a 95% percentile interval (`PoissonBootstrap`)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return (m, m, m)
    sums = _weighted_sums([x], n_resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = PoissonBootstrap.interval(sums[:, 1] / sums[:, 0], sums[:, 0] > 0)
    return (m, lo, hi)


def ratio_ci(num, den, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Σnum/Σden (a pooled per-token rate) with a bootstrap interval over samples."""
    a = np.asarray(num, dtype=float)
    b = np.asarray(den, dtype=float)
    if b.sum() <= 0:
        return (math.nan, math.nan, math.nan)
    r = float(a.sum() / b.sum())
    if len(a) == 1 or np.all(a == 0):
        return (r, r, r)
    sums = _weighted_sums([a, b], n_resamples, seed)
    return (r, *ratio_interval(sums[:, 1], sums[:, 2], sums[:, 0] > 0))


def ratio_interval(num: np.ndarray, den: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """The interval of resampled ratios of sums Σnum/Σden."""
    return PoissonBootstrap.interval(num / np.maximum(den, 1e-12), valid)


def window_centres(tokens: np.ndarray, window: int) -> np.ndarray:
    """Where each window's tokens are: the mean position of the tokens it holds, over the rows.

    tokens: (samples × windows) tokens per window. Window w of a sample holds positions
    w·window … w·window + t − 1, so a short last window sits at the centre of its own tokens,
    never past the last one (48 tokens in a 64-token window: 23.5, not 31.5). A window no sample
    reaches keeps its nominal centre (it carries no weight anyway).
    """
    t = np.asarray(tokens, dtype=float)
    return _centres(t.sum(axis=0), (t * (t - 1) / 2).sum(axis=0), window)


def _centres(total: np.ndarray, offset: np.ndarray, window: int) -> np.ndarray:
    """Window centres from the tokens each holds (``total``) and the sum of their offsets in
    it (``offset``), along the last axis; a window with no tokens at its nominal centre."""
    starts: np.ndarray = np.arange(total.shape[-1]) * window
    return np.where(total > 0, starts + offset / np.maximum(total, 1), starts + (window - 1) / 2)


def _weighted_centre(m: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Mean of ``centres`` weighted by the positive part of ``m`` (last axis: windows); NaN where
    the windows have no net positive total. A window whose re-encoding is longer on balance has
    no compression to place, and a negative weight could push the "mean" outside the tokens."""
    total = m.sum(axis=-1)
    w = np.clip(m, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * centres).sum(axis=-1) / w.sum(axis=-1)
    return np.where(total > 0, out, np.nan)


def centre_of_gravity(delta: np.ndarray, tokens: np.ndarray, window: int) -> float:
    """tmcli's centre of gravity: the compression-weighted mean token position of the group's
    window means (the study's own per-sample version, in window units, is `tmcli.aggregate.study_script`).

    delta, tokens: (samples × windows) saved tokens and tokens per window. The window mean is the
    ratio of sums, so short last windows are weighted by what they hold, and each window is placed
    where its tokens are (`window_centres`). NaN when the group has no net compression (the
    weights would not be a distribution).
    """
    m = delta.sum(axis=0) / np.maximum(tokens.sum(axis=0), 1)
    return float(_weighted_centre(m, window_centres(tokens, window)))


def window_bootstrap(delta: np.ndarray, tokens: np.ndarray, window: int,
                     n_resamples: int = 1000, seed: int = 0) -> dict:
    """Per-window mean compression and the centre of gravity, with bootstrap intervals.

    delta, tokens: (samples × windows). Resamples whole samples (rows), each resample placing its
    windows where its own tokens are (`window_figures`)."""
    delta = np.asarray(delta, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    half = tokens * (tokens - 1) / 2
    sums = np.stack([delta.sum(axis=0), tokens.sum(axis=0), half.sum(axis=0)])
    boot = PoissonBootstrap(n_resamples, (), seed)
    resampled = np.zeros((n_resamples, 3, delta.shape[1]))
    weight = np.zeros(n_resamples)
    for start in range(0, len(delta), CHUNK):
        w = boot.weights(len(delta[start : start + CHUNK]))
        weight += w.sum(axis=0)
        stack = np.stack([delta[start : start + CHUNK], tokens[start : start + CHUNK],
                          half[start : start + CHUNK]])
        resampled += np.einsum("mb,kmw->bkw", w, stack, optimize=True)
    return window_figures(sums, resampled, weight > 0, window, len(delta))


def window_figures(sums: np.ndarray, resampled: np.ndarray, valid: np.ndarray, window: int,
                   n: int) -> dict:
    """Window means, their centres and the centre of gravity, with intervals, from sums.

    sums: (3 × windows) totals over the samples of the weighted value (saved tokens, or
    non-canonical tokens), the tokens, and the tokens' offsets in their window; resampled:
    (resamples × 3 × windows), the same under each resample's weights; valid: the resamples that
    drew a sample. The window mean is the ratio of sums, so short last windows are weighted by
    what they hold. Where most resamples have no net compression there is no honest interval
    for the centre."""
    nw = sums.shape[1]
    means = sums[0] / np.maximum(sums[1], 1)
    centres = _centres(sums[1], sums[2], window)
    point = float(_weighted_centre(means, centres))  # = centre_of_gravity(delta, tokens, window)
    out = {"window_mean": means, "window_lo": np.full(nw, np.nan),
           "window_hi": np.full(nw, np.nan), "window_centre": centres,
           "cog": point, "cog_lo": math.nan, "cog_hi": math.nan}
    if n < 2 or not valid.any():
        return out
    r = resampled[valid]
    m = r[:, 0] / np.maximum(r[:, 1], 1)
    out["window_lo"] = np.percentile(m, 2.5, axis=0)
    out["window_hi"] = np.percentile(m, 97.5, axis=0)
    v = _weighted_centre(m, _centres(r[:, 1], r[:, 2], window))
    v = v[~np.isnan(v)]
    if not math.isnan(point) and len(v) >= len(r) // 2:
        out["cog_lo"] = float(np.percentile(v, 2.5))
        out["cog_hi"] = float(np.percentile(v, 97.5))
    return out


def median_position(n_tokens) -> float:
    """The median position over all generated tokens of a group (positions 0..n-1 per sample)."""
    lengths, counts = np.unique(np.asarray(n_tokens, dtype=np.int64), return_counts=True)
    return median_position_of(dict(zip(lengths.tolist(), counts.tolist())))


def median_position_of(lengths: dict[int, int]) -> float:
    """`median_position` from a histogram of completion lengths (length -> samples)."""
    n = np.array(list(lengths), dtype=np.int64)
    k = np.array(list(lengths.values()), dtype=np.int64)
    total = int((n * k).sum()) if len(n) else 0
    if total == 0:
        return math.nan
    lo, hi = 0, int(n.max())
    while lo < hi:  # smallest p with #tokens at positions <= p >= total/2
        mid = (lo + hi) // 2
        if int((np.minimum(n, mid + 1) * k).sum()) * 2 >= total:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


NO_FIT = {"midpoint": None, "slope": None, "converged": None, "rmse": None}


def sigmoid_fit(temps, k, n) -> dict:
    """Binomial logistic fit of a fraction vs temperature: p(T) = 1 / (1 + exp(-slope (T - mid))).

    Returns midpoint, slope, converged, rmse and ``reason``: None for a fit; otherwise why the
    data cannot determine one, with the other values None. The data cannot when there are fewer
    than 3 temperatures, when every share is 0 (or 1), when a flat line explains the shares as
    well as a sigmoid (likelihood-ratio test, p >= 0.05: a flat line has no midpoint, and the
    optimiser would report one millions of units away), or when the midpoint lies further from
    the temperatures run than their own range.
    """
    t = np.asarray(temps, dtype=float)
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    keep = n > 0
    t, k, n = t[keep], k[keep], n[keep]
    if len(np.unique(t)) < 3:
        return {**NO_FIT, "reason": f"{len(np.unique(t))} temperature(s); a fit needs 3"}
    if k.sum() == 0 or k.sum() == n.sum():
        return {**NO_FIT, "reason": f"every share is {0 if k.sum() == 0 else 1}"}
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit
    from scipy.stats import chi2

    def nll(params):
        a, b = params
        z = a + b * t
        return -(k * log_expit(z) + (n - k) * log_expit(-z)).sum()

    res = minimize(nll, x0=np.array([0.0, 1.0]), method="BFGS")
    a, b = res.x
    p = k.sum() / n.sum()  # the flat line's maximum likelihood
    flat = -(k * np.log(p) + (n - k) * np.log1p(-p)).sum()
    p_value = float(chi2.sf(max(2 * (flat - res.fun), 0.0), df=1))
    if not np.isfinite(res.fun) or p_value >= 0.05 or abs(b) < 1e-9:
        return {**NO_FIT, "reason": f"a sigmoid fits no better than a flat line "
                                    f"(likelihood-ratio p={p_value:.2g})"}
    mid = -a / b
    lo, hi = float(t.min()), float(t.max())
    if not lo - (hi - lo) <= mid <= hi + (hi - lo):
        return {**NO_FIT, "reason": f"midpoint T={mid:.3g} far outside the temperatures run "
                                    f"({lo:g}-{hi:g})"}
    pred = expit(a + b * t)
    return {
        "midpoint": float(mid),
        "slope": float(b),
        "converged": bool(res.success),
        "rmse": float(np.sqrt(np.mean((pred - k / n) ** 2))),
        "reason": None,
    }


def sigmoid(t, midpoint: float, slope: float):
    from scipy.special import expit

    return expit(slope * (np.asarray(t, dtype=float) - midpoint))


def kaplan_meier(time, event, z: float = Z95):
    """Kaplan–Meier survival with Greenwood log-log 95% bounds, as step-function points.

    time: the last position observed canonical (censored) or the position where the event
    happened; event: bool per sample. Returns (x, s, lo, hi, at_risk) where x counts tokens
    generated (position + 1), starting from x=0, s=1 and ending at the longest observation.
    """
    t = np.asarray(time, dtype=np.int64)
    e = np.asarray(event, dtype=bool)
    ev, ce = (np.unique(t[m], return_counts=True) for m in (e, ~e))
    return kaplan_meier_counts(dict(zip(ev[0].tolist(), ev[1].tolist())),
                               dict(zip(ce[0].tolist(), ce[1].tolist())), z)


def kaplan_meier_counts(events: dict[int, int], censored: dict[int, int], z: float = Z95):
    """`kaplan_meier` from histograms (position -> samples) of the events and of the censored
    samples' last positions: what a stream of samples keeps (memory grows with the longest
    completion, not with the samples)."""
    times = sorted(set(events) | set(censored))
    count = np.array([events.get(u, 0) + censored.get(u, 0) for u in times], dtype=np.int64)
    # samples observed at u or later, for each u in times
    later = np.cumsum(count[::-1])[::-1] if len(times) else count
    at = dict(zip(times, later.tolist()))
    xs, ss, los, his, risks = [0], [1.0], [1.0], [1.0], [int(count.sum())]
    s, var = 1.0, 0.0
    for u in sorted(events):
        n, d = int(at[u]), int(events[u])
        if d == 0:
            continue
        s *= 1 - d / n
        var = var + d / (n * (n - d)) if n > d else math.inf
        if 0 < s < 1 and math.isfinite(var):
            w = z * math.sqrt(var) / abs(math.log(s))
            lo, hi = s ** math.exp(w), s ** math.exp(-w)
        else:
            lo = hi = s
        xs.append(int(u) + 1)
        ss.append(s)
        los.append(lo)
        his.append(hi)
        risks.append(n)
    end = int(times[-1]) + 1 if times else 0
    if end > xs[-1]:
        xs.append(end)
        ss.append(ss[-1])
        los.append(los[-1])
        his.append(his[-1])
        risks.append(int(at[times[-1]]))
    return (np.array(xs), np.array(ss), np.array(los), np.array(his), np.array(risks))
