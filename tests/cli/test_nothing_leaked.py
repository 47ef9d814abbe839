"""Nothing leaked, and exit codes a CI can trust (issue 24, rows 8, 11, 15, 18): an error never
prints a file's contents; every condition the user can fix exits 2 with one line, and a bug
exits 70, never blamed on the input; data shown in CI formats and summaries is escaped; the
option values that used to slip through are refused.

Each test names the row of issue 24 it holds; each failed before the fix."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import orjson
import pytest
from test_analyze_cli import run, write
from test_hardening import MERGED, cli_subprocess, one_error_line, rec

SECRET = "hunter2-SECRET"
SECRETS = {  # a local file named in a record: whatever it holds must not reach the error
    "notes.txt": f"password={SECRET}\n",
    "creds.json": json.dumps({"model": {"type": SECRET}}),
    "tokenizer.json": f'{{"version": "1.0", "model": "{SECRET}"',
    "key.model": SECRET,
    "weights.gguf": SECRET,
}


# -- row 8: a record's tokenizer field naming a local file -----------------------------------------

@pytest.mark.parametrize("name", list(SECRETS))
def test_a_local_file_named_by_a_record_is_not_a_tokenizer_and_not_shown(tmp_path, name):
    secret = tmp_path / name
    secret.write_text(SECRETS[name])
    path = write(tmp_path / "r.jsonl", [{**rec(0), "tokenizer": str(secret)}])
    line = one_error_line(run("analyze", path))
    assert f"{path}:1:" in line and f"not a tokenizer: {secret}" in line
    assert SECRET not in line
    two = [rec(1), {**rec(0), "model": "other", "tokenizer": str(secret)}]
    r = run("analyze", write(tmp_path / "two.jsonl", two), "--skip-invalid")
    assert r.exit_code == 0 and SECRET not in r.output and "not a tokenizer" in r.stderr
    line = one_error_line(run("analyze", write(tmp_path / "plain.jsonl", [rec(1)]), "-t", secret))
    assert "not a tokenizer" in line and SECRET not in line  # given with --tokenizer: the same


def test_a_device_or_folder_named_as_tokenizer_is_not_a_tokenizer(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(0)])
    assert "not a tokenizer: /dev/null" in one_error_line(run("analyze", path, "-t", "/dev/null"))
    assert f"not a tokenizer: {tmp_path}" in one_error_line(run("analyze", path, "-t", tmp_path))


# -- row 11: 70 only for bugs, 2 for everything the user can fix ---------------------------------------

def test_a_stdout_that_cannot_show_the_data_is_exit_2(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(0, model="模型")])
    done = cli_subprocess("analyze", path, env_extra={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 2, done.stderr
    assert "PYTHONIOENCODING=utf-8" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content", ["caf\xe9 \x93quoted\x94\n".encode("latin-1"),
                                     bytes(range(256))])
def test_selftest_text_file_not_utf8_is_exit_2(tmp_path, content):
    path = tmp_path / "texts.txt"
    path.write_bytes(content)
    line = one_error_line(run("selftest", "-t", "gpt2", "--text-file", path))
    first_line = content[:content.index(b"\x80") if b"\x80" in content else 3].count(b"\n") + 1
    assert f"{path}:{first_line}: not UTF-8 text" in line and "save the file as UTF-8" in line


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stored")
    path = write(folder / "r.jsonl", [rec(0), rec(1, MERGED)])
    out = folder / "s.parquet"
    assert run("analyze", path, "-o", out).exit_code == 0
    return out


@pytest.mark.parametrize("change", ["window", "method", "examples", "meta", "column"])
def test_a_tampered_stored_analysis_is_exit_2(stored, tmp_path, change):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(stored)
    meta = orjson.loads(pq.ParquetFile(stored).metadata.metadata[b"tmcli"])
    if change == "window":
        meta["window"] = "wide"
    elif change == "method":
        meta["window_method"] = "magic"
    elif change == "examples":
        meta["examples"] = [{"segments": [{"generated": [1, 2]}]}]
    elif change == "meta":
        meta["meta"] = [1, 2]
    else:
        table = table.set_column(table.schema.get_field_index("n_tokens"), "n_tokens",
                                 pa.array(["many"] * table.num_rows))
    path = tmp_path / "tampered.parquet"
    pq.write_table(table.replace_schema_metadata({b"tmcli": orjson.dumps(meta)}), path)
    for command in (["analyze"], ["report", "--html", tmp_path / "r.html"]):
        line = one_error_line(run(command[0], path, *command[1:]))
        assert str(path) in line and "not a stored analysis tmcli can read" in line


def test_a_bug_while_measuring_is_70_not_blamed_on_the_input(tmp_path, monkeypatch):
    import tmcli.measure.parallel

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in the measurement")

    monkeypatch.setattr(tmcli.measure.parallel, "measure_batch", broken)
    path = write(tmp_path / "r.jsonl", [rec(0)])
    for args in (["analyze", path], ["analyze", path, "--skip-invalid"]):
        line = one_error_line(run(*args), code=70)
        assert "internal error" in line and "RuntimeError: a bug in the measurement" in line
        assert "cannot analyse this input" not in line


def test_option_errors_are_not_skipped_by_skip_invalid(tmp_path):
    """`InvalidRecord.skippable`: a line that is fine under a wrong option is not skipped."""
    from tmcli.errors import InvalidRecord

    assert InvalidRecord("f", 1, "x").skippable and not InvalidRecord("f", 1, "x",
                                                                       skippable=False).skippable
    path = write(tmp_path / "r.jsonl", [rec(0), {**rec(1), "model": "llama", "tokenizer": "llama3"}])
    line = one_error_line(run("analyze", path, "-t", "gpt2", "--skip-invalid"))
    assert "--tokenizer forces one" in line and "--skip-invalid" not in line


def test_every_exit_code_is_named_in_errors():
    """No command exits with a number of its own: every code is a name from `tmcli.errors`."""
    import ast
    from pathlib import Path

    import tmcli

    bad = []
    for path in Path(tmcli.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", None)) in ("Exit", "exit") and node.args \
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value:
                bad.append(f"{path.name}:{node.lineno}")
    assert bad == []


# -- row 15: CI formats stay valid whatever the ids hold ------------------------------------------------

def test_junit_and_text_escape_control_characters_in_ids(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec("a\x01b\x1b[31m\nFAIL forged", MERGED)])
    r = run("check", path, "--on-mismatch", "error", "--format", "junit")
    assert r.exit_code == 1, r.output
    suite = ET.fromstring(r.stdout.encode())
    case = [c for c in suite.iter("testcase") if c.get("name", "").startswith("canonical[")][0]
    assert case.get("name") == "canonical[a\\x01b\\x1b[31m\\nFAIL forged]"
    r = run("check", path, "--on-mismatch", "warn", "--format", "junit")
    ET.fromstring(r.stdout.encode())
    r = run("check", path, "--on-mismatch", "warn")
    assert "\x1b" not in r.stdout and not any(line.startswith("FAIL forged")
                                              for line in r.stdout.splitlines())


# -- row 18: summaries escaped, limits and odd paths said as they are -----------------------------------

def test_filter_summary_escapes_the_output_path(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(0)])
    out = tmp_path / "a\nkept 999 canonical record(s).jsonl"
    r = run("filter", path, "-o", out)
    assert r.exit_code == 0, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "a\\nkept 999" in r.stderr


def test_resamples_are_capped_with_a_clear_message(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(0)])
    line = one_error_line(run("analyze", path, "--resamples", str(10**9)))
    assert "--resamples 1000000000 is outside 100 to 100,000" in line


def test_a_symlink_loop_and_dev_null_are_said_as_they_are(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "loop2.jsonl")
    (tmp_path / "loop2.jsonl").symlink_to(loop)
    for args in (["analyze", loop], ["report", loop], ["filter", loop, "-o", tmp_path / "o.jsonl"],
                 ["score", loop, "-o", tmp_path / "s.jsonl"],
                 ["selftest", "-t", "gpt2", "--text-file", loop]):
        line = one_error_line(run(*args))
        assert "symbolic link" in line and "no such file" not in line, (args, line)
    for args in (["analyze", "/dev/null"], ["report", "/dev/null"],
                 ["check", "/dev/null", "--max-compression", "1"]):
        line = one_error_line(run(*args))
        assert "no usable records in /dev/null" in line, (args, line)
    r = run("selftest", "-t", "gpt2", "--text-file", "/dev/null", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["passed"]


@pytest.mark.parametrize("value, missing", [("=gpt2", "name"), ("gpt2=", "spec"), ("", None)])
def test_a_tokenizer_mapping_without_a_name_or_spec_is_refused(tmp_path, value, missing):
    path = write(tmp_path / "r.jsonl", [rec(0)])
    line = one_error_line(run("analyze", path, "-t", value))
    assert "--tokenizer" in line and (missing is None or f"lacks a {missing}" in line)
