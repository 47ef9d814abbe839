"""Truncated sampling on the engines, with real SmolLM2: the invariants that hold exactly.

At T>0, top-k 1, top-p 1e-6 and min-p 1 keep one token, so they give exactly the greedy ids;
top-k 0, top-p 1 and min-p 0 truncate nothing, so they give exactly the pure-sampling ids and
records (the same id: old files resume); every id sampled lies in the set transformers' warpers
keep for that step's logits; and `--canonical constrain` composes with truncation. The vLLM
engine's share of these is in `test_vllm_engine.py` (one vLLM start per module).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tmcli.generation import sampler
from tmcli.generation.constrain import Oracle, RowState, constrain_tokens
from tmcli.generation.engines import EngineOptions, load_engine
from tmcli.generation.sweep import generate
from tmcli.generation.truncation import NONE, Truncation
from tmcli.measure.token_bytes import vocab_for

sys.path.insert(0, str(Path(__file__).parent))
from test_truncation import _transformers  # noqa: E402

PROMPTS = [
    "The lighthouse keeper counted the ships every evening.",
    "In 1871 the bridge was finished after nine years of work by more than four hundred men.",
]
ONE_TOKEN = (Truncation(top_k=1), Truncation(top_p=1e-6), Truncation(min_p=1.0))
CUTS = (Truncation(top_k=50), Truncation(top_p=0.9), Truncation(min_p=0.05),
        Truncation(40, 0.95, 0.02))
N = 12


def invariant_rows(engine, prompt_ids: list[list[int]], t: float = 1.5):
    """Per prompt, in one batch: greedy, pure at ``t``, each one-token setting at ``t``, and
    top-k 0 / top-p 1 / min-p 0 given explicitly; (ids per row) per prompt."""
    settings = [NONE, NONE, *ONE_TOKEN, Truncation(0, 1.0, 0.0)]
    temps = [0.0] + [t] * (len(settings) - 1)
    rows = [p for p in range(len(prompt_ids)) for _ in settings]
    out = engine.decode(prompt_ids, rows, temps * len(prompt_ids),
                        [1000 + r for r in rows], mode="off", max_new_tokens=N,
                        stop_at_eos=False, truncation=settings * len(prompt_ids))
    ids = [g for g, _reason, _stats in out]
    return [ids[k:k + len(settings)] for k in range(0, len(ids), len(settings))]


def check_invariants(per_prompt) -> None:
    sampled_differs = False
    for greedy, pure, *one, off in per_prompt:
        assert all(ids == greedy for ids in one)  # top-k 1, top-p 1e-6, min-p 1: greedy
        assert off == pure  # nothing truncated: pure sampling, bit for bit
        sampled_differs |= pure != greedy
    assert sampled_differs  # T=1.5 does sample: the checks above could fail


@pytest.fixture(scope="module")
def prompt_ids(smol):
    _lm, tok = smol
    return [tok.encode(p).ids for p in PROMPTS]


@pytest.fixture(scope="module")
def fused(cache):
    engine = load_engine("fused", "smollm2-135m", EngineOptions(device="cpu"))
    yield engine
    engine.close()


def test_one_token_settings_are_greedy_and_off_settings_are_pure(fused, prompt_ids, cache):
    assert fused.name == "fused"
    check_invariants(invariant_rows(fused, prompt_ids))
    engine = load_engine("transformers", "smollm2-135m", EngineOptions(device="cpu"))
    try:
        assert engine.name == "transformers"
        check_invariants(invariant_rows(engine, prompt_ids))
    finally:
        engine.close()


def test_every_sampled_id_lies_in_transformers_kept_set(fused, prompt_ids, monkeypatch):
    """Each step's logits, as the fused engine samples them, through transformers' warpers."""
    seen = []
    real = sampler.sample

    def watch(logits, temps, noise, truncation=None):
        ids = real(logits, temps, noise, truncation)
        seen.append((logits.clone(), temps.clone(), list(truncation), ids.clone()))
        return ids

    monkeypatch.setattr(sampler, "sample", watch)
    rows = [p for p in range(len(prompt_ids)) for _ in CUTS]
    fused.decode(prompt_ids, rows, [1.3] * len(rows), list(range(len(rows))), mode="off",
                 max_new_tokens=8, stop_at_eos=False, truncation=list(CUTS) * len(PROMPTS))
    assert len(seen) == 8
    for logits, temps, cuts, ids in seen:
        for r, cut in enumerate(cuts):
            kept = _transformers(logits[r:r + 1].clone(), float(temps[r]), cut)[0]
            assert bool(kept[ids[r]]), (cut, int(ids[r]))
            assert int(kept.sum()) < logits.shape[1]  # it did truncate


def test_records_carry_the_settings_and_pure_ids_are_unchanged(fused, tmp_path):
    base = dict(temperatures=[0.0, 1.5], max_new_tokens=8, engine=fused)
    generate("smollm2-135m", PROMPTS[:1], tmp_path / "pure.jsonl", **base)
    generate("smollm2-135m", PROMPTS[:1], tmp_path / "off.jsonl", top_k=0, top_p=1.0, min_p=0.0,
             **base)
    s = generate("smollm2-135m", PROMPTS[:1], tmp_path / "cut.jsonl", top_k=[0, 50],
                 top_p=[1.0, 0.9], **base)
    assert s.written == 2 * 4  # temperatures x (top-k x top-p)
    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    pure, off, cut = read("pure.jsonl"), read("off.jsonl"), read("cut.jsonl")
    assert [(r["id"], r["token_ids"]) for r in pure] == [(r["id"], r["token_ids"]) for r in off]
    assert all(":top_" not in r["id"] for r in pure)
    assert {(r["top_k"], r["top_p"], r["min_p"]) for r in pure} == {(0, 1.0, 0.0)}
    by = {(r["prompt_index"], r["temperature"], r["top_k"], r["top_p"]): r for r in cut}
    both = by[(0, 1.5, 50, 0.9)]
    assert ":T1.5:top_k50:top_p0.9:p0:" in both["id"]
    assert {k: both["sampling"][k] for k in ("top_k", "top_p", "min_p")} == \
        {"top_k": 50, "top_p": 0.9, "min_p": 0.0}
    assert by[(0, 1.5, 0, 1.0)]["id"] == next(r["id"] for r in pure if r["prompt_index"] == 0
                                              and r["temperature"] == 1.5)
    # greedy rows are greedy whatever the truncation; common random numbers across settings
    assert len({tuple(r["token_ids"]) for k, r in by.items() if k[:2] == (0, 0.0)}) == 1


def test_constrain_draws_from_the_canonical_part_of_the_kept_set():
    """A kept set whose only token would make the text non-canonical: the draw falls back to
    the canonical tokens of the whole distribution (same noise), and the step is counted."""
    v = vocab_for("smollm2-135m")
    oracle = Oracle(v)
    enc = lambda text: v.encode_texts([text])[0]  # noqa: E731
    sp, t, the = enc(" ")[0], enc("t")[0], enc(" the")[0]
    # after " ", "t" can never be canonical (" t..." is one token); " the" is
    assert oracle.viable([[sp, t], [sp, the]], [False, False], [0, 0]) == [False, True]
    whole = torch.zeros(1, v.size)
    whole[0, t], whole[0, the] = 5.0, 4.0  # the best token is the non-canonical one
    kept = torch.full_like(whole, float("-inf"))
    kept[0, t] = 5.0  # top-k 1 keeps only "t"
    row = RowState(prompt=[sp])
    got = constrain_tokens(oracle, [row], kept.clone(), kept.argmax(-1), 64,
                           untruncated=whole.clone())
    assert int(got[0]) == the
    assert (row.stats.rejected, row.stats.untruncated, row.stats.gave_up) == (1, 1, 0)
    # while the kept set holds a canonical token, the draw stays in it: no fallback
    kept[0, the] = 4.0
    row = RowState(prompt=[sp])
    got = constrain_tokens(oracle, [row], kept.clone(), kept.argmax(-1), 64,
                           untruncated=whole.clone())
    assert int(got[0]) == the and row.stats.untruncated == 0
