"""Engines are registered by name in one registry, the built-in ones as any other: a fake engine
registered through it runs `tmcli generate` end to end (records, seeds, resume, analysis), as
simonw/llm's tests register a fake model through the hook its plugins use. No model is loaded:
the fake writes known ids with a real tokenizer, so the analysis of its records is known too.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.aggregate.analysis import analyze_file
from tmcli.cli import app
from tmcli.generation import engines
from tmcli.generation.engines import Engine, EngineOptions, register_engine
from tmcli.generation.sweep import row_seed

TEXT = " a b c d e f g h"


class FakeEngine(Engine):
    """Writes ``TEXT``: canonically at T=0, at T>0 with its second word as two tokens (" ", "b"),
    one token longer than the canonical form, which merges it back."""

    name = "fake"
    calls: list[dict] = []

    def __init__(self, spec: str, options: EngineOptions):
        from tmcli.sources.tokenizers import tokenizer_name

        self.spec, self.model_id, self.tokenizer = spec, "fake/model", tokenizer_name(spec)
        self.device, self.dtype, self.eos_ids = "cpu", "float32", ()
        vocab = reencoder("gpt2").vocab
        self.canonical = vocab.original.encode(TEXT, add_special_tokens=False).ids
        table = vocab.bytes_to_id()
        self.split = self.canonical[:1] + [table[b" "], table[b"b"]] + self.canonical[2:]

    def batch_size(self, max_context: int, requested: int | None, rows: int) -> int:
        return requested or 3

    def decode(self, prompt_ids, rows, temperatures, seeds, *, mode, max_new_tokens, stop_at_eos,
               every=1, on_step=None):
        FakeEngine.calls.append({"rows": list(rows), "temperatures": list(temperatures),
                                 "seeds": list(seeds), "mode": mode})
        out = [(list(self.split if t > 0 else self.canonical), "length", None)
               for t in temperatures]
        if on_step is not None:
            on_step(sum(len(ids) for ids, _r, _s in out))
        return out


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    """The fake registered in a copy of the registry (gone after the test), and a model folder
    holding only GPT-2's tokenizer.json (the fake loads no weights)."""
    from tmcli.sources.locate import resolve_source

    monkeypatch.setattr(engines, "ENGINES", dict(engines.ENGINES))
    register_engine("fake", FakeEngine)
    FakeEngine.calls = []
    model = tmp_path / "fake-model"
    model.mkdir()
    shutil.copy(resolve_source("gpt2").directory / "tokenizer.json", model / "tokenizer.json")
    return model


def test_generate_runs_end_to_end_on_a_registered_engine(fake_engine, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The first prompt\nAnd a second one\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(fake_engine), "--engine", "fake", "--prompts",
            str(prompts), "--temperatures", "0,1,2", "--max-new-tokens", "9", "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and len(FakeEngine.calls) == 2  # 2 prompts x 3 T, 3 rows a batch
    assert {(r["engine"], r["model_id"], r["device"], r["dtype"]) for r in records} == \
        {("fake", "fake/model", "cpu", "float32")}
    assert {r["prompt_index"] for r in records} == {0, 1}
    # the sweep handed each row its own seed, from the prompt, temperature and --seed
    seeds = [s for c in FakeEngine.calls for s in c["seeds"]]
    from tmcli.generation.prompts import Prompt

    texts = ["The first prompt", "And a second one"]
    assert sorted(seeds) == sorted(row_seed(Prompt(i, p), t, 0)
                                   for i, p in enumerate(texts) for t in (0.0, 1.0, 2.0))
    for r in records:
        assert r["completion"] == TEXT and r["n_new_tokens"] == (8 if r["temperature"] == 0 else 9)
    # the records are the fake's, measured as any others: every T > 0 row merges one token
    analysis = analyze_file(str(out), n_resamples=50, jobs=1)
    by_t = {row["temperature"]: row for row in analysis.groups.iter_rows(named=True)}
    assert [by_t[t]["n_noncanonical"] for t in (0.0, 1.0, 2.0)] == [0, 2, 2]
    assert by_t[2.0]["mean_compression"] == pytest.approx(1 / 9)
    # the same command again resumes: nothing left to do, the engine is not even loaded
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "0 records written, 6 already done" in res.output
    assert len(FakeEngine.calls) == 2


def test_unknown_and_unregistered_engines_are_user_errors(fake_engine, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    res = CliRunner().invoke(app, ["generate", "--model", str(fake_engine), "--engine", "fast",
                                   "--prompts", str(prompts), "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2
    assert "unknown engine 'fast'; use one of: auto, fused, transformers, vllm, fake" in res.output


def test_an_engine_must_fulfil_the_contract():
    class Half(Engine):  # no decode
        def __init__(self, spec, options):
            pass

        def batch_size(self, max_context, requested, rows):
            return 1

    with pytest.raises(TypeError, match="abstract method.*decode"):
        Half("x", EngineOptions())
    for bad in ("auto", "", "a b"):
        with pytest.raises(ValueError):
            register_engine(bad, Half)
