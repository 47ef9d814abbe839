"""`score --divergence`: the generated vs the canonical context of the same text, compared at
aligned positions after each span, with numbers known by construction, on the real SmolLM2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.measure.rollout_check import check_ids
from tmcli.scoring.compare import compare
from tmcli.scoring.divergence import NO_POSITION, divergence_many, plan
from tmcli.scoring.forward import load_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import reencoder  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "smollm2_generations.jsonl"
runner = CliRunner()


def ids(text: str) -> list[int]:
    return reencoder("smollm2-135m").vocab.original.encode(text, add_special_tokens=False).ids


def spelled(text: str) -> list[int]:
    table = reencoder("smollm2-135m").vocab.bytes_to_id()
    return [table[ch.encode()] for ch in text]


PROMPT = ids("The ships came back to the harbour")
TAIL = ids(" at dawn, and the crew went home to rest")
SPAN = spelled(" together")  # 9 one-character tokens where the tokenizer writes one


class NoForward:
    """A forward that must not be asked: canonical samples need none."""

    def pair_logprobs(self, pairs):
        if pairs:
            raise AssertionError("a forward pass was run")
        return iter(())


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kl_from_a_hand_built_two_token_vocabulary():
    ref = torch.log(torch.tensor([[0.25, 0.75]]))
    alt = torch.log(torch.tensor([[0.6, 0.4]]))
    got = compare(ref, alt, [0])
    kl = 0.25 * math.log(0.25 / 0.6) + 0.75 * math.log(0.75 / 0.4)
    kl_rev = 0.6 * math.log(0.6 / 0.25) + 0.4 * math.log(0.4 / 0.75)
    assert got["kl"][0] == pytest.approx(kl, abs=1e-7)
    assert got["kl_rev"][0] == pytest.approx(kl_rev, abs=1e-7)
    assert got["top1"] == [0.0]  # token 1 first under ref, token 0 under alt
    assert got["top3"] == got["top5"] == [1.0] and got["overlap5"] == [1.0]  # two tokens only
    assert got["nll_ref"][0] == pytest.approx(math.log(4), abs=1e-6)
    assert got["nll_alt"][0] == pytest.approx(-math.log(0.6), abs=1e-6)
    assert got["entropy_ref"][0] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)),
                                                  abs=1e-7)
    same = compare(ref, ref, None)
    assert same["kl"] == same["kl_rev"] == [0.0] and same["top1"] == [1.0]
    assert same["nll_ref"] == [None]


def test_aligned_positions_by_construction():
    completion = ids(" They sailed") + SPAN + TAIL
    check = check_ids("smollm2-135m", completion, PROMPT)
    assert [(s.position, len(s.generated), len(s.canonical)) for s in check.spans] == \
        [(2, 9, 1)]
    pl = plan(PROMPT, completion, check, after=4)
    p = len(PROMPT)
    end = p + 2 + 9  # first generated index after the span
    assert pl.since == [0, 1, 2, 3]
    assert pl.pair.ref_rows == [end - 1, end, end + 1, end + 2, p + len(completion) - 1]
    assert pl.pair.alt_rows == [r - 8 for r in pl.pair.ref_rows]  # the span shrank by 8
    assert pl.next_ids == TAIL[:4]
    assert pl.pair.prefix == p + 2 and pl.end_since == len(TAIL)
    full_ref, full_alt = pl.pair.ref, pl.pair.alt
    assert full_alt == PROMPT + check.canonical_ids and full_ref == PROMPT + completion
    spell = reencoder("smollm2-135m").vocab.spell
    for r, a in zip(pl.pair.ref_rows, pl.pair.alt_rows):  # the same text up to each row
        assert spell(full_ref[: r + 1]) == spell(full_alt[: a + 1])


def test_canonical_samples_are_exactly_0_and_1_without_a_forward_pass():
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    greedy = [r for r in rows if r["temperature"] == 0.0][:4]
    out = divergence_many(NoForward(), reencoder("smollm2-135m"),
                          [(r["prompt_token_ids"], r["token_ids"]) for r in greedy])
    for d in out:
        assert d["positions"] == 0 and d["spans"] == 0 and d["note"].startswith("canonical")
        for figures in (d["mean"], d["end"]):
            assert figures["kl"] == figures["kl_rev"] == 0.0
            assert figures["top1"] == figures["top3"] == figures["top5"] == 1.0
            assert figures["overlap5"] == 1.0


@pytest.fixture(scope="module")
def forwards(smol):
    """SmolLM2 on both whole-sequence forwards, built once for the module."""
    lm, _tok = smol
    return {name: load_forward(name, lm) for name in ("fused", "transformers")}


def test_a_span_that_ends_the_completion_has_no_position_after_it(forwards):
    completion = ids(" They came back") + SPAN
    d = divergence_many(forwards["fused"], reencoder("smollm2-135m"),
                        [(PROMPT, completion)], after=8)[0]
    assert d["spans"] == 1 and d["positions"] == 0 and d["note"] == NO_POSITION
    assert d["since"] == [] and d["kl"] == [] and d["mean"]["kl"] is None
    assert d["end"]["since"] == 0 and d["end"]["kl"] > 0  # the end is compared all the same


def test_fused_and_transformers_forwards_agree_and_spans_change_predictions(smol, forwards):
    lm, _tok = smol
    items = [(PROMPT, ids(" They sailed") + SPAN + TAIL),
             (PROMPT, ids(" They sailed") + TAIL),  # canonical
             (PROMPT, SPAN + ids(" at") + spelled(" dawn") + TAIL[2:])]
    got = {name: divergence_many(f, reencoder("smollm2-135m"), items, 6)
           for name, f in forwards.items()}
    fused, hf = got["fused"], got["transformers"]
    assert [d["positions"] for d in fused] == [6, 0, 2 + 6]  # 2 between the two spans
    assert fused[2]["since"] == [0, 1, 0, 1, 2, 3, 4, 5] and fused[2]["spans"] == 2
    assert fused[1]["note"].startswith("canonical")
    for a, b in zip(fused, hf):
        assert a["top1"] == b["top1"] and a["since"] == b["since"]
        for x, y in zip(a["kl"] + a["nll_ref"], b["kl"] + b["nll_ref"]):
            assert abs(x - y) < 1e-3
    first = fused[0]
    assert first["kl"][0] > 0.01  # right after the span the two contexts disagree
    assert all(v >= 0 for v in first["kl"] + first["kl_rev"])
    # the token sampled next: its NLL under the generated context, from the model's own forward
    with torch.inference_mode():
        logits = lm.model(torch.tensor([PROMPT + items[0][1]])).logits[0].float()
    row = len(PROMPT) + 2 + 9 - 1
    direct = -torch.log_softmax(logits[row], -1)[TAIL[0]]
    assert first["nll_ref"][0] == pytest.approx(float(direct), abs=1e-3)


def test_score_divergence_cli_analyze_and_report(smol, tmp_path):
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    hot = [r for r in rows if r["temperature"] == 2.0
           and not check_ids("smollm2-135m", r["token_ids"], r["prompt_token_ids"])]
    picked = [r for r in rows if r["temperature"] == 0.0][:2] + hot[:3]
    src = tmp_path / "gen.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in picked))
    out = tmp_path / "div.jsonl"
    res = runner.invoke(app, ["score", str(src), "--divergence", "--after", "4", "--device",
                              "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 canonical (no forward pass)" in res.output
    scored = _records(out)
    assert [r["id"] for r in scored] == [r["id"] for r in picked]
    assert all(r["divergence"]["engine"] == "fused" and r["divergence"]["after"] == 4
               for r in scored)
    assert all(max(r["divergence"]["since"], default=0) < 4 for r in scored)
    hot = [r["divergence"] for r in scored if r["temperature"] == 2.0]
    assert all(d["positions"] > 0 and d["mean"]["kl"] > 0 for d in hot)
    res = runner.invoke(app, ["analyze", str(out), "--json"])
    assert res.exit_code == 0, res.output
    groups = {g["temperature"]: g for g in json.loads(res.stdout)["groups"]}
    assert groups[0.0]["div_n"] == 2 and groups[0.0]["div_n_after"] == 0
    assert groups[0.0]["div_end_kl"] == 0.0 and groups[0.0]["div_end_top1"] == 1.0
    assert groups[2.0]["div_n_after"] == 3
    mean_kl = sum(d["mean"]["kl"] for d in hot) / 3
    assert groups[2.0]["div_kl"] == pytest.approx(mean_kl)
    assert groups[2.0]["div_kl_lo"] <= groups[2.0]["div_kl"] <= groups[2.0]["div_kl_hi"]
    html = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(out), "--html", str(html)])
    assert res.exit_code == 0, res.output
    text = html.read_text()
    assert 'id="fig-divergence"' in text and 'id="fig-divergence-temperature"' in text
    # rerunning resumes: nothing is scored twice
    res = runner.invoke(app, ["score", str(src), "--divergence", "-o", str(out)])
    assert res.exit_code == 0 and "0 records scored, 5 already done" in res.output


def test_bad_options_are_one_line_errors(tmp_path):
    src = tmp_path / "gen.jsonl"
    src.write_text(DATA.read_text().splitlines()[0] + "\n")
    for args, message in ((["--divergence", "--merge", "slerp"], "two runs"),
                          (["--divergence", "--after", "0"], "--after must be at least 1"),
                          (["--engine", "fused"], "NLL is scored on the transformers or vllm"),
                          (["--merge", "slerp", "--engine", "vllm"], "vLLM"),
                          (["--divergence", "--engine", "nope"], "unknown engine")):
        res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "o.jsonl"), *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output
