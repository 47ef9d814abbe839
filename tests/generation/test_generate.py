"""`tmcli generate`: real generation with SmolLM2 on CPU, batching equivalence, resume after
SIGKILL, and the user errors, through the API and the CLI.

The converted SmolLM2 checkpoint is built once per test session (~20-50 s) in a temporary
TMCLI_CACHE, or taken from TMCLI_CACHE when the caller sets one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tmcli.cli import app  # noqa: E402
from tmcli.errors import TmcliError  # noqa: E402
from tmcli.generation.engines.transformers import decode_batch
from tmcli.generation.prompts import Prompt, read_prompts
from tmcli.generation.sweep import generate, record_id

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "prompts.txt"
PROMPTS = [
    "The lighthouse keeper counted the ships every evening.",
    "Rain had fallen on the valley for three days, and the river was rising fast.",
    "Her notebook",
    "In 1871 the bridge was finished after nine years of work by more than four hundred men.",
]
runner = CliRunner()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- options and prompts (no model) ---------------------------------------------------------------

def test_prompts_from_text_and_jsonl_keep_file_indices(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("short\n\n  a much longer prompt line  \nmid length\n")
    assert read_prompts(str(text)) == [Prompt(0, "short"), Prompt(1, "a much longer prompt line"),
                                       Prompt(2, "mid length")]
    assert [p.index for p in read_prompts(str(text), min_chars=6)] == [1, 2]
    assert [p.index for p in read_prompts(str(text), n_prompts=2)] == [0, 1]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"prompt number {i}", "n": i}) for i in range(20)))
    a = read_prompts(str(jl), shuffle=True, seed=3, n_prompts=5)
    assert a == read_prompts(str(jl), shuffle=True, seed=3, n_prompts=5)
    assert a != read_prompts(str(jl), shuffle=True, seed=4, n_prompts=5)
    assert all(p.text == f"prompt number {p.index}" for p in a)
    with pytest.raises(TmcliError, match="no 'prompt' string field"):
        read_prompts(str(jl), field="prompt")
    with pytest.raises(TmcliError, match="lower --min-chars"):
        read_prompts(str(text), min_chars=640)


def test_sample_prompts_are_short_and_original():
    prompts = read_prompts(str(SAMPLE))
    assert len(prompts) >= 16 and all(40 <= len(p.text) <= 300 for p in prompts)


# -- the decode loop, with a scripted decoder ------------------------------------------------------

class Scripted:
    """Logits that make row r say token 10 + r, then EOS (id 1) at step r + 1."""

    name = "scripted"
    device = "cpu"

    def prefill(self, ids, mask, max_new_tokens):
        self.rows = torch.arange(ids.shape[0])
        self.step_no = 0
        return self._logits()

    def _logits(self):
        logits = torch.zeros((len(self.rows), 32))
        for i, r in enumerate(self.rows.tolist()):
            logits[i, 10 + r] = 5.0
            if self.step_no >= r + 1:
                logits[i, 1] = 9.0
        return logits

    def step(self, ids):
        self.step_no += 1
        return self._logits()

    def select(self, rows):
        self.rows = self.rows[rows]


def test_forced_length_suppresses_eos_and_stop_at_eos_drops_finished_rows():
    prompts, rows = [[5], [6, 7], [8], [9]], [0, 1, 2, 3]
    forced = decode_batch(Scripted(), prompts, rows, [0.0] * 4, [0] * 4, max_new_tokens=6,
                          eos_ids=[1])
    assert all(len(ids) == 6 and 1 not in ids and reason == "length" for ids, reason in forced)
    stopped = decode_batch(Scripted(), prompts, rows, [0.0] * 4, [0] * 4, max_new_tokens=6,
                           eos_ids=[1], stop_at_eos=True)
    assert stopped == [([10], "eos"), ([11, 11], "eos"), ([12, 12, 12], "eos"),
                       ([13, 13, 13, 13], "eos")]


def test_sampling_follows_the_temperature_distribution():
    from tmcli.generation.sampler import sample

    n = 4000
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).repeat(n, 1)
    noise = torch.empty(n, 4).exponential_(generator=torch.Generator().manual_seed(0)).log()
    drawn = sample(logits, torch.ones(n), noise)
    freq = torch.bincount(drawn, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03)
    assert sample(logits, torch.zeros(n), noise).eq(0).all()  # T=0 is argmax
    mixed = sample(logits, torch.tensor([0.0, 1.0] * (n // 2)), noise)
    assert mixed[0::2].eq(0).all() and mixed[1::2].equal(drawn[1::2])
    hot = torch.bincount(sample(logits, torch.full((n,), 2.0), noise), minlength=4).float() / n
    # T=2 samples from p^(1/2) normalised: 0.417, 0.323, 0.264, 0
    assert torch.allclose(hot, torch.tensor([0.417, 0.323, 0.264, 0.0]), atol=0.03)


def test_noise_stream_is_the_batch_noise_addressed_by_step():
    """The vLLM logits processor draws a row's noise by step: a step asked for again (vLLM
    samples and discards rows still prefilling) repeats its draw; a later step skips ahead."""
    from tmcli.generation.sampler import NoiseStream, RowNoise

    batch = RowNoise([11, None, 12], "cpu")
    steps = [batch.draw([0, 1, 2], 50) for _ in range(4)]
    one = NoiseStream(11, "cpu")
    assert torch.equal(one.draw(0, 50), steps[0][0])
    assert torch.equal(one.draw(0, 50), steps[0][0])  # the same step again
    assert torch.equal(one.draw(1, 50), steps[1][0])
    assert torch.equal(one.draw(3, 50), steps[3][0])  # step 2 skipped
    assert torch.equal(NoiseStream(12, "cpu").draw(2, 50), steps[2][2])
    assert torch.equal(steps[0][1], torch.full((50,), 0.0))  # greedy rows: log(-log(1/e)) = 0
    with pytest.raises(ValueError, match="gone"):
        one.draw(1, 50)


# -- the fused decoder against transformers on tiny random models ---------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_fused_decoder_matches_transformers(arch):
    import transformers

    from tmcli.generation.engines.decoders import HFDecoder
    from tmcli.generation.engines.llama_decoder import LlamaDecoder

    kw = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128)
    cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[arch](**kw)
    if arch == "mistral":
        cfg.sliding_window = None
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    assert LlamaDecoder.supports(model)
    ids = torch.randint(3, 97, (3, 7))
    mask = torch.ones((3, 7), dtype=torch.bool)
    mask[0, :3] = False
    mask[2, :6] = False
    with torch.inference_mode():
        fast, ref = LlamaDecoder(model), HFDecoder(model)
        a, b = fast.prefill(ids, mask, 6), ref.prefill(ids, mask, 6)
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
        rows = torch.tensor([0, 0, 1, 2, 2, 2])  # one prompt, several rows (temperatures)
        fast.select(rows), ref.select(rows)
        nxt = torch.randint(3, 97, (6,))
        for _ in range(4):
            a, b = fast.step(nxt), ref.step(nxt)
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
            nxt = torch.cat([a[:1].argmax(-1), torch.randint(3, 97, (5,))])
        keep = torch.tensor([5, 1, 2])  # rows that finished leave the batch
        fast.select(keep), ref.select(keep)
        a, b = fast.step(nxt[keep]), ref.step(nxt[keep])
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


# -- real generation with SmolLM2 ------------------------------------------------------------------

def test_batched_greedy_equals_one_at_a_time_and_transformers_generate(smol):
    from tmcli.generation.engines.decoders import make_decoder

    lm, tok = smol
    ids = [tok.encode(p).ids for p in PROMPTS]
    assert len({len(i) for i in ids}) == len(ids)  # different lengths: padding is exercised
    n = 10
    seeds = [0] * len(ids)
    for fast in (True, False):
        decoder = make_decoder(lm.model, fast=fast)
        batched = decode_batch(decoder, ids, list(range(len(ids))), [0.0] * len(ids), seeds,
                               max_new_tokens=n, eos_ids=lm.eos_ids)
        alone = [decode_batch(decoder, [i], [0], [0.0], [0], max_new_tokens=n,
                              eos_ids=lm.eos_ids)[0] for i in ids]
        assert batched == alone, decoder.name
    with torch.inference_mode():
        for p, (got, _) in zip(ids, batched):
            ref = lm.model.generate(torch.tensor([p]), attention_mask=torch.ones((1, len(p))),
                                    do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                    pad_token_id=lm.eos_ids[0])
            assert got == ref[0, len(p):].tolist()


def test_generate_writes_complete_seeded_records(smol, tmp_path):
    lm, tok = smol
    prompts = [Prompt(i, t) for i, t in enumerate(PROMPTS[:3])]
    out = tmp_path / "out.jsonl"
    summary = generate("smollm2-135m", prompts, out, temperatures=[0.0, 1.0, 2.0],
                       max_new_tokens=6, seed=7, device="cpu")
    assert (summary.written, summary.skipped, summary.new_tokens) == (9, 0, 54)
    recs = _records(out)
    assert len(recs) == 9 and len({r["id"] for r in recs}) == 9
    for r in recs:
        p = prompts[r["prompt_index"]]
        assert r["id"] == record_id("smollm2-135m", p, r["temperature"], 7, max_new_tokens=6,
                                    stop_at_eos=False, prompt_ids=r["prompt_token_ids"])
        assert r["model"] == "smollm2-135m" and r["tokenizer"] == "smollm2-135m"
        assert r["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert r["prompt"] == p.text and r["prompt_token_ids"] == tok.encode(p.text).ids
        assert len(r["token_ids"]) == r["n_new_tokens"] == 6 and r["finish_reason"] == "length"
        assert r["completion"] == tok.decode(r["token_ids"], skip_special_tokens=False)
        assert r["sampling"] == {
            "do_sample": r["temperature"] > 0, "temperature": r["temperature"], "top_k": 0, "min_p": 0.0,
            "top_p": 1.0, "repetition_penalty": 1.0, "min_new_tokens": 6, "max_new_tokens": 6,
            "stop_at_eos": False, "eos_token_ids": [2]}
        assert (r["seed"], r["canonical"], r["dtype"], r["device"]) == (7, "off", "float32", "cpu")
        assert r["engine"] == "fused" and r["batch_size"] >= 1 and r["tmcli_version"]
        assert r["created"].endswith("+00:00")
    # same seed -> same records, whatever the batch composition; another seed -> other samples
    again = tmp_path / "again.jsonl"
    generate("smollm2-135m", prompts, again, temperatures=[0.0, 1.0, 2.0], max_new_tokens=6,
             seed=7, batch_size=1, device="cpu")
    by_id = {r["id"]: r["token_ids"] for r in recs}
    assert {r["id"]: r["token_ids"] for r in _records(again)} == by_id
    other = tmp_path / "other.jsonl"
    generate("smollm2-135m", prompts, other, temperatures=[0.0, 2.0], max_new_tokens=6, seed=8,
             device="cpu")
    ids8 = {(r["prompt_index"], r["temperature"]): r["token_ids"] for r in _records(other)}
    ids7 = {(r["prompt_index"], r["temperature"]): r["token_ids"] for r in recs}
    assert all(ids8[(i, 0.0)] == ids7[(i, 0.0)] for i in range(3))
    assert any(ids8[(i, 2.0)] != ids7[(i, 2.0)] for i in range(3))


def test_cli_generate_resumes_and_is_quiet_off_a_terminal(cache, tmp_path):
    out = tmp_path / "demo.jsonl"
    args = ["generate", "--model", "smollm2-135m", "--prompts", str(SAMPLE), "--temperatures",
            "0,1", "--max-new-tokens", "4", "--n-prompts", "2", "-o", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "4 records written, 0 already done" in first.output
    assert "━" not in first.output and "%" not in first.output  # no bar without a TTY
    assert len(_records(out)) == 4
    second = runner.invoke(app, args + ["--n-prompts", "3", "--quiet"])
    assert second.exit_code == 0 and second.output == ""
    recs = _records(out)
    assert len(recs) == 6 and len({r["id"] for r in recs}) == 6


def start_until_records(cmd, env, out: Path, n: int, timeout: float = 120, **popen):
    """Start ``cmd`` and return it, still running, once ``out`` holds ``n`` complete records."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running
    return proc


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(cache, tmp_path):
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "tmcli", "generate", "--model", "smollm2-135m", "--prompts",
           str(SAMPLE), "--temperatures", "0,1", "--n-prompts", "6", "--max-new-tokens", "12",
           "--batch-size", "1", "--quiet", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMCLI_CACHE": str(cache)}
    proc = start_until_records(cmd, env, out, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes()
    kept = before[: before.rfind(b"\n") + 1].splitlines()
    assert 2 <= len(kept) < 12
    with open(out, "ab") as fh:  # a record cut in the middle, as a crash during a write leaves it
        fh.write(b'{"id": "smollm2-135m:T1:p9:s0:cut", "token_ids": [1, 2')
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    lines = out.read_bytes().splitlines()
    assert lines[: len(kept)] == kept  # what was written before the kill is kept as it was
    recs = [json.loads(line) for line in lines]
    assert len(recs) == 12 and len({r["id"] for r in recs}) == 12
    assert {(r["prompt_index"], r["temperature"]) for r in recs} == {
        (i, t) for i in range(6) for t in (0.0, 1.0)}


def test_ctrl_c_saves_what_is_done_and_says_how_to_resume(cache, tmp_path):
    out = tmp_path / "interrupted.jsonl"
    cmd = [sys.executable, "-m", "tmcli", "generate", "--model", "smollm2-135m", "--prompts",
           str(SAMPLE), "--temperatures", "0,1", "--n-prompts", "6", "--max-new-tokens", "12",
           "--batch-size", "1", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMCLI_CACHE": str(cache)}
    proc = start_until_records(cmd, env, out, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    saved = len(out.read_bytes().splitlines())
    last = err.decode().strip().splitlines()[-1]
    assert last == (f"Interrupted: {saved} records saved in {out} ({saved} from this run); "
                    "rerun the same command to resume.")
    assert "Traceback" not in err.decode()


# -- user errors through the CLI: one line, exit 2 -------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--model", "gpt2"], "tokenizer alias with no model"),
    (["--prompts", "missing.txt"], "prompt file not found"),
    (["--prompts", "{empty}"], "no prompts in"),
    (["--temperatures", "0,-0.5"], "temperature -0.5 is not allowed"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
    (["--n-prompts", "0"], "--n-prompts must be positive"),
    (["--batch-size", "-2"], "--batch-size must be positive"),
    (["--device", "cuda"], "no CUDA device"),
    (["--max-new-tokens", "1000000000", "--batch-size", "64"], "out of memory"),
])
def test_user_errors_are_one_line_and_exit_2(cache, tmp_path, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    args = ["generate", "--prompts", str(SAMPLE), "-t", "0", "--max-new-tokens", "2",
            "-o", str(tmp_path / "o.jsonl")]
    args += [str(empty) if a == "{empty}" else a for a in extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output
    if "out of memory" in message:
        assert "--batch-size" in lines[0]
    if "unknown model" in message:
        assert "smollm2-135m, gemma3-270m" in lines[0]
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == ""


def test_progress_off_a_terminal_is_plain_lines(capsys):
    from tmcli.cli.generate import _LineProgress

    p = _LineProgress(every=0)
    p.start(200)
    p.note("converting smollm2-135m to a checkpoint (first use, 20-90 s)")
    p.describe("loading smollm2-135m")
    p.advance(0)
    # no speed, no time left before anything was decoded (loading is not decoding)
    assert capsys.readouterr().err == ("converting smollm2-135m to a checkpoint (first use, "
                                       "20-90 s)\nloading smollm2-135m: 0/200 tokens (0%)\n")
    p.describe("smollm2-135m (fused)")
    p.advance(50)
    err = capsys.readouterr().err
    assert err.startswith("smollm2-135m (fused): 50/200 tokens (25%), ") and "min left" in err
    quiet = _LineProgress(every=3600)
    quiet.start(200)
    quiet.advance(50)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("spec, special", [("smollm2-135m", "<|endoftext|>"), ("gemma3-270m", "<unk>"),
                                           ("gemma3-270m", "<eos>")])
def test_prompt_text_spelling_a_special_token_stays_text(cache, spec, special):
    """WikiText spells <unk>: fed as the special id, Gemma emits lone spaces (a false finding)."""
    from tmcli.sources.tokenizers import encode_prompt, load_tokenizer, prompt_tokenizer

    tok = load_tokenizer(spec)
    special_id = tok.token_to_id(special)
    text = f"Robert {special} is an English actor"
    ids = encode_prompt(prompt_tokenizer(spec), text)
    assert special_id not in ids
    bos = tok.token_to_id("<bos>")
    body = ids[1:] if bos is not None and ids[:1] == [bos] else ids
    assert (ids[:1] == [bos]) == (spec == "gemma3-270m")  # only the BOS the tokenizer adds itself
    # the text round-trips: the ids spell exactly the prompt
    assert tok.decode(body, skip_special_tokens=False) == text
    # the shared tokenizer object is not changed by encoding prompts, nor the reverse
    plain = load_tokenizer(spec)
    assert not plain.encode_special_tokens and encode_prompt(prompt_tokenizer(spec), text) == ids
