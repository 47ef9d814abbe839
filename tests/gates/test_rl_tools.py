"""`diff`, `filter`, `check --on-mismatch`, span causes and `check_ids`, with real tokenizers and
numbers known by construction."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, reencoder
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.measure.causes import CAUSES, span_cause
from tmcli.measure.rollout_check import check_ids, check_ids_batch

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def vocab(name: str = "gpt2"):
    return reencoder(name).vocab


def ids(text: str, name: str = "gpt2") -> list[int]:
    return vocab(name).original.encode(text, add_special_tokens=False).ids


def spelled(text: str, name: str = "gpt2") -> list[int]:
    table = vocab(name).bytes_to_id()
    return [table[bytes([b])] for b in text.encode()]


PROMPT = ids("We worked on it")
CANONICAL = ids(" together and it worked.")
MERGED = spelled(" together") + ids(" and it worked.")  # one span: 9 tokens -> 1


def rec(i, token_ids, **extra) -> dict:
    return {"id": str(i), "model": "gpt2", "tokenizer": "gpt2", "temperature": 1.0,
            "prompt_token_ids": PROMPT, "token_ids": token_ids, **extra}


# -- diff ---------------------------------------------------------------------------------------

def test_diff_plain_output(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(rec(0, CANONICAL)) + b"\n" + orjson.dumps(rec(1, MERGED)) + b"\n")
    r = run("diff", path, "--context", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"{path}:2  id 1  model gpt2  T=1.0  merged: 9 of {len(MERGED)} tokens in 1 span(s)",
        "  span 1 at token 0, 9 -> 1 tokens: merged — the re-encoding joins tokens (fewer tokens)",
        "    before     …␣on│␣it ‖ ",
        "    generated  ␣│t│o│g│e│t│h│e│r",
        "    canonical  ␣together",
        "    after      ␣and│␣it…",
        "",
    ]
    assert "\x1b[" not in r.stdout  # no colours off a terminal
    assert "1 of 2 sample(s) read are non-canonical (showed 1)" in r.stderr


def test_diff_json_id_limit_and_context(tmp_path):
    lines = [rec(0, MERGED), rec(1, CANONICAL), rec(2, MERGED)]
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in lines) + b"{broken\n")
    r = run("diff", path, "--json", "--limit", "1", "-k", "5")
    assert r.exit_code == 0, r.output  # stopped at --limit, before the broken line 4
    (item,) = [json.loads(x) for x in r.stdout.splitlines()]
    sp = item["spans"][0]
    assert (item["line"], item["id"], sp["position"], sp["cause"]) == (1, "0", 0, "merged")
    assert sp["generated"] == spelled(" together") and sp["canonical"] == ids(" together")
    assert sp["generated_tokens"] == ["␣", "t", "o", "g", "e", "t", "h", "e", "r"]
    # the 4 prompt tokens before it, and the 4 completion tokens after it: all there is
    assert sp["context_before"] == ["We", "␣worked", "␣on", "␣it"]
    assert sp["context_before_in_prompt"] == 4 and not sp["more_before"]
    assert sp["context_after"] == ["␣and", "␣it", "␣worked", "."] and not sp["more_after"]
    assert "stopped reading" in r.stderr
    r = run("diff", path)  # reading on to the broken line: one line, exit 2
    assert r.exit_code == 2 and f"{path}:4: malformed JSON" in r.output
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in lines))
    r = run("diff", clean, "--id", "1", "--json")  # a canonical sample, asked for by id
    assert r.exit_code == 0 and json.loads(r.stdout)["spans"] == []
    r = run("diff", clean, "--id", "nope")
    assert r.exit_code == 2 and "no record with id 'nope'" in r.output


def test_diff_shows_bytes_whitespace_and_names_literally(tmp_path):
    v = vocab()
    table = v.bytes_to_id()
    g = ids("a") + [table[b" "], table[b"\n"], table[b"\xe2"]] + ids("x")
    line = rec("x[red]y[/red]", g, model="[/bold]\x1b[31m")
    path = tmp_path / "w.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    r = run("diff", path, "--id", "x[red]y[/red]", "-k", "9")
    assert r.exit_code == 0, r.output
    assert "id x[red]y[/red]  model [/bold]\\x1b[31m" in r.stdout
    from tmcli.gates.diff import token_strings, visible

    assert token_strings(v, g[1:4]) == ["␣", "\\n", "\\xe2"]
    assert visible("␣│\\\t\u00a0é".encode()) == "\\u2423\\u2502\\\\\\t\\xa0é"


def test_diff_and_filter_do_not_import_torch(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_bytes(orjson.dumps(rec(0, MERGED)) + b"\n")
    code = ("import sys; from typer.testing import CliRunner; from tmcli.cli import app; "
            f"r = CliRunner().invoke(app, ['diff', {str(path)!r}]); assert r.exit_code == 0; "
            f"r = CliRunner().invoke(app, ['filter', {str(path)!r}, '-o', {str(path) + '.k'!r}]); "
            "assert r.exit_code == 0, r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# -- filter -------------------------------------------------------------------------------------

def test_filter_keeps_records_byte_identical(tmp_path):
    raw = [
        orjson.dumps(rec(0, CANONICAL)) + b"\n",
        b'{ "token_ids": ' + orjson.dumps(MERGED) + b', "id": "1", "tokenizer":"gpt2", '
        b'"model": "gpt2", "note": "caf\\u00e9" }\r\n',
        b"\n",  # a blank line is no record
        json.dumps(rec(2, CANONICAL), indent=None, ensure_ascii=True).encode() + b"\n",
        orjson.dumps({"id": "v", "prompt_token_ids": PROMPT, "tokenizer": "gpt2", "model": "gpt2",
                      "outputs": [{"token_ids": CANONICAL}, {"token_ids": MERGED}]}) + b"\n",
        orjson.dumps(rec(4, CANONICAL)),  # last line, no newline
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(raw))
    r = run("filter", src, "--keep", "canonical", "-o", tmp_path / "keep.jsonl")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "keep.jsonl").read_bytes() == raw[0] + raw[3] + raw[5]
    assert "kept 3 canonical record(s), dropped 2" in r.stderr
    r = run("filter", src, "--keep", "noncanonical", "-o", tmp_path / "nc.jsonl")
    assert (tmp_path / "nc.jsonl").read_bytes() == raw[1] + raw[4]  # n=2 line: one differs
    # compressed in, compressed out (by the output's suffix), the same records
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(src.read_bytes()))
    r = run("filter", tmp_path / "in.jsonl.gz", "-o", tmp_path / "keep.jsonl.gz")
    assert r.exit_code == 0, r.output
    assert gzip.decompress((tmp_path / "keep.jsonl.gz").read_bytes()) == raw[0] + raw[3] + raw[5]
    r = run("filter", "-", "-o", "-", input=src.read_bytes())  # stdin to stdout
    assert r.exit_code == 0 and r.stdout_bytes == raw[0] + raw[3] + raw[5]


def test_filter_parquet_in_parquet_out(tmp_path):
    table = pa.table({"id": ["a", "b", "c"], "tokenizer": ["gpt2"] * 3, "score": [0.5, 1.0, 2.0],
                      "response": [CANONICAL, MERGED, CANONICAL]})
    table = table.replace_schema_metadata({b"source": b"rollouts step 7"})
    pq.write_table(table, tmp_path / "r.parquet", compression="zstd")
    r = run("filter", tmp_path / "r.parquet", "--ids-field", "response",
            "-o", tmp_path / "k.parquet")
    assert r.exit_code == 0, r.output
    out = pq.read_table(tmp_path / "k.parquet")
    assert out.schema.equals(pq.read_schema(tmp_path / "r.parquet"), check_metadata=True)
    assert out.to_pylist() == [table.to_pylist()[0], table.to_pylist()[2]]
    meta = pq.ParquetFile(tmp_path / "k.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    r = run("filter", tmp_path / "r.parquet", "--ids-field", "response", "-o", tmp_path / "k.jsonl")
    assert r.exit_code == 2 and "name the output .parquet" in r.output


def test_filter_invalid_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(rec(0, CANONICAL)) + b"\n{nope\n"
                    + orjson.dumps(rec(1, MERGED)) + b"\n")
    out = tmp_path / "k.jsonl"
    r = run("filter", src, "-o", out)
    assert r.exit_code == 2 and "in.jsonl:2: malformed JSON" in r.output and not out.exists()
    r = run("filter", src, "-o", out, "--skip-invalid")
    assert r.exit_code == 0 and out.read_bytes() == orjson.dumps(rec(0, CANONICAL)) + b"\n"
    assert "kept 1 canonical record(s), dropped 1, 1 invalid dropped" in r.stderr
    assert run("filter", src, "-o", src).exit_code == 2  # never over its own input
    assert run("filter", src, "-o", tmp_path / "no" / "dir.jsonl").exit_code == 2


# -- check --on-mismatch ------------------------------------------------------------------------

@pytest.fixture
def mixed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(orjson.dumps(rec(i, g)) + b"\n"
                              for i, g in enumerate([CANONICAL, MERGED, CANONICAL])))
    return path


def test_check_on_mismatch(mixed):
    r = run("check", mixed, "--on-mismatch", "error")
    assert r.exit_code == 1
    expected = f"FAIL  {mixed}:2: sample 1 is non-canonical from token 0 (1 span(s): merged)"
    assert expected in r.stdout
    r = run("check", mixed, "--on-mismatch", "warn")
    assert r.exit_code == 0 and "WARN  " in r.stdout and "1 non-canonical sample(s)" in r.stdout
    r = run("check", mixed, "--on-mismatch", "warn", "--max-fraction-noncanonical", "0.2")
    assert r.exit_code == 1  # the threshold still gates: 1/3 > 0.2
    r = run("check", mixed, "--on-mismatch", "error", "--format", "json")
    data = json.loads(r.stdout)
    assert data["passed"] is False and [m["id"] for m in data["mismatches"]] == ["1"]
    r = run("check", mixed, "--on-mismatch", "error", "--format", "github")
    assert r.stdout.startswith(f"::error file={mixed},line=2,title=tmcli non-canonical::")
    import xml.etree.ElementTree as ET

    suite = ET.fromstring(run("check", mixed, "--on-mismatch", "error", "-f", "junit").stdout)
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    assert suite.find("testcase").get("name") == "canonical[1]"
    suite = ET.fromstring(run("check", mixed, "--on-mismatch", "warn", "-f", "junit").stdout)
    assert suite.get("failures") == "0" and "sample 1" in suite.find("testcase/system-out").text
    r = run("check", mixed, "--on-mismatch", "drop")
    assert r.exit_code == 2 and "tmcli filter --keep canonical" in r.output


# -- causes -------------------------------------------------------------------------------------

def test_span_causes_by_construction():
    v = vocab()
    t = v.bytes_to_id()
    assert span_cause(v, spelled(" together"), ids(" together")) == "merged"
    assert span_cause(v, [t[b" "]] + ids("the"), ids(" the")) == "whitespace"
    assert span_cause(v, [t[b"\n"], t[b"\n"]], [628]) == "whitespace"  # "\n\n" is id 628
    assert span_cause(v, [t[b"ab"], t[b"c"]], [t[b"a"], t[b"bc"]]) == "resegmented"
    assert span_cause(v, [t[b"\xe2"]], [], at_end=True) == "cut-utf8"
    assert span_cause(v, [t[b"\xe2"]], [], at_end=False) == "invalid-utf8"
    assert span_cause(v, [t[b"\xe2"], t[b"x"]], [], at_end=True) == "invalid-utf8"
    assert span_cause(v, [50300], []) == "unknown-id"  # beyond GPT-2's 50,257 ids
    assert span_cause(v, ids("abc"), ids("abd")) == "normalised"
    assert span_cause(v, spelled("<|endoftext|>"), [50256]) == "special-text"
    assert set(CAUSES) >= {"merged", "lengthened", "special-text", "cut-utf8", "unknown-id"}


def test_lengthening_and_added_token_causes(tmp_path):
    # STUDY.md: " loneliness" + "teacher" re-encodes to 4 tokens with SmolLM2's tokenizer
    g = ids(" loneliness", "smollm2-135m") + ids("teacher", "smollm2-135m")
    r = check_ids("smollm2-135m", g)
    assert (r.kind, [s.cause for s in r.spans]) == ("lengthened", ["lengthened"])
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_str(vocab().original.to_str())
    tok.add_tokens([AddedToken("<think>", special=False)])
    think = tok.token_to_id("<think>")
    spelled_tag = ids("Hi") + spelled("<think>") + ids(" ok")
    r = check_ids(tok, spelled_tag)
    assert r.spans[0].cause == "special-text" and r.spans[0].canonical == [think]
    assert check_ids(tok, ids("Hi") + [think] + ids(" ok")).canonical


def test_analyze_counts_causes_per_group(tmp_path):
    table = vocab().bytes_to_id()
    objs = [rec(0, MERGED), rec(1, CANONICAL + [table[b" "]] + ids("the")), rec(2, CANONICAL)]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    r = run("analyze", path, "--json", "-o", tmp_path / "s.parquet")
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["groups"][0]
    assert (g["spans_merged"], g["spans_whitespace"], g["spans_special_text"]) == (1, 1, 0)
    import polars as pl

    assert pl.read_parquet(tmp_path / "s.parquet")["causes"].to_list() == [
        ["merged"], ["whitespace"], []]


# -- check_ids ----------------------------------------------------------------------------------

def test_check_ids_verdicts():
    r = check_ids("gpt2", MERGED, prompt_ids=PROMPT)
    assert not r and r.kind == "merged" and r.n_tokens == len(MERGED)
    (span,) = r.spans
    assert (span.position, span.generated, span.canonical, span.cause) == (
        0, spelled(" together"), ids(" together"), "merged")
    assert r.canonical_ids == CANONICAL  # what a re-tokenizing pipeline would train on
    assert check_ids("gpt2", CANONICAL, PROMPT).canonical
    import numpy as np

    group = check_ids_batch(vocab().original, [np.array(MERGED), CANONICAL, CANONICAL + [50300]],
                            np.array(PROMPT))
    assert [c.canonical for c in group] == [False, True, False]
    assert group[2].spans[0].cause == "unknown-id" and group[2].spans[0].position == len(CANONICAL)
    with pytest.raises(Exception, match="2 prompts"):
        check_ids_batch("gpt2", [CANONICAL], [PROMPT, PROMPT])
