"""Every input format through the real CLI, with real tokenizers: one canonical and one spelled
completion per file, so exactly 1 of 2 samples is non-canonical; and the bounded line reader."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc

import orjson
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import ROOT, reencoder
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.io import input_files

runner = CliRunner()
TOKENIZERS = ["gpt2", "smollm2-135m"]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


class Pair:
    """Prompt ids, a canonical completion and the same text spelled one byte per token."""

    def __init__(self, name: str):
        vocab = reencoder(name).vocab
        table = vocab.bytes_to_id()
        enc = vocab.original.encode
        self.name = name
        self.vocab = vocab
        # "Hel" + "lo ...": the completion's first token merges with the prompt's last one
        # (gpt2), so a reader that drops the prompt ids changes n_boundary_merges.
        self.prompt = enc("We said Hel", add_special_tokens=False).ids
        self.canonical = enc("lo to the world", add_special_tokens=False).ids
        self.spelled = (enc("lo to the", add_special_tokens=False).ids
                        + [table[bytes([b])] for b in " world".encode()])
        assert len(self.spelled) > len(enc("lo to the world", add_special_tokens=False).ids)


@pytest.fixture(scope="module", params=TOKENIZERS)
def pair(request) -> Pair:
    return Pair(request.param)


def group(path, *args) -> dict:
    r = run("analyze", path, "--json", *args)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["n_samples"] == 2 and len(data["groups"]) == 1, data
    return data["groups"][0]


def assert_one_of_two(g: dict, pair: Pair, *, with_prompt: bool = True) -> None:
    assert (g["n"], g["n_noncanonical"], g["n_merged"]) == (2, 1, 1)
    assert g["spans_merged"] == 1 and sum(v for k, v in g.items() if k.startswith("spans_")) == 1
    if pair.name == "gpt2":  # "Hel" + "lo" re-encodes as "Hello" only when the prompt was read
        assert g["n_boundary_merges"] == (2 if with_prompt else 0)


def jsonl(path, objs) -> str:
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    return str(path)


def test_tmcli_records(tmp_path, pair):
    objs = [{"id": str(i), "model": "m", "tokenizer": pair.name, "prompt_token_ids": pair.prompt,
             "token_ids": ids} for i, ids in enumerate([pair.canonical, pair.spelled])]
    assert_one_of_two(group(jsonl(tmp_path / "t.jsonl", objs)), pair)


def test_vllm_offline(tmp_path, pair):
    line = {"request_id": "r", "prompt_token_ids": pair.prompt,
            "outputs": [{"index": 0, "text": "a", "token_ids": pair.canonical},
                        {"index": 1, "text": "b", "token_ids": pair.spelled}]}
    assert_one_of_two(group(jsonl(tmp_path / "v.jsonl", [line]), "-t", pair.name), pair)


def test_vllm_server_completions_return_token_ids(tmp_path, pair):
    # CompletionResponseChoice: token_ids and prompt_token_ids per choice (vLLM >= 0.10.2)
    line = {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [
        {"index": 0, "text": "a", "logprobs": None, "finish_reason": "length",
         "token_ids": pair.canonical, "prompt_token_ids": pair.prompt},
        {"index": 1, "text": "b", "logprobs": None, "finish_reason": "length",
         "token_ids": pair.spelled, "prompt_token_ids": pair.prompt}],
        "usage": {"prompt_tokens": len(pair.prompt)}}
    assert_one_of_two(group(jsonl(tmp_path / "c.jsonl", [line]), "-t", pair.name), pair)


def test_vllm_server_chat_return_token_ids(tmp_path, pair):
    # ChatCompletionResponse: prompt_token_ids at the top, token_ids per choice
    lines = [{"id": f"chat-{i}", "object": "chat.completion", "model": "m",
              "prompt_token_ids": pair.prompt, "prompt_logprobs": None,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                           "logprobs": None, "finish_reason": "stop", "token_ids": ids}]}
             for i, ids in enumerate([pair.canonical, pair.spelled])]
    assert_one_of_two(group(jsonl(tmp_path / "chat.jsonl", lines), "-t", pair.name), pair)


def test_vllm_return_tokens_as_token_ids(tmp_path, pair):
    # chat logprobs: token "token_id:N", and vLLM's bytes spell that string, not the token
    def content(ids):
        return [{"token": f"token_id:{t}", "logprob": -0.5,
                 "bytes": list(f"token_id:{t}".encode()), "top_logprobs": []} for t in ids]

    chat = {"id": "chat", "model": "m", "prompt_token_ids": pair.prompt, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "token_ids": None,
         "logprobs": {"content": content(pair.canonical)}}]}
    legacy = {"id": "cmpl", "model": "m", "prompt_token_ids": pair.prompt, "choices": [
        {"index": 0, "text": "x", "token_ids": None,
         "logprobs": {"tokens": [f"token_id:{t}" for t in pair.spelled],
                      "token_logprobs": [-1.0] * len(pair.spelled)}}]}
    assert_one_of_two(group(jsonl(tmp_path / "ids.jsonl", [chat, legacy]), "-t", pair.name), pair)


def test_openai_logprob_bytes(tmp_path, pair):
    v = pair.vocab

    def content(ids):
        return [{"token": v.piece(t), "bytes": list(v.token_bytes[t]), "logprob": -1.0}
                for t in ids]

    lines = [{"id": f"c{i}", "model": "m", "prompt_token_ids": pair.prompt, "choices": [
        {"index": 0, "message": {"content": "x"}, "logprobs": {"content": content(ids)}}]}
        for i, ids in enumerate([pair.canonical, pair.spelled])]
    assert_one_of_two(group(jsonl(tmp_path / "o.jsonl", lines), "-t", pair.name), pair)


def sglang(pair, k, ids) -> dict:
    return {"text": "x", "output_ids": ids, "prompt_token_ids": pair.prompt,
            "meta_info": {"id": f"rid{k}", "finish_reason": {"type": "length", "length": len(ids)},
                          "prompt_tokens": len(pair.prompt), "completion_tokens": len(ids),
                          "cached_tokens": 0}}


def test_sglang_single_and_batched(tmp_path, pair):
    objs = [sglang(pair, 0, pair.canonical), sglang(pair, 1, pair.spelled)]
    assert_one_of_two(group(jsonl(tmp_path / "s.jsonl", objs), "-t", pair.name), pair)
    # a batched /generate response is one JSON list per line
    path = jsonl(tmp_path / "batch.jsonl", [objs])
    assert_one_of_two(group(path, "-t", pair.name), pair)
    r = run("diff", path, "-t", pair.name, "--json")
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == ["rid1"]


def test_parquet_and_arrow_tables(tmp_path, pair):
    table = pa.table({"uid": ["a", "b"], "model": ["m", "m"], "tokenizer": [pair.name] * 2,
                      "prompt": [pair.prompt] * 2, "response": [pair.canonical, pair.spelled]})
    pq.write_table(table, tmp_path / "roll.parquet")
    feather.write_feather(table, tmp_path / "roll.arrow")
    for name in ("roll.parquet", "roll.arrow"):
        g = group(tmp_path / name, "--ids-field", "response", "--prompt-ids-field", "prompt")
        assert_one_of_two(g, pair)
    g = group(tmp_path / "roll.parquet", "--ids-field", "response")  # no prompt column named
    assert_one_of_two(g, pair, with_prompt=False)
    r = run("analyze", tmp_path / "roll.parquet", "--ids-field", "response",
            "--prompt-ids-field", "nope")
    assert r.exit_code == 2 and "roll.parquet:1: no 'nope' field" in r.output


def test_compressed_inputs(tmp_path, pair):
    objs = [{"id": str(i), "model": "m", "tokenizer": pair.name, "prompt_token_ids": pair.prompt,
             "token_ids": ids} for i, ids in enumerate([pair.canonical, pair.spelled])]
    body = b"".join(orjson.dumps(o) + b"\n" for o in objs)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    (tmp_path / "misnamed.jsonl").write_bytes(gzip.compress(body))  # told by magic bytes
    for name in ("a.jsonl.gz", "a.jsonl.zst", "misnamed.jsonl"):
        assert_one_of_two(group(tmp_path / name), pair)
    r = run("analyze", "-", "--json", input=zstandard.ZstdCompressor().compress(body))
    assert r.exit_code == 0 and json.loads(r.stdout)["groups"][0]["n_noncanonical"] == 1
    r = run("check", tmp_path / "a.jsonl.gz", "--max-fraction-noncanonical", "0.4")
    assert r.exit_code == 1  # 0.5 > 0.4: check reads compressed input too


def test_truncated_gzip_is_one_line(tmp_path):
    line = orjson.dumps({"model": "gpt2", "token_ids": [1, 2]}) + b"\n"
    body = line * 500
    data = gzip.compress(body)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    r = run("analyze", tmp_path / "cut.jsonl.gz")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "cut.jsonl.gz: corrupt or truncated gzip data" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_over_long_line_is_skipped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(input_files, "MAX_LINE_BYTES", 1000)
    good = orjson.dumps({"model": "gpt2", "token_ids": Pair("gpt2").spelled})
    body = good + b"\n" + b"x" * 3_000_000 + b"\n" + good + b"\n"
    (tmp_path / "long.jsonl.gz").write_bytes(gzip.compress(body))
    r = run("analyze", tmp_path / "long.jsonl.gz")
    assert r.exit_code == 2
    assert "long.jsonl.gz:2: line is longer than the 1000 bytes limit" in r.output
    r = run("analyze", tmp_path / "long.jsonl.gz", "--skip-invalid", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert (data["n_samples"], data["n_skipped"]) == (2, 1)
    # skipping reads the rest of the line in bounded chunks: a 20 MB line costs far less
    (tmp_path / "huge.jsonl.gz").write_bytes(gzip.compress(b"x" * 20_000_000 + b"\n" + good))
    tracemalloc.start()
    try:
        lines = list(input_files.iter_lines(str(tmp_path / "huge.jsonl.gz"), errors=[]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [n for _s, n, _raw in lines] == [2] and peak < 5_000_000


def test_dev_zero_fails_fast_with_bounded_memory():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc: cannot read the process's peak RSS")
    # the CLI in a fresh process that reports its own peak RSS as it exits: VmHWM (kB) belongs
    # to the new program, where ru_maxrss would also count the forking pytest process
    code = ("import atexit, sys; atexit.register(lambda: print('rss', next(line.split()[1] for "
            "line in open('/proc/self/status') if line.startswith('VmHWM')), file=sys.stderr)); "
            "sys.argv = ['tmcli', 'analyze', '/dev/zero']; from tmcli.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    *lines, rss = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == ""
    assert lines == [
        "Error: /dev/zero:1: line is longer than the 64 MiB limit; write one completion per line "
        "(JSONL), not one JSON document; or pass --skip-invalid to skip such lines"]
    assert int(rss.split()[1]) < 512 * 1024  # about one 64 MiB line, never the endless file


def test_unknown_format_names_the_fields(tmp_path):
    r = run("analyze", jsonl(tmp_path / "u.jsonl", [{"model": "gpt2", "completion": "hi"}]))
    assert r.exit_code == 2
    assert "u.jsonl:1: no token ids found (looked for 'token_ids', 'output_ids'" in r.output
