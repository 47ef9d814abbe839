"""Statistics with answers known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tmcli.aggregate import stats


def test_wilson_matches_closed_form():
    k, n, z = 3, 20, stats.Z95
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = stats.wilson(k, n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(x) for x in stats.wilson(0, 0))


def test_mean_ci_contains_mean_and_degenerate_cases():
    x = np.random.default_rng(1).normal(0.01, 0.005, size=400)
    m, lo, hi = stats.mean_ci(x)
    assert lo < m < hi and hi - lo == pytest.approx(2 * 1.96 * 0.005 / 20, rel=0.25)
    assert stats.mean_ci([0.0, 0.0, 0.0]) == (0.0, 0.0, 0.0)


def test_sigmoid_fit_recovers_known_parameters():
    temps = np.round(np.arange(0, 2.01, 0.2), 1)
    n = np.full(len(temps), 100_000)
    k = np.round(n * stats.sigmoid(temps, 1.1, 4.0)).astype(int)
    fit = stats.sigmoid_fit(temps, k, n)
    assert fit["midpoint"] == pytest.approx(1.1, abs=0.01)
    assert fit["slope"] == pytest.approx(4.0, rel=0.02)
    assert fit["reason"] is None
    # no fit: a reason instead of numbers
    assert stats.sigmoid_fit(temps, np.zeros(len(temps)), n)["reason"] == "every share is 0"
    few = stats.sigmoid_fit([0.0, 1.0], [1, 5], [10, 10])
    assert few["midpoint"] is None and few["reason"] == "2 temperature(s); a fit needs 3"


def test_centre_of_gravity_known_profile():
    window = 64
    tokens = np.full((3, 4), window)
    delta = np.zeros((3, 4))
    delta[:, 3] = 2.0  # all compression in the last window: centre = its centre
    assert stats.centre_of_gravity(delta, tokens, window) == 3 * 64 + 31.5
    delta[:, 0] = 2.0  # first and last equally: midway
    assert stats.centre_of_gravity(delta, tokens, window) == pytest.approx((31.5 + 223.5) / 2)
    assert math.isnan(stats.centre_of_gravity(np.zeros((3, 4)), tokens, window))
    out = stats.window_bootstrap(delta, tokens, window, n_resamples=200)
    assert out["cog"] == pytest.approx(127.5) and out["cog_lo"] == out["cog_hi"] == 127.5


def test_median_position():
    assert stats.median_position([1024] * 5) == 511
    assert stats.median_position([10, 30]) == 9  # 40 tokens; positions 0..9 hold 10 + 10
