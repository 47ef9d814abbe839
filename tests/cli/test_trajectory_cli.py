"""Trajectories through the real CLI: `analyze`, `check`, `diff`, `filter`, `report` and
`models` on Qwen3 trajectories built with transformers' own `apply_chat_template`
(tests/trajectory_data.py), and the bad ones (one line, exit 2, or counted with --skip-invalid)."""

from __future__ import annotations

import json

import orjson
import polars as pl
import pytest
from trajectory_data import (
    A1,
    A2,
    Q1,
    Q2,
    SYSTEM,
    enc,
    qwen,
    render_ids,
    trajectory,
    turn,
    user_env,
)
from typer.testing import CliRunner

from tmcli.cli import app

runner = CliRunner()
THINK = "<think>\n\n</think>\n\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def conversation(first: str, second: str, reasoning: str | None = None) -> dict:
    hf = qwen()
    answer = {"role": "assistant", "content": A1, **({"reasoning_content": reasoning}
                                                      if reasoning else {})}
    messages = [SYSTEM, {"role": "user", "content": Q1}, answer,
                {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]
    prompt = render_ids(hf, messages[:2], add_generation_prompt=True)
    traj = trajectory(prompt, [("model", turn(hf, first)), ("env", user_env(hf, Q2)),
                               ("model", turn(hf, second))])
    return {"model": "qwen3", "temperature": 1.0, "messages": messages, **traj}


def split_six() -> list[int]:
    """The last answer ("It is six.") with " six" sampled as two tokens."""
    hf = qwen()
    assert len(enc(hf, " six")) == len(enc(hf, " s")) == len(enc(hf, "ix")) == 1
    return enc(hf, THINK + "It is") + enc(hf, " s") + enc(hf, "ix") + enc(hf, ".")


@pytest.fixture(scope="module")
def records() -> dict:
    return {
        "clean": conversation(A1, THINK + A2),
        "dropped": conversation("<think>\nadd\n</think>\n\n" + A1, THINK + A2, reasoning="add"),
        "split": conversation(A1, split_six()),
    }


def write(path, objs) -> str:
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    return str(path)


@pytest.fixture
def rollouts(tmp_path, records):
    return write(tmp_path / "rollouts.jsonl", [{"id": k, **v} for k, v in records.items()])


def test_analyze_counts_trajectories_drift_and_causes(rollouts, tmp_path):
    out = tmp_path / "samples.parquet"
    r = run("analyze", rollouts, "--json", "--output", out)
    assert r.exit_code == 0, r.output
    group = json.loads(r.stdout)["groups"][0]
    assert (group["n"], group["n_trajectories"], group["n_drift"], group["n_drift_template"],
            group["n_drift_tokenization"]) == (6, 3, 2, 1, 1)
    assert group["fraction_drift"] == pytest.approx(2 / 3)
    assert group["n_noncanonical"] == 1  # the split word, in its turn
    s = pl.read_parquet(out).sort("id")
    assert s["id"].to_list() == ["clean/turn0", "clean/turn1", "dropped/turn0", "dropped/turn1",
                                 "split/turn0", "split/turn1"]
    assert s["message"].to_list() == [2, 4] * 3
    assert s["drift"].to_list() == [False, False, True, True, True, True]
    assert s["drift_message"].to_list() == [None, None, 2, 2, 4, 4]
    assert s["drift_cause"].to_list() == [None, None, "template", "template", "tokenization",
                                          "tokenization"]
    assert s["drift_turn"].to_list() == [None, None, 0, 0, 1, 1]
    assert s["noncanonical"].to_list() == [False, False, False, False, False, True]
    assert [len(x) for x in s["drift_spans"].to_list()] == [0, 0, 1, 0, 0, 1]
    r = run("analyze", out)  # the stored analysis gives the same trajectory table
    assert r.exit_code == 0 and "Trajectories: drift from the chat template" in r.stdout
    assert "first drift by sampled turn: turn 0: 1 of 3; turn 1: 1 of 3" in r.stdout


def test_check_diff_filter_and_report(rollouts, tmp_path, records):
    r = run("check", rollouts, "--max-fraction-drift", "0.5")
    assert r.exit_code == 1 and "fraction_drift = 0.666667 > 0.5" in r.stdout
    assert run("check", rollouts, "--max-fraction-drift", "0.7").exit_code == 0
    r = run("check", rollouts, "--on-mismatch", "error", "--format", "json")
    found = json.loads(r.stdout)["mismatches"]
    assert r.exit_code == 1
    assert [(m["id"], m["kind"], m["message"], m["causes"]) for m in found if m["kind"] == "drift"
            ] == [("dropped", "drift", 2, ["template"]), ("split", "drift", 4, ["tokenization"])]
    r = run("diff", rollouts, "--json")
    shown = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(d["id"], d["drift"]["message"], d["drift"]["cause"]) for d in shown] == [
        ("dropped/turn0", 2, "template"), ("split/turn1", 4, "tokenization")]
    assert shown[1]["drift"]["spans"][0]["sampled_tokens"] == ["␣s", "ix"]
    assert "2 of 3 trajectories drift" in r.stderr
    kept = tmp_path / "kept.jsonl"
    assert run("filter", rollouts, "-o", kept).exit_code == 0
    assert [json.loads(x)["id"] for x in kept.read_text().splitlines()] == ["clean"]
    html = tmp_path / "report.html"
    assert run("report", rollouts, "--html", html).exit_code == 0
    text = html.read_text()
    assert "id=trajectories>Trajectories</h2>" in text and 'id="fig-trajectories"' in text


def test_chat_template_file_replaces_the_tokenizers_own(tmp_path, records):
    from trajectory_data import QWEN_DIR

    own = json.loads((QWEN_DIR / "tokenizer_config.json").read_text())["chat_template"]
    keeps = own.replace("loop.index0 > ns.last_query_index", "true")  # reasoning kept
    path = write(tmp_path / "r.jsonl", [{"id": "dropped", **records["dropped"]}])
    (tmp_path / "keeps.jinja").write_text(keeps)
    (tmp_path / "own.json").write_text(json.dumps({"chat_template": own}))
    drift = []
    for extra in ([], ["--chat-template", tmp_path / "own.json"],
                  ["--chat-template", tmp_path / "keeps.jinja"]):
        r = run("analyze", path, "--json", *extra)
        assert r.exit_code == 0, r.output
        drift.append(json.loads(r.stdout)["groups"][0]["n_drift"])
    assert drift == [1, 1, 0]
    r = run("analyze", path, "--chat-template", tmp_path / "missing.jinja")
    assert r.exit_code == 2 and "no such chat template file" in r.stderr


def test_bad_trajectories_one_line_exit_2_or_skipped(tmp_path, records):
    good = {"id": "ok", **records["clean"]}
    short = {**good, "id": "short", "token_ids": [], "response_mask": []}
    mask = {**good, "id": "mask", "response_mask": good["response_mask"][:-1]}
    no_template = {**good, "id": "gpt2", "model": "gpt2"}
    for bad, line, text in ((short, 2, "no ids after the first prompt"),
                            (mask, 2, "'response_mask' has"),
                            (no_template, 2, "tokenizer 'gpt2' has no chat template")):
        path = write(tmp_path / f"{bad['id']}.jsonl", [good, bad])
        r = run("analyze", path)
        assert r.exit_code == 2, r.output
        assert r.stderr.count("\n") == 1 and f"{path}:{line}: " in r.stderr and text in r.stderr
        r = run("analyze", path, "--skip-invalid", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["n_skipped"] == 1
    r = run("analyze", write(tmp_path / "t.jsonl", [good]), "--tokenizer", "gpt2")
    assert r.exit_code == 2 and "has no chat template" in r.stderr  # the option's fault
    plain = write(tmp_path / "plain.jsonl", [{"model": "qwen3", "token_ids": [1, 2]}])
    r = run("check", plain, "--max-fraction-drift", "0.1")
    assert r.exit_code == 2 and "needs trajectories" in r.stderr


def test_models_say_which_aliases_have_a_chat_template():
    r = run("models", "--json")
    assert r.exit_code == 0
    assert {m["name"] for m in json.loads(r.stdout) if m["chat_template"]} == {"smollm2-135m",
                                                                              "qwen3"}
