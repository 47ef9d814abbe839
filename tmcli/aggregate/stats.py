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

    Resamples whole samples (rows), in chunks so memory stays bounded for large groups; each
    resample places its windows where its own tokens are.
    """
    nw = delta.shape[1]
    means = delta.sum(axis=0) / np.maximum(tokens.sum(axis=0), 1)
    centres = window_centres(tokens, window)
    point = float(_weighted_centre(means, centres))  # = centre_of_gravity(delta, tokens, window)
    out = {"window_mean": means, "window_lo": np.full(nw, np.nan),
           "window_hi": np.full(nw, np.nan), "window_centre": centres,
           "cog": point, "cog_lo": math.nan, "cog_hi": math.nan}
    n = len(delta)
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    half = tokens * (tokens - 1) / 2
    wm, cogs = [], []
    chunk = _batch(n * nw, 50)
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        t = tokens[idx].sum(axis=1)
        m = delta[idx].sum(axis=1) / np.maximum(t, 1)
        wm.append(m)
        cogs.append(_weighted_centre(m, _centres(t, half[idx].sum(axis=1), window)))
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
