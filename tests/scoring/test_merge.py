"""`score --merge slerp`: seed 001's padding rule, SLERP, and the merged forward against the
unmerged model, with numbers known by construction, on the real SmolLM2."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tmcli.aggregate.merge import merge_table
from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.scoring.compare import log_softmax
from tmcli.scoring.merge import (
    load_stack,
    merge_states,
    merged_vs_reference,
    pair_plan,
    parse_cuts,
    slerp,
)

runner = CliRunner()
IDS = [504, 1463, 282, 260, 1573, 33059, 335, 260, 5761, 4051, 5634, 281, 216, 33, 40, 34]


def test_slerp_returns_each_endpoint_at_t0_and_t1_exactly():
    g = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(5, 576, generator=g), torch.randn(5, 576, generator=g)
    v1[4] = 0.0  # a null state, as the seed's padding makes
    assert torch.equal(slerp(v0, v1, torch.zeros(5)), v0)
    assert torch.equal(slerp(v0, v1, torch.ones(5)), v1)
    v1[3] = 2.5 * v0[3]  # colinear: linear interpolation
    mid = slerp(v0, v1, torch.full((5,), 0.5))
    assert torch.allclose(mid[3], 1.75 * v0[3])


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle():
    v0, v1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for t in (0.25, 0.5, 0.75):
        got = slerp(v0, v1, torch.tensor([t]))[0]
        assert torch.allclose(got, torch.tensor([math.cos(t * math.pi / 2),
                                                 math.sin(t * math.pi / 2)]), atol=1e-6)


def test_the_seeds_padding_rule():
    assert [pair_plan(n) for n in (1, 2, 3)] == [None, None, None]
    # even n: [0, x0 .. x3, 0] -> x0, slerp(x1, x2), x3
    assert pair_plan(4) == ([-1, 1, 3], [0, 2, -1], [1.0, 0.5, 0.0])
    # odd n: [0, x0 .. x3, 0, x4, 0] -> x0, slerp(x1, x2), x3, x4
    assert pair_plan(5) == ([-1, 1, 3, 4], [0, 2, -1, -1], [1.0, 0.5, 0.0, 0.0])
    for n in range(4, 40):
        a, b, t = pair_plan(n)
        assert len(t) == (n // 2 + 1 if n % 2 == 0 else (n + 3) // 2)
        assert sorted(i for i in a + b if i >= 0) == list(range(n))  # every state once
    h = torch.arange(12.0).view(6, 2) + 1
    merged, pos = merge_states(h, torch.arange(6.0))
    assert torch.equal(merged[0], h[0]) and torch.equal(merged[-1], h[-1])
    assert pos.tolist() == [0.0, 1.5, 3.5, 5.0]  # interpolated like the states
    assert merge_states(h, torch.arange(6.0), "renumber")[1].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.fixture(scope="module")
def stacks(smol):
    """SmolLM2's layers on both engines, built once for the module."""
    lm, _tok = smol
    return {name: load_stack(name, lm) for name in ("fused", "transformers")}


@pytest.mark.parametrize("engine", ["fused", "transformers"])
def test_merged_forward_against_the_unmerged_model(smol, stacks, engine):
    lm, _tok = smol
    stack = stacks[engine]
    last = stack.n_layers - 1
    with torch.inference_mode():
        own = log_softmax(lm.model(torch.tensor([IDS])).logits[0, -1])
        ref, merged, m = merged_vs_reference(stack, IDS, [0, 10, last])
        assert m == len(IDS) // 2 + 1
        assert (ref - own).abs().max() < 1e-3  # the layer-by-layer run is the model's forward
        # at the last cut the last state is kept whole: the prediction cannot change
        assert torch.equal(merged[last], ref)
        assert (merged[0] - ref).abs().max() > 0.1  # an early merge does change it
        for n in (1, 2):  # sequences the seed keeps as they are: unchanged at every cut
            ref_n, merged_n, m_n = merged_vs_reference(stack, IDS[:n], [0, 10, last])
            assert m_n == n and all(torch.equal(v, ref_n) for v in merged_n.values())


def test_fused_and_transformers_merges_agree(stacks):
    with torch.inference_mode():
        a = merged_vs_reference(stacks["fused"], IDS, [6])[1][6]
        b = merged_vs_reference(stacks["transformers"], IDS, [6])[1][6]
    assert (a - b).abs().max() < 1e-3


def test_cuts():
    assert parse_cuts(None, 30) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert parse_cuts("all", 3) == [0, 1, 2] and parse_cuts("5,2,5", 30) == [2, 5]
    for bad in ("30", "-1", "x", ""):
        with pytest.raises(TmcliError):
            parse_cuts(bad, 30)


def test_score_merge_cli_and_its_curves(smol, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"id": "d0", "model": "smollm2-135m", "token_ids": IDS}) + "\n")
    out = tmp_path / "merged.jsonl"
    res = runner.invoke(app, ["score", str(src), "--merge", "slerp", "--layer", "3,29",
                              "--lengths", "2,8,64", "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    merge = json.loads(out.read_text())["merge"]
    assert merge["engine"] == "fused" and merge["positions"] == "interpolate"
    assert [(r["layer"], r["length"]) for r in merge["rows"]] == [(3, 2), (29, 2), (3, 8), (29, 8)]
    for r in merge["rows"]:
        if r["length"] == 2 or r["layer"] == 29:  # unchanged by construction
            assert r["kl"] == r["kl_rev"] == 0.0 and r["top1"] == r["top5"] == 1.0
    assert merge["rows"][2]["merged_length"] == 5 and merge["rows"][2]["nll_ref"] > 0
    table = merge_table(str(out))
    assert table.height == 4 and table["n"].to_list() == [1] * 4
    for args, message in ((["--lengths", "x"], "--lengths"),
                          (["--merge", "avg"], "unknown merge"),
                          (["--merge-positions", "mid"], "interpolate or renumber")):
        res = runner.invoke(app, ["score", str(src), "--merge", "slerp", "--device", "cpu",
                                  "-o", str(tmp_path / "x.jsonl"), *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
