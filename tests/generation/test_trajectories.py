"""`generate --turns`: real multi-turn conversations sampled from SmolLM2 on CPU, token-in/
token-out, then checked: the first prompt is transformers' `apply_chat_template` of the first
user message (the template read from the GGUF independently), the masked ids are exactly what
each turn sampled, the environment's ids are ChatML's markup around the next user message, and
`analyze` finds drift exactly where transformers' own rendering of the messages differs from the
sampled ids. The whole loop of the demo, on real output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from trajectory_data import enc, render_ids, smol
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.generation.prompts import Prompt
from tmcli.generation.trajectories import conversation_id, conversations_of, generate_trajectories
from tmcli.generation.truncation import NONE, Truncation

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "sample_data" / "chat_prompts.txt"
EOT, NEWLINE = 2, 198  # SmolLM2's <|im_end|>, and the newline its template writes after it
runner = CliRunner()


def test_conversations_take_consecutive_prompts():
    prompts = [Prompt(i, f"p{i}") for i in range(5)]
    assert [[p.index for p in c] for c in conversations_of(prompts, 2)] == [[0, 1], [2, 3]]
    with pytest.raises(TmcliError, match="needs at least 6 prompts"):
        conversations_of(prompts, 6)


def test_pure_conversation_ids_are_the_ones_they_always_were():
    """Truncation is in a conversation's id only when it truncates: a pure-sampling one keeps
    the id it had before trajectories took truncation (this one is what that version gave), so
    files written then still resume."""
    users = [Prompt(4, "Hi there"), Prompt(5, "And then?")]
    kw = dict(max_new_tokens=16, template="{{ messages }}")
    before = "smollm2-135m:T0.7:c4:s3:turns2:dee73dd97930"
    assert conversation_id("smollm2-135m", users, 0.7, 3, **kw) == before
    assert conversation_id("smollm2-135m", users, 0.7, 3, truncation=NONE, **kw) == before
    assert conversation_id("smollm2-135m", users, 0.7, 3, truncation=Truncation(0, 1.0, 0.0),
                           **kw) == before
    cut = conversation_id("smollm2-135m", users, 0.7, 3, truncation=Truncation(50, 0.9), **kw)
    assert cut.startswith("smollm2-135m:T0.7:top_k50:top_p0.9:c4:s3:turns2:") and \
        cut[-12:] != before[-12:]


def runs(mask: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for k, m in enumerate([*mask, 0]):
        if m and start is None:
            start = k
        elif not m and start is not None:
            out.append((start, k))
            start = None
    return out


@pytest.fixture
def torch_threads():
    """--threads sets torch's threads for the whole process: give the next tests theirs back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_generated_trajectories_are_token_in_token_out_and_checked(tmp_path, torch_threads):
    out = tmp_path / "chats.jsonl"
    args = ["generate", "--prompts", CHAT, "--turns", "2", "--n-prompts", "4",
            "--temperatures", "0,1", "--max-new-tokens", "16", "--threads", "1", "--quiet",
            "-o", out]  # one thread: a few rows decode as fast, without spinning on shared cores
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 4  # 2 conversations x 2 temperatures
    hf = smol()
    users = CHAT.read_text().splitlines()[:4]
    expected_drift = {}
    for rec in records:
        first = users[rec["prompt_index"]]
        msgs = rec["messages"]
        assert msgs[0] == {"role": "user", "content": first}
        assert rec["prompt_token_ids"] == render_ids(hf, msgs[:1], add_generation_prompt=True)
        ids, mask = rec["token_ids"], rec["response_mask"]
        turns = runs(mask)
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        assert len(turns) == len(answers) == rec["n_turns"]
        for (a, b), answer in zip(turns, answers):
            sampled = ids[a:b]
            ended = sampled[-1] == EOT
            assert hf.decode(sampled[:-1] if ended else sampled) == answer
        if len(turns) == 2:  # the first turn ended: the next user turn, as ChatML writes it
            env = ids[turns[0][1] : turns[1][0]]
            assert env == enc(hf, f"\n<|im_start|>user\n{msgs[2]['content']}<|im_end|>\n"
                                  "<|im_start|>assistant\n")
        assert rec["finish_reason"] == ("eos" if ids[-1] == EOT else "length")
        full = rec["prompt_token_ids"] + ids
        rendered = render_ids(hf, msgs)
        clean = rendered in (full, full + [NEWLINE]) and ids[-1] == EOT or rendered == full
        expected_drift[rec["id"]] = not clean
    assert any(rec["finish_reason"] == "eos" for rec in records)
    r = runner.invoke(app, ["analyze", str(out), "--output", str(tmp_path / "s.parquet")])
    assert r.exit_code == 0, r.output
    import polars as pl

    s = pl.read_parquet(tmp_path / "s.parquet").filter(pl.col("turn") == 0)
    assert dict(zip(s["trajectory"], s["drift"])) == expected_drift
    again = runner.invoke(app, [str(a) for a in args])  # resumes: nothing left to do
    assert again.exit_code == 0 and out.read_text().count("\n") == 4


def test_truncated_trajectories_sample_as_single_turns_do(tmp_path, torch_threads):
    """One conversation per (user turns, temperature, truncation setting), every turn truncated:
    top-k 1 keeps only the argmax, so at T=1 it samples exactly the greedy trajectory (and
    changes nothing at T=0). Records state their settings as single-turn records do, pure
    conversations keep their ids, a rerun resumes, and `analyze` groups by the setting."""
    import polars as pl

    from tmcli.aggregate.analysis import analyze_file
    from tmcli.measure.chat_render import renderer_for
    from tmcli.sources.tokenizers import tokenizer_name

    out = tmp_path / "chats.jsonl"
    prompts = [Prompt(i, u) for i, u in enumerate(CHAT.read_text().splitlines()[:4])]
    kw = dict(turns=2, max_new_tokens=12, threads=1)
    summary = generate_trajectories("smollm2-135m", prompts, out, temperatures=[0, 1],
                                    top_k=[0, 1], **kw)
    assert (summary.written, summary.skipped) == (8, 0)  # 2 conversations x 2 T x 2 top-k
    records = [json.loads(x) for x in out.read_text().splitlines()]
    by = {(r["prompt_index"], r["temperature"], r["top_k"]): r for r in records}
    assert sorted(by) == [(c, t, k) for c in (0, 2) for t in (0.0, 1.0) for k in (0, 1)]
    template = renderer_for(tokenizer_name("smollm2-135m"))[0].template
    for (c, t, k), rec in by.items():
        greedy = by[c, 0.0, 0]
        if k == 1:  # the argmax at every step of every turn: the greedy trajectory
            for name in ("token_ids", "response_mask", "messages", "finish_reason"):
                assert rec[name] == greedy[name], (c, t, name)
        settings = {"temperature": t, "top_k": k, "top_p": 1.0, "min_p": 0.0}
        assert {name: rec[name] for name in settings} == settings
        assert {name: rec["sampling"][name] for name in settings} == settings
        assert rec["sampling"]["do_sample"] == (t > 0) and "config" not in rec["sampling"]
        if k == 0:  # the id main gave: no truncation in it, nor in its digest's key
            key = "\0".join(["smollm2-135m", *(p.text for p in prompts[c : c + 2]), repr(t),
                             "0", "12", template])
            digest = hashlib.sha256(key.encode()).hexdigest()[:12]
            assert rec["id"] == f"smollm2-135m:T{t:g}:c{c}:s0:turns2:{digest}"
        else:
            assert rec["id"].startswith(f"smollm2-135m:T{t:g}:top_k1:c{c}:s0:turns2:")
    again = generate_trajectories("smollm2-135m", prompts, out, temperatures=[0, 1],
                                  top_k=[0, 1], **kw)
    assert (again.written, again.skipped) == (0, 8)

    groups = analyze_file(str(out), group_by=["top_k"]).groups
    assert groups["top_k"].to_list() == [0, 1]
    turns = {k: sum(r["n_turns"] for r in records if r["top_k"] == k) for k in (0, 1)}
    assert dict(zip(groups["top_k"], groups["n"])) == turns  # each sampled turn is a sample
    assert groups.filter(pl.col("top_k") == 1)["n"].item() == 2 * sum(
        by[c, 0.0, 0]["n_turns"] for c in (0, 2))  # both top-k 1 rows: the greedy turns

    # the model's own config: SmolLM2's samples greedily (T=0), with transformers' top-k 50
    model = generate_trajectories("smollm2-135m", prompts, out, sampling_config="model", **kw)
    assert (model.written, model.skipped) == (2, 0)
    for rec in (json.loads(x) for x in out.read_text().splitlines()[8:]):
        settings = {"temperature": 0.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0}
        assert {name: rec[name] for name in settings} == settings
        assert {name: rec["sampling"][name] for name in settings} == settings
        assert rec["sampling"]["config"] == "model" and ":T0:top_k50:c" in rec["id"]
        assert rec["token_ids"] == by[rec["prompt_index"], 0.0, 0]["token_ids"]  # greedy


def test_generate_turns_takes_truncation_options(tmp_path, torch_threads):
    out = tmp_path / "chats.jsonl"
    args = ["generate", "--prompts", CHAT, "--turns", "2", "--n-prompts", "2", "--top-p", "0.9",
            "--temperatures", "1", "--max-new-tokens", "8", "--threads", "1", "--quiet", "-o", out]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    [rec] = [json.loads(x) for x in out.read_text().splitlines()]
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "min_p": 0.0}
    assert {name: rec[name] for name in settings} == settings
    assert {name: rec["sampling"][name] for name in settings} == settings
    assert rec["id"].startswith("smollm2-135m:T1:top_p0.9:c0:s0:turns2:")
