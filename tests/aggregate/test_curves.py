"""The curves the report draws are in `analyze --json` (and in a stored analysis read back): the
survival of canonical output and the window profile of all models pooled, equal to values
computed by hand on records built to diverge where we say."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.cli import app

Z95 = 1.959963984540054


def _records(path):
    """Eight-token completions of " a b c d e f g h" (gpt2: one token per letter); a split one
    writes the word at position k as two tokens (" " and the letter) and drops the last word,
    so it diverges first at k and saves one token in the 4-token window holding k and k + 1."""
    vocab = reencoder("gpt2").vocab
    ids = vocab.original.encode(" a b c d e f g h", add_special_tokens=False).ids
    assert len(ids) == 8
    table = vocab.bytes_to_id()

    def split(k):
        word = vocab.token_bytes[ids[k]]
        return ids[:k] + [table[word[:1]], table[word[1:]]] + ids[k + 1:7]

    rows = [("m1", 1.0, split(1)), ("m1", 1.0, split(1)), ("m1", 1.0, split(5)),
            ("m1", 1.0, ids), ("m1", 1.0, ids),
            ("m2", 1.0, split(2)), ("m2", 1.0, ids), ("m2", 1.0, ids),
            ("m1", 0.0, ids), ("m1", 0.0, ids)]
    with open(path, "wb") as fh:
        for i, (model, t, x) in enumerate(rows):
            fh.write(orjson.dumps({"id": str(i), "model": model, "tokenizer": "gpt2",
                                   "temperature": t, "token_ids": x}) + b"\n")
    return path


def _greenwood(s: float, var: float) -> tuple[float, float]:
    w = Z95 * math.sqrt(var) / abs(math.log(s))
    return s ** math.exp(w), s ** math.exp(-w)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curves")
    parquet = tmp / "samples.parquet"
    res = CliRunner().invoke(app, ["analyze", str(_records(tmp / "out.jsonl")), "--window", "4",
                                   "--resamples", "200", "--output", str(parquet), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), parquet


def test_survival_in_the_json_is_kaplan_meier_by_hand(analysed):
    data, _ = analysed
    curves = {(c["model"], c["temperature"]): c for c in data["survival"]}
    assert set(curves) == {("m1", 0.0), ("m1", 1.0), ("m2", 1.0)}
    # m1 at T=1: first divergences at 1, 1, 5; two never diverge (censored at their last token)
    c = curves[("m1", 1.0)]
    assert c["n"] == 5
    assert c["tokens"] == [0, 2, 6, 8]
    assert c["at_risk"] == [5, 5, 3, 2]
    assert c["still_canonical"] == pytest.approx([1, 3 / 5, 2 / 5, 2 / 5])
    lo1, hi1 = _greenwood(3 / 5, 2 / (5 * 3))
    lo2, hi2 = _greenwood(2 / 5, 2 / (5 * 3) + 1 / (3 * 2))
    assert c["still_canonical_lo"] == pytest.approx([1, lo1, lo2, lo2])
    assert c["still_canonical_hi"] == pytest.approx([1, hi1, hi2, hi2])
    # m2 at T=1: one of three diverges at 2; greedy m1 never diverges
    assert curves[("m2", 1.0)]["tokens"] == [0, 3, 8]
    assert curves[("m2", 1.0)]["still_canonical"] == pytest.approx([1, 2 / 3, 2 / 3])
    assert curves[("m1", 0.0)]["still_canonical"] == [1, 1]


def test_pooled_window_profile_in_the_json_pools_the_samples(analysed):
    data, _ = analysed
    pooled = {p["temperature"]: p for p in data["pooled_window_profile"]}
    assert set(pooled) == {0.0, 1.0}
    p = pooled[1.0]
    # 8 samples of 8 tokens: window 0 holds the savings of splits at 1, 1 and 2; window 1 at 5
    assert (p["n"], p["max_tokens"], p["window_n"]) == (8, 8, [8, 8])
    assert p["window_mean"] == pytest.approx([3 / 32, 1 / 32])
    assert p["window_centre"] == pytest.approx([1.5, 5.5])
    for lo, m, hi in zip(p["window_lo"], p["window_mean"], p["window_hi"]):
        assert 0 <= lo <= m <= hi
    # pooled samples, not the mean of the models' means (2/20 and 1/12 in window 0)
    means = {(g["model"], g["temperature"]): g["window_mean"] for g in data["groups"]}
    assert means[("m1", 1.0)] == pytest.approx([2 / 20, 1 / 20])
    assert means[("m2", 1.0)] == pytest.approx([1 / 12, 0])
    assert pooled[0.0]["window_mean"] == [0, 0]


def test_a_stored_analysis_has_the_same_curves(analysed):
    data, parquet = analysed
    res = CliRunner().invoke(app, ["analyze", str(parquet), "--resamples", "200", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["survival"] == data["survival"]
    assert again["pooled_window_profile"] == data["pooled_window_profile"]
