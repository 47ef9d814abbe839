"""`tmcli analyze`, `check` and `selftest` through the real CLI, on records built from real tokenizers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import orjson
import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.io import input_files

runner = CliRunner()


def ids(text: str, name: str = "gpt2") -> list[int]:
    return reencoder(name).vocab.original.encode(text, add_special_tokens=False).ids


def spelled(text: str, name: str = "gpt2") -> list[int]:
    table = reencoder(name).vocab.bytes_to_id()
    return [table[ch.encode()] for ch in text]


PROMPT = ids("We worked on it")
TAIL = ids(" and it worked.")
MERGED = spelled(" together") + TAIL  # saves exactly 8 tokens
CANONICAL = ids(" together") + TAIL


def rec(i, token_ids, temperature=1.0, model="gpt2", **extra) -> dict:
    return {"id": str(i), "model": model, "tokenizer": "gpt2", "temperature": temperature,
            "prompt_token_ids": PROMPT, "token_ids": token_ids, **extra}


def write(path, objs, raw_lines=()) -> str:
    with open(path, "wb") as fh:
        for o in objs:
            fh.write(orjson.dumps(o) + b"\n")
        for line in raw_lines:
            fh.write(line + b"\n")
    return str(path)


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def outputs(tmp_path):
    objs = [rec(0, CANONICAL), rec(1, MERGED), rec(2, CANONICAL), rec(3, MERGED, temperature=2.0)]
    return write(tmp_path / "out.jsonl", objs)


def test_analyze_json_known_numbers(outputs):
    r = run("analyze", outputs, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["n_samples"] == 4 and data["group_by"] == ["model", "temperature"]
    g1, g2 = data["groups"]
    n = len(MERGED)
    assert (g1["temperature"], g1["n"]) == (1.0, 3)
    assert g1["mean_compression"] == pytest.approx(8 / n / 3)
    assert g1["fraction_compressed"] == pytest.approx(1 / 3)
    assert g1["token_rate"] == pytest.approx(9 / (2 * len(CANONICAL) + n))
    assert g2["mean_compression"] == pytest.approx(8 / n) and g2["fraction_merged"] == 1.0
    assert g1["fraction_compressed_lo"] < 1 / 3 < g1["fraction_compressed_hi"]
    assert g2["few_samples"] is True


def test_centre_of_noncanonical_tokens(outputs):
    # sample 3 (T=2) spells " together" in 9 tokens: positions 0-8, i.e. 4-token windows 0, 1
    # and a quarter of window 2; centres 1.5, 5.5, 9.5 weighted by rates 1, 1, 0.25
    r = run("analyze", outputs, "--json", "--window", "4")
    g2 = json.loads(r.stdout)["groups"][1]
    assert g2["window_noncanonical_rate"][:4] == [1.0, 1.0, 0.25, 0.0]
    assert g2["centre_noncanonical"] == pytest.approx((1.5 + 5.5 + 0.25 * 9.5) / 2.25)


def test_analyze_table_and_stdin(outputs):
    r = run("analyze", "-", input=open(outputs, encoding="utf-8").read())
    assert r.exit_code == 0, r.output
    assert "Re-encoding by group" in r.stdout and "gpt2" in r.stdout


def test_study_method_and_windows(outputs):
    r = run("analyze", outputs, "--json", "--window", "4", "--window-method", "study")
    g = json.loads(r.stdout)["groups"][1]
    # 9 spelled tokens save 8: 8/9 per token, so window 0 (4 of them) saves 32/9 of 4 tokens
    assert g["window_mean"][:3] == pytest.approx([8 / 9, 8 / 9, (8 / 9 + 0) / 4])
    assert sum(g["window_mean"]) > 0 and len(g["study_window_mean"]) == len(g["window_mean"])


def test_vllm_format(tmp_path):
    line = {"request_id": "r1", "prompt": "We worked on it", "prompt_token_ids": PROMPT,
            "outputs": [{"index": 0, "text": "x", "token_ids": MERGED},
                        {"index": 1, "text": "y", "token_ids": CANONICAL}]}
    path = write(tmp_path / "vllm.jsonl", [line])
    r = run("analyze", path, "--tokenizer", "gpt2", "--json")
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["groups"][0]
    assert g["n"] == 2 and g["fraction_compressed"] == 0.5


def test_openai_logprobs_formats(tmp_path):
    tok = reencoder("gpt2").vocab
    chat = {"id": "c1", "model": "gpt2", "choices": [{"index": 0, "message": {"content": "z"},
            "logprobs": {"content": [{"token": tok.piece(t), "bytes": list(tok.token_bytes[t]),
                                      "logprob": -1.0} for t in MERGED]}}]}
    legacy = {"id": "c2", "model": "gpt2", "choices": [{"index": 0, "text": "z", "logprobs": {
        "tokens": [f"token_id:{t}" for t in CANONICAL]}}]}
    path = write(tmp_path / "openai.jsonl", [chat, legacy])
    r = run("analyze", path, "--json")
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["groups"][0]
    assert g["n"] == 2 and g["mean_compression"] == pytest.approx(8 / len(MERGED) / 2)
    bad = {"id": "c3", "model": "gpt2", "choices": [{"logprobs": {"tokens": ["\u2603snow\u2603"]}}]}
    r = run("analyze", write(tmp_path / "bad.jsonl", [bad]))
    assert r.exit_code == 2 and "bad.jsonl:1: logprob token 0" in r.output


def test_ids_field(tmp_path):
    path = write(tmp_path / "custom.jsonl", [{"gen": MERGED, "model": "gpt2"}])
    r = run("analyze", path, "--ids-field", "gen", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["groups"][0]["mean_compression"] == pytest.approx(8 / len(MERGED))
    r = run("analyze", path, "--ids-field", "nope")
    assert r.exit_code == 2 and "no 'nope' field" in r.output


@pytest.mark.parametrize("line, message", [
    (b'{"token_ids": [1, 2', "custom.jsonl:2: malformed JSON"),
    (b'{"model": "gpt2", "token_ids": [1, 2.5]}', "custom.jsonl:2: 'token_ids' holds 2.5"),
    (b'{"model": "gpt2", "token_ids": [1, true]}', "holds True, not an integer"),
    (b'{"model": "gpt2", "token_ids": [1, -5]}', "custom.jsonl:2: token_ids holds -5, which cannot"),
    (b'{"model": "gpt2", "token_ids": []}', "custom.jsonl:2: empty completion"),
    (b'{"model": "gpt2", "text": "no ids"}', "custom.jsonl:2: no token ids found"),
    (b'{"token_ids": [1, 2]}', "custom.jsonl:2: record names no tokenizer"),
    (b'[1, 2, 3]', "custom.jsonl:2: expected a JSON object"),
])
def test_bad_lines_are_one_line_errors(tmp_path, line, message):
    path = write(tmp_path / "custom.jsonl", [rec(0, MERGED)], [line])
    r = run("analyze", path)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = run("analyze", path, "--skip-invalid", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_skipped"] == 1 and "skipped 1 invalid line" in r.stderr


def test_mixed_tokenizers_with_forced_tokenizer(tmp_path):
    other = dict(rec(1, CANONICAL), tokenizer="smollm2-135m", model="smol")
    path = write(tmp_path / "mixed.jsonl", [rec(0, MERGED), other])
    r = run("analyze", path, "--tokenizer", "gpt2")
    assert r.exit_code == 2 and "mixed.jsonl:2: file mixes tokenizers" in r.output


def test_bom_crlf_and_json_array(tmp_path):
    body = b"\xef\xbb\xbf" + orjson.dumps(rec(0, MERGED)) + b"\r\n" + orjson.dumps(rec(1, CANONICAL)) + b"\r\n"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(body)
    r = run("analyze", path, "--json")
    assert r.exit_code == 0, r.output and json.loads(r.stdout)["n_samples"] == 2
    arr = tmp_path / "array.json"
    arr.write_bytes(b"[" + orjson.dumps(rec(0, MERGED)) + b",\n")
    r = run("analyze", arr)
    assert r.exit_code == 2 and "looks like a JSON array" in r.output


def test_huge_line(tmp_path, monkeypatch):
    monkeypatch.setattr(input_files, "MAX_LINE_BYTES", 1000)
    path = write(tmp_path / "huge.jsonl", [rec(0, MERGED * 40)])
    r = run("analyze", path)
    assert r.exit_code == 2 and "huge.jsonl:1: line is" in r.output


def test_missing_file_and_bad_options(tmp_path):
    r = run("analyze", tmp_path / "nope.jsonl")
    assert r.exit_code == 2 and "no such file" in r.output
    r = run("analyze", tmp_path / "nope.jsonl", "--window-method", "fancy")
    assert r.exit_code == 2
    r = run("analyze", write(tmp_path / "a.jsonl", [rec(0, MERGED)]), "--tokenizer", "nonexistent/dir/x")
    assert r.exit_code == 2 and "smollm2-135m" in r.output  # lists the aliases


def test_check_exit_codes_and_formats(outputs):
    r = run("check", outputs, "--max-compression", "0.5")
    assert r.exit_code == 0, r.output and "check passed" in r.stdout
    r = run("check", outputs, "--max-fraction-compressed", "0.25", "--format", "json")
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["passed"] is False and data["checks"][0]["value"] == 0.5
    r = run("check", outputs, "--max-fraction-compressed", "0.5", "--per-group", "-f", "junit")
    assert r.exit_code == 1
    suite = ET.fromstring(r.stdout.split("?>", 1)[1])
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    r = run("check", outputs, "--max-noncanonical-rate", "0.001", "-f", "github")
    assert r.exit_code == 1 and r.stdout.startswith("::error title=tmcli check")
    assert run("check", outputs).exit_code == 2
    assert run("check", outputs, "--max-compression", "0.1", "-f", "yaml").exit_code == 2


def test_check_ci_upper_is_stricter(outputs):
    assert run("check", outputs, "--max-fraction-noncanonical", "0.6").exit_code == 0
    assert run("check", outputs, "--max-fraction-noncanonical", "0.6", "--ci-upper").exit_code == 1


def test_selftest_every_family():
    r = run("selftest", "-t", "gpt2", "-t", "smollm2-135m", "-t", "mistral-v1", "-t",
            "gemma3-270m", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert [x["family"] for x in results] == ["byte-level", "byte-level", "sentencepiece",
                                              "sentencepiece"]
    assert all(x["passed"] and x["n_noncanonical"] == 0 and x["n_samples"] > 50 for x in results)


def test_version_and_help():
    from tmcli import __version__

    assert run("--version").stdout.strip() == f"tmcli {__version__}"
    assert run("--help").exit_code == 0


def test_output_parquet_feeds_check(outputs, tmp_path):
    import polars as pl

    pq = tmp_path / "samples.parquet"
    r = run("analyze", outputs, "--output", pq, "--json")
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(pq)
    assert df.height == 4 and df["compression"].to_list()[1] == pytest.approx(8 / len(MERGED))
    assert list(df["spans"][1][0]["before"]) == spelled(" together")
    r = run("check", pq, "--max-fraction-compressed", "0.5", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["checks"][0]["value"] == 0.5
    r = run("check", pq, "--max-fraction-compressed", "0.5", "--window", "8")
    assert r.exit_code == 2 and "cannot apply to a stored analysis" in r.output
    assert run("analyze", outputs, "--output", tmp_path / "x.csv").exit_code == 2
