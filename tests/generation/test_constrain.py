"""Canonical generation (`generate --canonical constrain|retokenize`) and NLL scoring.

Real SmolLM2 generation at T=2 (where `off` produces non-canonical completions), the oracle's
viability rule on constructed token strings, KV-cache rollback against a fresh decode, and the
canonical-ids NLL against the model's own forward.
"""

from __future__ import annotations

import json

import pytest
import torch

from tmcli.aggregate.analysis import analyze_file
from tmcli.generation.constrain import Oracle
from tmcli.generation.sweep import generate
from tmcli.measure.token_bytes import vocab_for

PROMPTS = [
    "The lighthouse keeper counted the ships every evening.",
    "Rain had fallen on the valley for three days, and the river was rising fast.",
    "In 1871 the bridge was finished after nine years of work by more than four hundred men.",
    "The committee published its report on the new railway line in",
]


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the oracle -----------------------------------------------------------------------------------

def test_oracle_viability_follows_the_pretokenizer_lookahead():
    v = vocab_for("smollm2-135m")
    o = Oracle(v)
    enc = lambda text: v.encode_texts([text])[0]  # noqa: E731
    a, sp, nl, b = enc("a")[0], enc(" ")[0], enc("\n")[0], enc("b")[0]
    assert enc("a \n") == [a, enc(" \n")[0]]  # " \n" is one token at the end of a text...
    assert enc("a \nb") == [a, sp, nl, b]  # ...but splits before a letter (\s+(?!\S))
    # so [a, " ", "\n"] is not canonical as it stands, yet a continuation makes it canonical:
    assert o.viable([[a, sp, nl]], [False], [0]) == [True]
    assert o.viable([[a, sp, nl]], [True], [0]) == [False]  # not as the last token
    assert o.viable([[a, sp, nl, b]], [True], [0]) == [True]
    # " together" spelled letter by letter is one token canonically: no continuation helps
    spelled = [enc(c)[0] for c in " together"]
    assert o.viable([spelled[:3]], [False], [0]) == [False]
    assert o.viable([spelled[:1]], [False], [0]) == [True]
    # a difference starting before skip_before (in the prompt, or straddling its end) is
    # ignored; one starting after it is not
    assert o.viable([[*spelled, b]], [True], [len(spelled)]) == [True]
    assert o.viable([[*spelled, b]], [True], [2]) == [True]
    assert o.viable([[b, *spelled]], [True], [1]) == [False]


# -- KV-cache rollback ----------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_rollback_forgets_tokens_exactly(fast):
    import transformers

    from tmcli.generation.engines.decoders import HFDecoder
    from tmcli.generation.engines.llama_decoder import LlamaDecoder

    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=6,
                                   num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    make = LlamaDecoder if fast else HFDecoder
    prompt = torch.randint(3, 97, (2, 5))
    mask = torch.ones((2, 5), dtype=torch.bool)
    mask[1, :2] = False
    x, y, z, w = (torch.randint(3, 97, (2,)) for _ in range(4))
    with torch.inference_mode():
        dec = make(model)
        dec.prefill(prompt, mask, 2)  # capacity 2: the rolled-back run has to grow the cache
        for t in (x, y, z):
            dec.step(t)
        dec.rollback([0, 1], [2, 1])  # row 0 forgets y, z; row 1 forgets z
        got0 = dec.step(torch.stack([w[0], w[1]]))
        ref = make(model)
        ref.prefill(prompt, mask, 4)
        ref.step(x)
        a = ref.step(w)  # row 0: x, w
        ref2 = make(model)
        ref2.prefill(prompt, mask, 4)
        ref2.step(x), ref2.step(y)
        b = ref2.step(w)  # row 1: x, y, w
    assert torch.allclose(got0[0], a[0], atol=1e-4), (got0[0] - a[0]).abs().max()
    assert torch.allclose(got0[1], b[1], atol=1e-4), (got0[1] - b[1]).abs().max()


# -- real generation with SmolLM2 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def hot(smol, tmp_path_factory):
    """The same prompts and seeds at T=2 in every mode (48 tokens, 2 rows per prompt)."""
    out = tmp_path_factory.mktemp("canonical")
    runs = {}
    for mode in ("off", "constrain", "retokenize"):
        path = out / f"{mode}.jsonl"
        generate("smollm2-135m", PROMPTS, path, temperatures=[2.0, 1.6], max_new_tokens=48,
                 device="cpu", canonical=mode)
        runs[mode] = (path, _records(path))
    return runs


def test_constrain_at_t2_gives_only_canonical_completions(hot):
    off_path, _ = hot["off"]
    path, recs = hot["constrain"]
    off = analyze_file(str(off_path)).samples
    assert off["noncanonical"].sum() >= 1  # the free model does go off-canonical here
    samples = analyze_file(str(path)).samples
    assert samples.height == 8
    assert samples["noncanonical"].sum() == 0
    assert samples["boundary_merge"].sum() == 0
    assert (samples["n_tokens"] == 48).all()
    stats = [r["canonical_stats"] for r in recs]
    assert sum(s["rejected"] for s in stats) >= 1 and sum(s["gave_up"] for s in stats) == 0
    assert {r["canonical"] for r in recs} == {"constrain"}


def test_retokenize_always_ends_canonical(hot):
    path, recs = hot["retokenize"]
    samples = analyze_file(str(path)).samples
    assert samples["noncanonical"].sum() == 0
    assert (samples["n_tokens"] == 48).all()
    stats = [r["canonical_stats"] for r in recs]
    assert sum(s["rewrites"] for s in stats) >= 1  # it did have something to rewrite
    assert {r["canonical"] for r in recs} == {"retokenize"}
    assert all(r["retokenize_every"] == 1 for r in recs)


def test_modes_share_seeds_and_agree_until_they_intervene(hot):
    """Common random numbers: a constrain row equals its off row up to the first rejection."""
    off = {(r["prompt_index"], r["temperature"]): r["token_ids"] for r in hot["off"][1]}
    untouched = [r for r in hot["constrain"][1] if r["canonical_stats"]["rejected"] == 0]
    assert untouched
    for r in untouched:
        assert r["token_ids"] == off[r["prompt_index"], r["temperature"]]


def test_at_t0_all_modes_give_the_same_text(smol, tmp_path):
    texts = {}
    for mode in ("off", "constrain", "retokenize"):
        path = tmp_path / f"{mode}.jsonl"
        generate("smollm2-135m", PROMPTS, path, temperatures=[0.0], max_new_tokens=32,
                 device="cpu", canonical=mode)
        texts[mode] = [(r["prompt_index"], r["token_ids"]) for r in _records(path)]
    assert not analyze_file(str(tmp_path / "off.jsonl")).samples["noncanonical"].any()
    assert texts["off"] == texts["constrain"] == texts["retokenize"]


# -- NLL on canonical ids -------------------------------------------------------------------------

def test_nll_is_scored_on_canonical_ids(smol):
    from tmcli.measure.reencode import Reencoder
    from tmcli.scoring.nll import score_many

    lm, tok = smol
    v = vocab_for("smollm2-135m")
    r = Reencoder(v)
    prompt = tok.encode("The ships came back to the harbour").ids
    canonical = v.encode_texts([" together at dawn."])[0]
    spelled = [v.encode_texts([c])[0][0] for c in " together"] + canonical[1:]
    (a, n_a), (b, n_b) = score_many(lm, r, [(prompt, canonical), (prompt, spelled)])
    assert n_a == n_b == len(canonical) and abs(a - b) < 1e-6  # same text, same score
    with torch.inference_mode():
        logits = lm.model(torch.tensor([prompt + canonical])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    direct = -logp[torch.arange(len(canonical)), torch.tensor(canonical)].sum()
    assert abs(a - float(direct)) < 1e-3 * len(canonical)


def test_cli_score_filters_resumes_and_names_bad_lines(hot, tmp_path):
    from typer.testing import CliRunner

    from tmcli.cli import app

    runner = CliRunner()
    src, recs = hot["constrain"]
    out = tmp_path / "scored.jsonl"
    res = runner.invoke(app, ["score", str(src), "-o", str(out), "--temperatures", "2"])
    assert res.exit_code == 0, res.output
    scored = _records(out)
    assert sorted(r["id"] for r in scored) == sorted(r["id"] for r in recs)  # nothing lost
    hot2 = [r for r in scored if r["temperature"] == 2.0]
    assert len(hot2) == 4 and all(r["nll_tokens"] == 48 and r["nll_token"] > 0 for r in hot2)
    v = vocab_for("smollm2-135m")
    chars = [len(v.spell(r["token_ids"]).decode("utf-8", errors="replace")) for r in hot2]
    assert all(abs(r["nll_token"] * 48 - r["nll_char"] * c) < 1e-3 for r, c in zip(hot2, chars))
    assert not any("nll_token" in r for r in scored if r["temperature"] != 2.0)
    res = runner.invoke(app, ["score", str(src), "-o", str(out), "--temperatures", "2"])
    assert res.exit_code == 0 and len(_records(out)) == 8  # resumed: nothing added
    bad = tmp_path / "bad.jsonl"
    bad.write_text(src.read_text().splitlines()[0] + "\n{not json\n")
    res = runner.invoke(app, ["score", str(bad), "-o", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output and "Traceback" not in res.output
