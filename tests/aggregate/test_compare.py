"""Canonical vs free generation: text-quality proxies, the comparison and its report section.

Records are built by hand with the real GPT-2 tokenizer. Every completion spells the text
" a b a b a b" (12 characters, 6 words), so per sample: distinct-2 = 2 unique / 5 bigrams = 0.4,
repetition-4 = 1 − 2 unique / 3 four-grams = 1/3, and chars/token = 12/6 = 2 when canonically
tokenized, 12/7 when " b" is written as " " + "b" (7 tokens, compression 1/7).
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.aggregate.stored import load_analysis, write_parquet
from tmcli.cli import app
from tmcli.measure import text_quality
from tmcli.present.html_report import build_figures, render_html

runner = CliRunner()
TEXT = " a b a b a b"


def ids(text: str) -> list[int]:
    return reencoder("gpt2").vocab.original.encode(text, add_special_tokens=False).ids


PROMPT = ids("We worked on it")
CANONICAL = ids(TEXT)  # 6 tokens
_table = reencoder("gpt2").vocab.bytes_to_id()
SPLIT = CANONICAL[:1] + [_table[b" "], _table[b"b"]] + CANONICAL[2:]  # 7 tokens, same text


def rec(prompt_index, token_ids, mode=None, temperature=1.0, **extra) -> dict:
    r = {"id": f"{mode}-{temperature}-{prompt_index}", "model": "gpt2", "tokenizer": "gpt2",
         "temperature": temperature, "prompt_index": prompt_index, "seed": 0,
         "prompt_token_ids": PROMPT, "token_ids": token_ids, **extra}
    if mode is not None:  # a foreign record has no "canonical" field: it counts as "off"
        r["canonical"] = mode
    return r


# off at T=1: prompt 0 non-canonical (7 tokens), 1 and 2 canonical; no nll_char.
# constrain at T=1: prompts 0, 1, 2 (paired) and 5 (unpaired), all canonical.
# off at T=2 only: not in the comparison.
OFF = [rec(0, SPLIT, "off", nll_token=2.0), rec(1, CANONICAL, nll_token=3.0),
       rec(2, CANONICAL, "off", nll_token=4.0, nll_char=None)]
CONSTRAIN = [rec(i, CANONICAL, "constrain", nll_token=v, nll_char=v / 2,
                 canonical_stats={"forced": 0})
             for i, v in ((0, 1.5), (1, 2.0), (2, 3.5), (5, 10.0))]
HOT = [rec(0, CANONICAL, "off", temperature=2.0, nll_token=1.0)]


def write(path, objs) -> str:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def two_modes(tmp_path_factory) -> str:
    return write(tmp_path_factory.mktemp("cmp") / "two.jsonl", OFF + CONSTRAIN + HOT)


@pytest.fixture(scope="module")
def one_mode(tmp_path_factory) -> str:
    return write(tmp_path_factory.mktemp("cmp") / "one.jsonl", OFF + HOT)


@pytest.fixture(scope="module")
def analysis(two_modes):
    return load_analysis(two_modes)  # 2000 resamples: the CI bounds below are exact


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_text_metrics_by_hand():
    m = text_quality.text_metrics(TEXT.encode(), 6)
    assert m == {"n_chars": 12, "chars_per_token": 2.0, "distinct_2": 0.4,
                 "repetition_4": pytest.approx(1 / 3)}
    short = text_quality.text_metrics(b"one two three", 3)  # 2 bigrams, no 4-gram
    assert short["distinct_2"] == 1.0 and short["repetition_4"] is None
    assert text_quality.text_metrics(b"word", 1)["distinct_2"] is None
    # a cut multi-byte character decodes to one U+FFFD: 2 characters from 3 bytes
    assert text_quality.text_metrics("é".encode()[:1] + b"xy", 2)["n_chars"] == 3
    assert text_quality.record_float(True) is None and text_quality.record_float("1") is None
    assert text_quality.record_float(float("nan")) is None and text_quality.record_float(2) == 2.0


def test_per_sample_columns(analysis, tmp_path):
    s = analysis.samples.sort("id")
    split = s.filter(pl.col("id") == "off-1.0-0").row(0, named=True)
    assert (split["n_tokens"], split["n_chars"]) == (7, 12)
    assert split["chars_per_token"] == pytest.approx(12 / 7)
    assert split["distinct_2"] == pytest.approx(0.4)
    assert split["repetition_4"] == pytest.approx(1 / 3)
    assert (split["nll_token"], split["nll_char"]) == (2.0, None)
    assert s.filter(pl.col("id") == "None-1.0-1")["canonical"].to_list() == ["off"]
    assert s.filter(pl.col("canonical") == "constrain")["nll_char"].sort().to_list() == [
        0.75, 1.0, 1.75, 5.0]
    # parquet round trip keeps the columns and rebuilds the same comparison
    path = tmp_path / "s.parquet"
    write_parquet(analysis, path)
    back = load_analysis(path)
    cols = ["id", "n_chars", "chars_per_token", "distinct_2", "repetition_4", "nll_token",
            "nll_char"]
    assert back.samples.select(cols).sort("id").equals(s.select(cols))
    assert back.comparison.equals(analysis.comparison)


def test_comparison_frame(analysis):
    c = analysis.comparison
    assert c.select("model", "temperature", "canonical", "n").rows() == [
        ("gpt2", 1.0, "off", 3), ("gpt2", 1.0, "constrain", 4)]  # T=2 has no second mode
    off, con = c.iter_rows(named=True)
    assert (off["n_noncanonical"], con["n_noncanonical"]) == (1, 0)
    assert off["fraction_noncanonical"] == pytest.approx(1 / 3)
    assert off["fraction_noncanonical_lo"] < 1 / 3 < off["fraction_noncanonical_hi"]
    assert con["fraction_noncanonical"] == 0 and con["fraction_noncanonical_hi"] > 0
    assert off["mean_compression"] == pytest.approx(1 / 7 / 3)
    assert off["chars_per_token"] == pytest.approx((12 / 7 + 2 + 2) / 3)
    assert off["chars_per_token_lo"] == pytest.approx(12 / 7)  # resamples of {12/7, 2, 2}
    assert off["chars_per_token_hi"] == pytest.approx(2.0)
    assert (con["chars_per_token"], con["chars_per_token_lo"], con["chars_per_token_hi"]) == (
        2.0, 2.0, 2.0)
    for row in (off, con):
        assert row["distinct_2"] == pytest.approx(0.4)
        assert row["repetition_4"] == pytest.approx(1 / 3)
    assert (off["nll_token"], off["nll_token_n"]) == (pytest.approx(3.0), 3)
    assert (off["nll_char"], off["nll_char_lo"], off["nll_char_n"]) == (None, None, 0)
    assert (con["nll_token"], con["nll_char"]) == (pytest.approx(4.25), pytest.approx(2.125))
    # paired over prompts 0, 1, 2 (prompt 5 has no "off" sample)
    assert off["paired_prompts"] is None and off["diff_nll_token"] is None
    assert con["paired_prompts"] == 3 and con["diff_nll_token_n"] == 3
    assert con["diff_nll_token"] == pytest.approx((-0.5 - 1.0 - 0.5) / 3)
    assert con["diff_nll_token_lo"] == pytest.approx(-1.0)  # resamples of {-0.5, -1, -0.5}
    assert con["diff_nll_token_hi"] == pytest.approx(-0.5)
    assert con["diff_chars_per_token"] == pytest.approx((2 - 12 / 7) / 3)
    assert con["few_samples"] is True


def test_group_summaries_have_quality(analysis):
    g = analysis.groups
    assert analysis.group_by == ["model", "canonical", "temperature"]
    off = g.filter((pl.col("canonical") == "off") & (pl.col("temperature") == 1.0)).row(
        0, named=True)
    assert off["n_chars"] == 36 and off["distinct_2"] == pytest.approx(0.4)
    assert off["nll_token"] == pytest.approx(3.0) and off["nll_char"] is None
    assert g.schema["nll_char"] == pl.Float64


def test_analyze_json_and_table(two_modes, one_mode):
    r = run("analyze", two_modes, "--json", "--resamples", "200")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    comp = data["canonical_comparison"]
    assert [(x["canonical"], x["n"]) for x in comp] == [("off", 3), ("constrain", 4)]
    assert comp[1]["diff_nll_token"] == pytest.approx(-2 / 3)
    assert comp[1]["diff_chars_per_token"] == pytest.approx((2 - 12 / 7) / 3)
    assert comp[0]["nll_char"] is None
    r = run("analyze", two_modes, "--resamples", "200")
    assert r.exit_code == 0, r.output
    assert "Canonical vs free" in r.stdout and "constrain" in r.stdout
    r = run("analyze", one_mode, "--json", "--resamples", "200")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["canonical_comparison"] == []
    assert json.loads(r.stdout)["groups"][0]["distinct_2"] == pytest.approx(0.4)
    r = run("analyze", one_mode, "--resamples", "200")
    assert r.exit_code == 0 and "Canonical vs free" not in r.stdout


def test_report_section_only_with_two_modes(analysis, one_mode):
    figs = {a: f for a, _c, f in build_figures(analysis)}
    assert "canonical" in figs
    fig = figs["canonical"]
    names = {t.name for t in fig.data if t.showlegend is not False}
    assert {"off", "constrain"} <= names
    titles = [a.text for a in fig.layout.annotations]
    for panel in ("non-canonical samples", "NLL per token (nats)", "characters per token",
                  "distinct word bigrams"):
        assert panel in titles
    assert fig.layout.yaxis.title.text == "<b>gpt2</b>"  # the model names its row
    # one line per mode in each panel (x: temperature), at the comparison's values
    lines = {(t.name, t.xaxis): list(t.y) for t in fig.data if t.mode == "lines+markers"}
    assert lines[("off", "x")] == pytest.approx([1 / 3])
    assert lines[("constrain", "x2")] == pytest.approx([4.25])
    assert lines[("off", "x3")] == pytest.approx([(12 / 7 + 4) / 3])
    assert lines[("constrain", "x4")] == pytest.approx([0.4])
    assert any("fewer than 30" in t for t in titles)  # both modes have few samples
    page = render_html(analysis)
    assert 'id="fig-canonical"' in page and "Canonical vs free" in page
    single = load_analysis(one_mode, n_resamples=200)
    assert single.comparison.height == 0
    assert "canonical" not in [a for a, _c, _f in build_figures(single)]
    page = render_html(single)
    assert 'fig-canonical' not in page and "Canonical vs free" not in page


def test_parquet_without_quality_columns_still_loads(analysis, tmp_path):
    """A file written before these columns existed reads back with them null."""
    import pyarrow.parquet as pq

    import tmcli
    from tmcli.aggregate.groups import canonical_comparison

    path = tmp_path / "old.parquet"
    write_parquet(analysis, path)
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(list(text_quality.QUALITY_COLUMNS)), path)
    back = load_analysis(path, n_resamples=200)
    assert back.samples["distinct_2"].null_count() == back.samples.height
    assert back.groups["distinct_2"].null_count() == back.groups.height
    assert back.comparison["n"].to_list() == [3, 4]  # modes and counts need no proxy
    assert back.comparison["diff_nll_token"].to_list() == [None, None]
    assert tmcli.canonical_comparison is canonical_comparison  # public API name
