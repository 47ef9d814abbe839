"""Group summaries streamed in batches equal the same statistics computed on whole arrays, with
the same resample weights (up to float rounding: sums are taken batch by batch); the Poisson
bootstrap's weights are Poisson(1)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tmcli.aggregate import stats
from tmcli.aggregate.accumulate import GroupSums
from tmcli.aggregate.groups import Summariser


def _rows(n: int, window: int, seed: int = 3) -> pl.DataFrame:
    """Sample rows as the measurement writes them: lengths, windows, proxies (some null)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.choice([48, 64, 100, 130]))
        nw = max(1, -(-length // window))
        tokens = [window] * (nw - 1) + [length - window * (nw - 1)]
        differs = rng.random() < 0.4
        delta = [float(rng.integers(-2, 4)) if differs else 0.0 for _ in range(nw)]
        nc = [int(rng.integers(0, 5)) if differs else 0 for _ in range(nw)]
        rows.append({
            "id": str(i), "model": "m", "temperature": 1.0, "canonical": "off",
            "prompt_index": i % 7, "n_tokens": length, "compression": sum(delta) / length,
            "noncanonical": differs, "kind": "merged" if differs else "canonical",
            "noncanonical_tokens": sum(nc), "first_divergence": 3 if differs else None,
            "boundary_merge": False, "byte_exact": True, "invalid_bytes": 0, "cut_bytes": 0,
            "unknown_ids": 0, "normalized": False, "causes": ["merged"] * differs,
            "window_delta": delta, "window_tokens": tokens, "window_noncanonical": nc,
            "n_chars": 4 * length, "chars_per_token": 4.0 + rng.random(),
            "distinct_2": None if i % 5 == 0 else rng.random(), "repetition_4": rng.random(),
            "nll_token": None, "nll_char": None,
        })
    return pl.DataFrame(rows)


def _pad(lists, width):
    return np.array([list(x) + [0] * (width - len(x)) for x in lists], dtype=float)


def test_streamed_group_equals_the_array_statistics():
    window, df = 32, _rows(300, 32)
    sums = GroupSums((), window, n_resamples=1000)  # the key () and seed 0 of the array functions
    for start in (0, 70, 200):  # batches of any size
        sums.add(df.slice(start, {0: 70, 70: 130, 200: 100}[start]))
    got = sums.result()
    width = max(map(len, df["window_tokens"].to_list()))
    delta, tokens = _pad(df["window_delta"].to_list(), width), _pad(df["window_tokens"].to_list(),
                                                                      width)
    want = stats.window_bootstrap(delta, tokens, window, n_resamples=1000)
    for name, key in (("window_mean", "window_mean"), ("window_lo", "window_lo"),
                      ("window_hi", "window_hi"), ("window_centre", "window_centre")):
        assert got[name] == pytest.approx(list(want[key]), rel=1e-12, abs=1e-15)
    assert got["centre_of_gravity"] == pytest.approx(want["cog"], rel=1e-12)
    assert got["centre_of_gravity_lo"] == pytest.approx(want["cog_lo"], rel=1e-12)
    m, lo, hi = stats.mean_ci(df["compression"].to_numpy(), n_resamples=1000)
    assert (got["mean_compression"], got["mean_compression_lo"], got["mean_compression_hi"]) == \
        pytest.approx((m, lo, hi), rel=1e-12)
    assert got["median_position"] == stats.median_position(df["n_tokens"].to_numpy())
    assert got["distinct_2_n"] == 240 and got["nll_token"] is None
    assert got["n_noncanonical"] == int(df["noncanonical"].sum())
    assert got["median_first_divergence"] == 3.0


def test_duplicates_counted_once_whatever_the_batches():
    df = _rows(120, 64)
    twice = pl.concat([df, df.slice(10, 30)])
    a = Summariser(None, 64, 500, dedupe=True)
    for start in range(0, twice.height, 50):
        a.add(twice.slice(start, 50))
    b = Summariser(None, 64, 500, dedupe=True)
    b.add(df)
    assert (a.n, a.n_duplicates) == (120, 30)
    x, y = a.groups().row(0, named=True), b.groups().row(0, named=True)
    assert x.keys() == y.keys()
    for k in x:  # equal up to float rounding (sums taken in other batches)
        if isinstance(x[k], (float, list)):
            assert x[k] == pytest.approx(y[k], rel=1e-12, nan_ok=True), k
        else:
            assert x[k] == y[k], k


def test_poisson_weights_are_poisson_one():
    w = stats.PoissonBootstrap(1000, ("k",)).weights(1000).ravel()
    values, counts = np.unique(w, return_counts=True)
    pmf = np.array([math.exp(-1) / math.factorial(int(k)) for k in values])
    # chi-square over the well-populated values (10^6 draws): far below the 0.1% point (~20)
    common = pmf * len(w) > 50
    chi2 = float((((counts - pmf * len(w)) ** 2) / (pmf * len(w)))[common].sum())
    assert chi2 < 20 and values[0] == 0 and abs(w.mean() - 1) < 0.005 and abs(w.var() - 1) < 0.01
