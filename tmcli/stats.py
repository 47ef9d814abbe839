"""Statistics: confidence intervals, centre of gravity and the sigmoid fit.

The study's main weakness was noise, so every figure here comes with an interval: Wilson for
fractions, percentile bootstrap (resampling samples, not tokens: tokens of one completion are not
independent) for means, per-token rates and the centre of gravity.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

Z95 = 1.959963984540054
# Resampled values held at once by a bootstrap: batches of resamples shrink as groups grow, so
# memory stays bounded (resamples × samples would be gigabytes for 10^5-sample groups).
BOOTSTRAP_CELLS = 1 << 19


def _batch(n_cells_per_resample: int, most: int) -> int:
    return max(1, min(most, BOOTSTRAP_CELLS // max(n_cells_per_resample, 1)))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (NaNs when n == 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def _bootstrap(data: tuple[np.ndarray, ...], statistic, n_resamples: int, seed: int):
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            data, statistic, n_resamples=n_resamples, method="percentile", paired=True,
            vectorized=True, random_state=np.random.default_rng(seed),
            batch=_batch(len(data[0]), 200),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return lo, hi


def mean_ci(values, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean with a 95% percentile-bootstrap interval."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return (m, m, m)
    lo, hi = _bootstrap((x,), lambda a, axis: a.mean(axis=axis), n_resamples, seed)
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
    lo, hi = _bootstrap(
        (a, b), lambda x, y, axis: x.sum(axis=axis) / np.maximum(y.sum(axis=axis), 1e-12),
        n_resamples, seed,
    )
    return (r, lo, hi)


def window_centres(n_windows: int, window: int) -> np.ndarray:
    return np.arange(n_windows) * window + (window - 1) / 2


def centre_of_gravity(delta: np.ndarray, tokens: np.ndarray, window: int) -> float:
    """Compression-weighted mean position from window means (the study's method).

    delta, tokens: (samples × windows) saved tokens and tokens per window. The window mean is the
    ratio of sums, so short last windows are weighted by what they hold. NaN when the group has
    no net compression (the weights would not be a distribution).
    """
    m = delta.sum(axis=0) / np.maximum(tokens.sum(axis=0), 1)
    total = m.sum()
    if not total > 0:
        return math.nan
    return float((window_centres(len(m), window) * m).sum() / total)


def window_bootstrap(delta: np.ndarray, tokens: np.ndarray, window: int,
                     n_resamples: int = 1000, seed: int = 0) -> dict:
    """Per-window mean compression and the centre of gravity, with bootstrap intervals.

    Resamples whole samples (rows), in chunks so memory stays bounded for large groups.
    """
    nw = delta.shape[1]
    means = delta.sum(axis=0) / np.maximum(tokens.sum(axis=0), 1)
    point = centre_of_gravity(delta, tokens, window)
    out = {"window_mean": means, "window_lo": np.full(nw, np.nan),
           "window_hi": np.full(nw, np.nan), "cog": point, "cog_lo": math.nan, "cog_hi": math.nan}
    n = len(delta)
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    centres = window_centres(nw, window)
    wm, cogs = [], []
    chunk = _batch(n * nw, 50)
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        m = delta[idx].sum(axis=1) / np.maximum(tokens[idx].sum(axis=1), 1)
        wm.append(m)
        tot = m.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cogs.append(np.where(tot > 0, (m * centres).sum(axis=1) / tot, np.nan))
    wm = np.concatenate(wm)
    out["window_lo"] = np.percentile(wm, 2.5, axis=0)
    out["window_hi"] = np.percentile(wm, 97.5, axis=0)
    v = np.concatenate(cogs)
    v = v[~np.isnan(v)]
    # Where most resamples have no net compression there is no honest interval.
    if not math.isnan(point) and len(v) >= n_resamples // 2:
        out["cog_lo"] = float(np.percentile(v, 2.5))
        out["cog_hi"] = float(np.percentile(v, 97.5))
    return out


def median_position(n_tokens) -> float:
    """The median position over all generated tokens of a group (positions 0..n-1 per sample)."""
    n = np.sort(np.asarray(n_tokens, dtype=np.int64))
    total = n.sum()
    if total == 0:
        return math.nan
    lo, hi = 0, int(n.max())
    while lo < hi:  # smallest p with #tokens at positions <= p >= total/2
        mid = (lo + hi) // 2
        if np.minimum(n, mid + 1).sum() * 2 >= total:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def sigmoid_fit(temps, k, n) -> dict | None:
    """Binomial logistic fit of a fraction vs temperature: p(T) = 1 / (1 + exp(-slope (T - mid))).

    Returns None with fewer than 3 temperatures, or when the data cannot pin both parameters
    (all fractions 0, or all 1).
    """
    t = np.asarray(temps, dtype=float)
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    keep = n > 0
    t, k, n = t[keep], k[keep], n[keep]
    if len(np.unique(t)) < 3 or k.sum() == 0 or k.sum() == n.sum():
        return None
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    def nll(params):
        a, b = params
        z = a + b * t
        return -(k * log_expit(z) + (n - k) * log_expit(-z)).sum()

    res = minimize(nll, x0=np.array([0.0, 1.0]), method="BFGS")
    a, b = res.x
    if not res.success and not np.isfinite(res.fun) or abs(b) < 1e-9:
        return None
    mid = -a / b
    pred = expit(a + b * t)
    return {
        "midpoint": float(mid),
        "slope": float(b),
        "converged": bool(res.success),
        "rmse": float(np.sqrt(np.mean((pred - k / n) ** 2))),
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
    xs, ss, los, his, risks = [0], [1.0], [1.0], [1.0], [len(t)]
    s, var = 1.0, 0.0
    for u in np.unique(t[e]):
        n = int((t >= u).sum())
        d = int(((t == u) & e).sum())
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
    end = int(t.max()) + 1 if len(t) else 0
    if end > xs[-1]:
        xs.append(end)
        ss.append(ss[-1])
        los.append(los[-1])
        his.append(his[-1])
        risks.append(int((t >= end - 1).sum()))
    return (np.array(xs), np.array(ss), np.array(los), np.array(his), np.array(risks))
