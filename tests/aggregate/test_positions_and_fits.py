"""Positions and fits that cannot mislead: a window sits where its tokens are, a centre is never
past the last token, and a sigmoid fit the data cannot determine is reported as no fit, with why.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from conftest import reencoder
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tmcli.aggregate import stats
from tmcli.cli import app


def test_short_window_sits_at_the_centre_of_its_tokens():
    # the demo's case: 48-token completions, 64-token windows; nominal centre 31.5 is past the end
    tokens = np.full((8, 1), 48.0)
    delta = np.zeros((8, 1))
    delta[0, 0] = 2
    assert stats.window_centres(tokens, 64).tolist() == [23.5]
    assert stats.centre_of_gravity(delta, tokens, 64) == 23.5
    # a 100-token and a 48-token sample: window 1 holds positions 64..99 of the first only
    tokens = np.array([[64.0, 36.0], [48.0, 0.0]])
    assert stats.window_centres(tokens, 64).tolist() == pytest.approx(
        [(64 * 31.5 + 48 * 23.5) / 112, 64 + 17.5])
    out = stats.window_bootstrap(np.array([[0.0, 3.0], [0.0, 0.0]]), tokens, 64, n_resamples=200)
    assert out["cog"] == 81.5 and out["window_centre"][1] == 81.5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(-5, 5), st.integers(0, 4)),
                min_size=1, max_size=6),
       st.integers(1, 80))
def test_centre_is_never_past_the_last_token(rows, window):
    """Signed savings (lengthened windows count negative) never move a centre outside the tokens."""
    nw = max(math.ceil(n / window) for n, _, _ in rows)
    tokens, delta = np.zeros((len(rows), nw)), np.zeros((len(rows), nw))
    for i, (n, saving, at) in enumerate(rows):
        tokens[i, : n // window] = window
        if n % window:
            tokens[i, n // window] = n % window
        w = min(at, math.ceil(n / window) - 1)
        delta[i, w] = saving
    last = max(n for n, _, _ in rows) - 1
    cog = stats.centre_of_gravity(delta, tokens, window)
    assert math.isnan(cog) or 0 <= cog <= last
    out = stats.window_bootstrap(delta, tokens, window, n_resamples=100)
    for value in (out["cog_lo"], out["cog_hi"]):
        assert math.isnan(value) or 0 <= value <= last


def test_flat_data_gives_no_fit_and_says_why():
    fit = stats.sigmoid_fit([0.0, 1.0, 2.0], [4, 4, 4], [8, 8, 8])
    assert fit["midpoint"] is None and fit["slope"] is None and fit["converged"] is None
    assert fit["reason"].startswith("a sigmoid fits no better than a flat line")
    rising = stats.sigmoid_fit([0.0, 1.0, 2.0], [1, 4, 7], [8, 8, 8])
    assert rising["reason"] is None and rising["midpoint"] == pytest.approx(1.0, abs=1e-4)


def _ids(text: str) -> list[int]:
    return reencoder("gpt2").vocab.original.encode(text, add_special_tokens=False).ids


def _spelled(text: str) -> list[int]:
    table = reencoder("gpt2").vocab.bytes_to_id()
    return [table[ch.encode()] for ch in text]


@pytest.fixture
def demo_like(tmp_path):
    """Three temperatures, 8 samples each, 48 tokens each, one merged sample per temperature:
    the share compressed is flat (1/8), so no sigmoid can be fitted."""
    base = _ids(" The river rises in the hills and runs to the sea through a wide valley of")
    base = (base * 10)[:48]
    merged = _spelled(" The river")
    merged = (merged + base)[:48]
    path = tmp_path / "out.jsonl"
    with open(path, "wb") as fh:
        for t in (0.0, 1.0, 2.0):
            for i in range(8):
                ids = merged if i == 0 else base
                fh.write(orjson.dumps({"id": f"{t}-{i}", "model": "gpt2", "tokenizer": "gpt2",
                                       "temperature": t, "token_ids": ids}) + b"\n")
    return path


def test_analyze_json_demo_like_run(demo_like):
    res = CliRunner().invoke(app, ["analyze", str(demo_like), "--json", "--resamples", "200"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for g in data["groups"]:
        assert g["window_centre"] == [23.5]
        assert g["centre_of_gravity"] == 23.5 and g["median_position"] == 23.0
    (fit,) = data["sigmoid_fits"]
    assert fit["midpoint"] is None and fit["converged"] is None
    assert fit["reason"].startswith("a sigmoid fits no better than a flat line")
