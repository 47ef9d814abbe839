"""`generate --turns`: real multi-turn conversations sampled from SmolLM2 on CPU, token-in/
token-out, then checked: the first prompt is transformers' `apply_chat_template` of the first
user message (the template read from the GGUF independently), the masked ids are exactly what
each turn sampled, the environment's ids are ChatML's markup around the next user message, and
`analyze` finds drift exactly where transformers' own rendering of the messages differs from the
sampled ids. The whole loop of the demo, on real output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trajectory_data import enc, render_ids, smol
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.generation.prompts import Prompt
from tmcli.generation.trajectories import conversations_of

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "sample_data" / "chat_prompts.txt"
EOT, NEWLINE = 2, 198  # SmolLM2's <|im_end|>, and the newline its template writes after it
runner = CliRunner()


def test_conversations_take_consecutive_prompts():
    prompts = [Prompt(i, f"p{i}") for i in range(5)]
    assert [[p.index for p in c] for c in conversations_of(prompts, 2)] == [[0, 1], [2, 3]]
    with pytest.raises(TmcliError, match="needs at least 6 prompts"):
        conversations_of(prompts, 6)


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
