"""Truncation (top-k, top-p, min-p) keeps exactly the tokens transformers' own warpers keep, on
real SmolLM2 logits, ties included; every sampled id lies in the kept set.

The logits are the model's own next-token logits at several positions of WikiText prompts, as
float32, and the same rounded to bfloat16 and to a 1/8 grid, where ties are everywhere (a
bfloat16 model's logits tie like that): the kept set of tied scores at a top-k or top-p cut is
then decided by transformers' rules, which tmcli must follow (top-k keeps every tie of the k-th
score; top-p keeps the tied scores that transformers' sort puts last).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tmcli.errors import TmcliError
from tmcli.generation import top_p
from tmcli.generation.sampler import race_scores
from tmcli.generation.truncation import NONE, Truncation, truncate_

TEMPERATURES = (0.7, 1.6)
# each axis alone over its range, and the three together (the order they apply in matters there)
SETTINGS = [*(Truncation(top_k=k) for k in (1, 5, 50, 1000)),
            *(Truncation(top_p=p) for p in (1e-6, 0.5, 0.9, 0.95, 0.999)),
            *(Truncation(min_p=m) for m in (0.01, 0.05, 0.2, 1.0)),
            Truncation(50, 0.9), Truncation(50, 0.95, 0.05), Truncation(1000, 0.5, 0.01),
            Truncation(0, 0.9, 0.1)]


@pytest.fixture(scope="module")
def real_logits(smol, wikitext_lines):
    """(rows x vocab) float32 next-token logits of SmolLM2 at positions 8, 24, 40, 56 of 12
    WikiText lines (48 distributions, from peaked to flat)."""
    lm, tok = smol
    ids = torch.tensor([tok.encode(line).ids[:64] for line in wikitext_lines[:12]])
    with torch.inference_mode():
        out = lm.model(ids).logits.float()
    return out[:, 8::16].reshape(-1, out.shape[-1]).contiguous()


def _transformers(scores: torch.Tensor, t: float, s: Truncation) -> torch.Tensor:
    """What `generate(do_sample=True, temperature=t, top_k=..., top_p=..., min_p=...)` keeps:
    its warpers in `_get_logits_processor`'s order, each only when it is set."""
    if t != 1.0:
        scores = TemperatureLogitsWarper(t)(None, scores)
    if s.top_k:
        scores = TopKLogitsWarper(s.top_k)(None, scores)
    if s.top_p < 1:
        scores = TopPLogitsWarper(s.top_p)(None, scores)
    if s.min_p:
        scores = MinPLogitsWarper(s.min_p)(None, scores)
    return torch.isfinite(scores)


def _tmcli(scores: torch.Tensor, t: float, s: Truncation) -> torch.Tensor:
    scaled = torch.div(scores, torch.full((scores.shape[0],), t)[:, None])
    return torch.isfinite(truncate_(scaled, [s] * scores.shape[0]))


@pytest.mark.parametrize("grid", ["float32", "bfloat16", "eighths"])
def test_kept_sets_equal_transformers_warpers_on_real_logits(real_logits, grid):
    logits = {"float32": real_logits[::2], "bfloat16": real_logits[::3].bfloat16().float(),
              "eighths": torch.round(real_logits[1::3] * 8) / 8}[grid]
    ties_at_a_cut = 0
    for t, s in itertools.product(TEMPERATURES, SETTINGS):
        want = _transformers(logits.clone(), t, s)
        got = _tmcli(logits.clone(), t, s)
        bad = (want != got).any(1).nonzero().flatten().tolist()
        assert not bad, f"T={t} {s}: rows {bad[:5]} keep other tokens than transformers"
        if s.top_k and not s.top_p < 1 and not s.min_p:
            kept = got.sum(1)
            ties_at_a_cut += int((kept > s.top_k).sum())
    if grid != "float32":  # the rounded logits do tie at the cuts: the test covers ties
        assert ties_at_a_cut > 0


def test_top_p_cut_inside_tied_scores_follows_transformers_sort():
    """Scores built so that top-p's cut falls inside a run of equal scores: transformers keeps
    those its (unstable) sort puts last; tmcli keeps the same ones, with and without top-k."""
    torch.manual_seed(0)
    scores = torch.randn(64, 5000)
    scores[:, 100:140] = 2.5  # 40 tied tokens in the upper tail
    scores[:, 7] = 6.0
    for p in (0.3, 0.5, 0.7):
        for s in (Truncation(top_p=p), Truncation(top_k=200, top_p=p)):
            assert torch.equal(_tmcli(scores.clone(), 1.0, s), _transformers(scores.clone(), 1.0, s))


def test_top_p_where_one_minus_p_is_a_cumulative_value_follows_transformers(real_logits):
    """p chosen so that float32(1 - p) is exactly one of transformers' cumulative values near
    the cut (and the float64 steps either side): whether that token stays is then decided by
    the last bit of float32 rounding, where tmcli's shortcuts must defer to transformers'
    arithmetic. With top-k first, tmcli decides from its own softmax of the few scores left
    and an error bound on transformers' softmax of the whole row; were that bound taken as zero,
    hundreds of these cases would keep other tokens."""
    for row in real_logits[::8]:
        for k in (0, 50):
            scores = row[None] / 1.3
            if k:
                scores = TopKLogitsWarper(k)(None, scores)
            cumulative = scores.sort().values.softmax(-1).cumsum(-1)[0]
            ps = set()
            for target in (0.05, 0.1, 0.5):
                j = int(torch.searchsorted(cumulative, torch.tensor([target])))
                for i in (j - 1, j, j + 1):
                    if 0 < i < len(cumulative) - 1 and cumulative[i] > 0:
                        p = 1 - float(cumulative[i])
                        ps |= {p, float(np.nextafter(p, 0)), float(np.nextafter(p, 1))}
            assert ps
            for p in sorted(ps):
                s = Truncation(k, p)
                assert torch.equal(_tmcli(row[None], 1.3, s), _transformers(row[None], 1.3, s)), s


def test_top_p_block_sums_defer_where_rounding_could_decide():
    """`_cut_blocks` finds the cut from float64 block sums, an order of addition other than
    transformers' running sum (torch's CPU cumsum accumulates float32 in float64): wherever it
    answers sure, its cut is the running sum's, even with the threshold exactly at, or a float64
    step or two from, a running-sum value at the cut; right at one it is never sure (but for
    the last token, which stays whatever its sum)."""
    gen = torch.Generator().manual_seed(3)
    sure_seen = 0
    for n in (49152, 3000, 300):
        x = torch.randn(32, n, generator=gen) * 3
        probs = torch.from_numpy(np.sort(x.numpy(), axis=1)).softmax(-1).numpy()
        running = np.cumsum(probs, axis=1, dtype=np.float64)
        assert np.array_equal(running.astype(np.float32),
                              torch.from_numpy(probs).cumsum(-1).numpy())
        for target in (0.01, 0.05, 0.3):
            at = np.array([np.searchsorted(r, target) for r in running])
            for step in (-2, -1, 0, 1, 2):
                mid = running[np.arange(32), at]
                for _ in range(abs(step)):
                    mid = np.nextafter(mid, np.inf if step > 0 else -np.inf)
                cut, sure = top_p._cut_blocks(probs, mid)
                want = np.minimum((running < mid[:, None]).sum(axis=1), n - 1)
                assert (cut[sure] == want[sure]).all()
                if step == 0:
                    assert not sure[at < n - 1].any()
                sure_seen += int(sure.sum())
    assert sure_seen > 0
    x = torch.randn(32, 49152, generator=gen)
    probs = torch.from_numpy(np.sort(x.numpy(), axis=1)).softmax(-1).numpy()
    cut, sure = top_p._cut_blocks(probs, np.full(32, 0.05000000074505806))
    assert sure.all()  # an ordinary threshold: decided, no cumulative sum needed


def test_the_exact_paths_alone_give_transformers_kept_sets(real_logits, monkeypatch):
    """With both shortcuts made to decide nothing (the bound after top-k, the float64 block sums),
    every row goes through transformers' own sorted softmax and cumulative sum."""
    monkeypatch.setattr(top_p, "_top_p_few", lambda values, ps, ids: {})
    monkeypatch.setattr(top_p, "_cut_blocks", lambda probs, mid: (
        np.zeros(len(probs), dtype=np.int64), np.zeros(len(probs), dtype=bool)))
    logits = real_logits[::4]
    for t, s in itertools.product(TEMPERATURES, (Truncation(top_p=0.95), Truncation(top_p=1e-6),
                                                 Truncation(50, 0.9), Truncation(0, 0.5, 0.05))):
        assert torch.equal(_tmcli(logits.clone(), t, s), _transformers(logits.clone(), t, s)), s


def test_settings_that_truncate_nothing_leave_the_scores_bit_for_bit(real_logits):
    scores = real_logits / 1.3
    for s in (NONE, Truncation(top_k=real_logits.shape[1]), Truncation(top_k=10**9)):
        assert torch.equal(truncate_(scores.clone(), [s] * scores.shape[0]), scores)
    assert not NONE.active and Truncation(top_p=0.9).active and NONE.label() == "pure"
    assert Truncation(50, 0.95, 0.05).label() == "top-k 50 top-p 0.95 min-p 0.05"


def test_rows_keep_their_own_settings_in_a_mixed_batch(real_logits):
    rows = real_logits[:len(SETTINGS)]
    settings = [SETTINGS[i % len(SETTINGS)] for i in range(rows.shape[0])]
    got = torch.isfinite(truncate_(rows.clone(), settings))
    for i, s in enumerate(settings):
        assert torch.equal(got[i], _transformers(rows[i:i + 1].clone(), 1.0, s)[0])


def test_every_sampled_id_lies_in_the_kept_set(real_logits):
    """80 draws per row and setting through the race with truncation: every id drawn is kept,
    and a setting that keeps one token (top-k 1, top-p 1e-6, min-p 1) draws the argmax."""
    logits = real_logits[::6]
    n = logits.shape[0]
    temps = torch.full((n,), 1.3)
    gen = torch.Generator().manual_seed(0)
    for s in (Truncation(top_k=50), Truncation(top_p=0.9), Truncation(min_p=0.05),
              Truncation(40, 0.95, 0.02), Truncation(top_k=1), Truncation(top_p=1e-6),
              Truncation(min_p=1.0)):
        kept = _transformers(logits.clone(), 1.3, s)
        for _ in range(10):
            noise = torch.rand(n, logits.shape[1], generator=gen).log_().neg_().log_()
            ids = race_scores(logits, temps, noise, [s] * n).argmax(-1)
            assert bool(kept[torch.arange(n), ids].all()), s
            if kept.sum(1).max() == 1:
                assert torch.equal(ids, logits.argmax(-1))


def test_settings_are_checked():
    for bad in (dict(top_k=-1), dict(top_k=2.5), dict(top_p=1.5), dict(top_p=-0.1),
                dict(min_p=2.0)):
        with pytest.raises(TmcliError):
            Truncation(**bad)
