"""`--window-method study` reproduces the study script's arithmetic, checked against values
computed by hand from snimu/token-merge `ablations.py` and `plot_results.py` (see
`tmcli/study.py` for what the script did)."""

from __future__ import annotations

import json

import orjson
import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.aggregate.study_script import study_summary
from tmcli.cli import app
from tmcli.measure.alignment import Sample


def ids(name: str, text: str) -> list[int]:
    return reencoder(name).vocab.encoder.encode(text, add_special_tokens=False).ids


def spelled(name: str, text: str) -> list[int]:
    table = reencoder(name).vocab.bytes_to_id()
    return [table[ch.encode()] for ch in text]


# " together" spelled one character per token, then " and": 10 ids in windows of 4.
#   window 0: " tog"  -> GPT-2 encodes it as " to", "g": 2 ids -> (4 - 2) / 4 = 0.5
#   window 1: "ethe"  -> "ethe": 1 id                    -> (4 - 1) / 4 = 0.75
#   window 2: "r and" -> "r", " and": 2 ids (a short last window of 2 ids): the script still
#             uses the window size as numerator and denominator -> (4 - 2) / 4 = 0.5
#   whole:    " together and" -> 2 ids                   -> (10 - 2) / 10 = 0.8
SPELLED = (" together", " and")
WINDOWS = [0.5, 0.75, 0.5]


def test_windows_and_whole_sequence_as_the_script_scored_them():
    g = spelled("gpt2", SPELLED[0]) + ids("gpt2", SPELLED[1])
    assert len(g) == 10
    m = reencoder("gpt2", 4).measure([Sample(g)], method="study")[0]
    assert m.study_window_compression == WINDOWS
    assert m.study_compression == pytest.approx(0.8)
    # tmcli's own figures for the same sample: one merge of 9 ids into 1
    assert m.compression == pytest.approx(0.8) and m.kind == "merged"


def test_the_script_parses_special_token_text_and_adds_the_tokenizers_specials():
    # "<|endoftext|>" spelled as text (7 ids) re-encodes, as transformers calls the tokenizer,
    # to the one special id: the script counts a compression of 6/7 that tmcli does not.
    g = ids("gpt2", "<|endoftext|>")
    m = reencoder("gpt2", 64).measure([Sample(g)], method="study")[0]
    assert len(g) == 7 and m.study_compression == pytest.approx(6 / 7)
    assert not m.noncanonical
    # Gemma's tokenizer adds <bos>: canonical "Hello world" (2 ids) scores (2 - 3) / 2.
    g = ids("gemma3-270m", "Hello world")
    m = reencoder("gemma3-270m", 64).measure([Sample(g)], method="study")[0]
    assert len(g) == 2 and m.study_compression == pytest.approx(-0.5)


def test_centre_of_gravity_as_plot_results_computed_it():
    # Lists cut to the shortest (2 windows): [0.5, 0.75] -> centre (0*0.5 + 1*0.75) / 1.25 = 0.6;
    # [0.0, 0.0] has no positive window and is dropped; the mean of the centres is 0.6.
    out = study_summary([[WINDOWS, [0.0, 0.0]]], n_resamples=200)
    assert out["study_centre"] == pytest.approx(0.6) and out["study_centre_n"] == 1
    assert out["study_window_mean"] == pytest.approx([0.25, 0.375])
    assert out["study_median_position"] == 0.5
    # Negative windows carry no weight; per-sample centres are averaged with equal weight.
    out = study_summary([[[1.0, -2.0, 1.0], [0.0, 3.0, 1.0, 9.0]]], n_resamples=200)
    assert out["study_centre"] == pytest.approx((1.0 + 1.25) / 2)
    assert out["study_centre_sem"] == pytest.approx(0.125)
    # Each model's lists are cut to that model's shortest, as the script's loop over models did.
    two = study_summary([[[1.0, 0.0, 1.0]], [[0.0, 1.0]]], n_resamples=200)
    assert two["study_centre"] == pytest.approx((1.0 + 1.0) / 2)


def test_study_figures_through_the_cli(tmp_path):
    g = spelled("gpt2", SPELLED[0]) + ids("gpt2", SPELLED[1])
    plain = ids("gpt2", " one two three four five six seven eight")
    assert len(plain) == 8
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": str(i), "model": "gpt2", "temperature": 1.0,
                                            "token_ids": x}) + b"\n"
                              for i, x in enumerate([g, plain])))
    res = CliRunner().invoke(app, ["analyze", str(path), "--window", "4",
                                   "--window-method", "study", "--json"])
    assert res.exit_code == 0, res.output
    (group,) = json.loads(res.stdout[res.stdout.index("{"):])["groups"]
    assert group["study_centre"] == pytest.approx(0.6) and group["study_centre_n"] == 1
    assert group["study_window_mean"] == pytest.approx([0.25, 0.375])
    assert group["study_mean_compression"] == pytest.approx((0.8 + 0.0) / 2)
    assert group["study_fraction_compressed"] == 0.5
