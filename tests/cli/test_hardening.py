"""Hardening, through the CLI: exit codes a CI can trust, hostile names, duplicates, one writer
per output file, output paths checked first, failed writes leaving nothing behind.

Exit codes: 0 ok, 1 only for a failed check, 2 for every user, data and OS problem (one line
naming the path and the fix), 70 for an internal error (one line saying how to see the traceback).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, reencoder
from test_analyze_cli import PROMPT, ids, run, spelled, write

SAMPLE = ROOT / "sample_data" / "prompts.txt"
CANONICAL = ids(" together and it worked.")
MERGED = spelled(" together") + ids(" and it worked.")


def rec(i, token_ids=CANONICAL, temperature=1.0, model="gpt2", **extra) -> dict:
    return {"id": str(i), "model": model, "tokenizer": "gpt2", "temperature": temperature,
            "prompt_token_ids": PROMPT, "token_ids": token_ids, **extra}


def one_error_line(result, code: int = 2) -> str:
    """The single stderr line of a failed command (asserting there is one, and no traceback)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output
    return lines[0]


def cli_subprocess(*args, limit_bytes: int | None = None, env_extra: dict | None = None,
                   **kwargs):
    """`python -m tmcli ARGS` in a fresh process, with at most 4 GiB of address space (a
    regression that reads a device without end fails fast instead of filling the machine);
    ``limit_bytes`` caps the size of any file it writes (RLIMIT_FSIZE, with SIGXFSZ ignored), so
    a write fails as on a full disk; ``env_extra`` adds to its environment."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tmcli", *map(str, args)], env=env,
                          capture_output=True, text=True, preexec_fn=cap, timeout=300, **kwargs)


@pytest.fixture
def outputs(tmp_path):
    return write(tmp_path / "out.jsonl", [rec(0), rec(1, MERGED), rec(2), rec(3, MERGED, 2.0)])


# -- 1. exit codes: OS errors and data problems are 2 with one line; internal errors are 70 -------

def test_read_error_names_the_input_and_exits_2():
    # reading /proc/self/mem at offset 0 fails with EIO: an OS error from read(), not open()
    line = one_error_line(run("analyze", "/proc/self/mem"))
    assert "/proc/self/mem" in line and "Input/output error" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_input_exits_2(outputs):
    os.chmod(outputs, 0)
    try:
        line = one_error_line(run("check", outputs, "--max-compression", "0.5"))
    finally:
        os.chmod(outputs, 0o644)
    assert outputs in line and "ermission denied" in line


MALFORMED_LOGPROBS = {
    "content a string": {"logprobs": {"content": "not a list"}},
    "bytes out of range": {"logprobs": {"content": [{"token": "a", "bytes": [999]}]}},
    "bytes not numbers": {"logprobs": {"content": [{"token": "a", "bytes": ["x"]}]}},
    "bad escape": {"logprobs": {"tokens": ["bytes:\\xZZ"]}},
}


@pytest.mark.parametrize("case", list(MALFORMED_LOGPROBS))
def test_malformed_openai_logprobs_are_invalid_records(tmp_path, case):
    bad = {"id": "bad", "model": "gpt2", "choices": [MALFORMED_LOGPROBS[case]]}
    path = write(tmp_path / "openai.jsonl", [rec(0), bad, rec(2)])
    line = one_error_line(run("analyze", path))
    assert f"{path}:2:" in line and "--skip-invalid" in line
    r = run("analyze", path, "--skip-invalid", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert (data["n_samples"], data["n_skipped"]) == (2, 1)
    r = run("check", path, "--max-compression", "0.5", "--skip-invalid")
    assert r.exit_code == 0, r.output


def test_internal_error_exits_70_and_says_how_to_see_the_traceback(outputs, monkeypatch):
    import tmcli.gates.check

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tmcli.gates.check, "render", broken)
    line = one_error_line(run("check", outputs, "--max-compression", "0.5"), code=70)
    assert "internal error" in line and "RuntimeError: a bug" in line
    assert "--debug" in line and "TMCLI_DEBUG=1" in line
    r = run("--debug", "check", outputs, "--max-compression", "0.5")
    assert r.exit_code == 70 and "Traceback" in r.stderr and "RuntimeError: a bug" in r.stderr


def test_bad_option_values_are_one_line(outputs):
    line = one_error_line(run("analyze", outputs, "--window", "abc"))
    assert "--window" in line and "tmcli analyze --help" in line
    line = one_error_line(run("check", outputs, "--max-compression", "lots"))
    assert "--max-compression" in line
    assert "No such option" in one_error_line(run("analyze", outputs, "--windw", "3"))


@pytest.mark.parametrize("value", ["-0.01", "5"])
def test_thresholds_outside_0_1_are_rejected_before_the_analysis(tmp_path, value):
    path = write(tmp_path / "bad.jsonl", [], raw_lines=[b"{not json"])  # never read
    line = one_error_line(run("check", path, "--max-noncanonical-rate", value))
    assert "--max-noncanonical-rate" in line and "outside 0..1" in line


def test_corrupt_tokenizer_json_in_a_folder_exits_2(tmp_path, outputs):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    line = one_error_line(run("analyze", outputs, "--tokenizer", folder))
    assert "tokenizer.json" in line and str(folder) in line


def test_named_tokenizer_file_is_the_one_loaded(tmp_path, cache):
    """`-t dir/mytokenizer.model` loads that SentencePiece file (32,000 ids), not the GPT-2
    tokenizer.json beside it (50,257 ids)."""
    from tmcli.sources.locate import resolve_alias_source

    folder = cache / "test-named-tokenizer"  # kept, so its conversion is cached between runs
    if not (folder / "mytokenizer.model").exists():
        folder.mkdir(exist_ok=True)
        (folder / "tokenizer.json").write_bytes(
            (resolve_alias_source("gpt2").directory / "tokenizer.json").read_bytes())
        (folder / "mytokenizer.model").write_bytes(
            (resolve_alias_source("mistral-v1").directory / "tokenizer.model").read_bytes())
    path = write(tmp_path / "r.jsonl", [{"id": "a", "model": "m", "token_ids": [40000, 100]}])
    r = run("analyze", path, "-t", folder / "mytokenizer.model", "--json")
    assert r.exit_code == 0, r.output  # 32,000 ids: 40000 is one the tokenizer lacks
    assert json.loads(r.stdout)["groups"][0]["unknown_ids"] == 1
    r = run("analyze", path, "-t", folder, "--json")  # the folder: its tokenizer.json (GPT-2)
    assert r.exit_code == 0 and json.loads(r.stdout)["groups"][0]["unknown_ids"] == 0


def test_unknown_tokenizer_in_a_record_gives_file_line_and_can_be_skipped(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(0), {**rec(1), "tokenizer": "no-such-tokenizer"}])
    line = one_error_line(run("analyze", path))
    assert f"{path}:2:" in line and "no-such-tokenizer" in line and "--skip-invalid" in line
    r = run("analyze", path, "--skip-invalid", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n_skipped"] == 1


# -- 2, 3. hostile names: CI output and terminal ----------------------------------------------------

FORGED = "evil\r\n::error::forged%0A\n::stop-commands::tok"


def test_github_format_escapes_workflow_commands(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(0, MERGED, model=FORGED)])
    r = run("check", path, "--max-compression", "0", "--per-group", "--format", "github")
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("::error title=tmcli check max_compression::")
    assert "evil%0D%0A::error::forged%250A%0A::stop-commands::tok" in lines[0]


def test_junit_stays_parseable_with_control_characters(tmp_path):
    name = "a\x1b[31mb\x00c\x07\ufffed"
    path = write(tmp_path / "r.jsonl", [rec(0, MERGED, model=name)])
    r = run("check", path, "--max-compression", "0", "--per-group", "--format", "junit")
    assert r.exit_code == 1, r.output
    suite = ET.fromstring(r.stdout.encode())
    case = suite.find("testcase")
    assert case.get("name") == "max_compression[model=a\\x1b[31mb\\x00c\\x07\\ufffed, temperature=1.0]"
    assert suite.get("failures") == "1" and case.find("failure") is not None


@pytest.mark.parametrize("command", [["analyze"], ["report"], ["check", "--max-compression", "1",
                                                                "--per-group"]])
def test_names_are_never_markup_and_escapes_are_shown(tmp_path, command):
    names = ["[/bold]", "x[red]y[/red]", "\x1b[31mred", "\x1b]8;;http://x\x07ln", "a\nb"]
    path = write(tmp_path / "r.jsonl", [rec(i, model=m) for i, m in enumerate(names)])
    r = run(command[0], path, *command[1:])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    for shown in ("[/bold]", "x[red]y[/red]", "\\x1b[31mred", "\\x1b]8;;http://x\\x07ln", "a\\nb"):
        assert shown in r.stdout, (shown, r.stdout)


# -- 4. many series ---------------------------------------------------------------------------------

def test_report_with_50_series(tmp_path):
    objs = [rec(f"{k}-{t}", MERGED if k % 2 else CANONICAL, temperature=t, model=f"model-{k:02d}")
            for k in range(25) for t in (0.0, 2.0)]
    objs += [{**o, "canonical": "constrain", "id": o["id"] + "c"} for o in objs]
    path = write(tmp_path / "many.jsonl", objs)
    html = tmp_path / "many.html"
    r = run("report", path, "--html", html)
    assert r.exit_code == 0, r.output
    text = html.read_text()
    assert "model-24 (canonical constrain)" in text and "model-00 (canonical off)" in text


# -- 6. duplicates and concurrent writers -----------------------------------------------------------

def test_duplicates_count_once_and_are_reported(tmp_path, outputs):
    lines = Path(outputs).read_bytes()
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_bytes(lines + lines.splitlines(keepends=True)[1])  # 4 records + 5 copies
    doubled.write_bytes(doubled.read_bytes() + lines)
    r = run("analyze", doubled, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["n_samples"] == 4 and data["meta"]["n_duplicates"] == 5
    assert "5 duplicate record(s)" in r.stderr and "--keep-duplicates" in r.stderr
    assert json.loads(run("analyze", outputs, "--json").stdout)["groups"] == data["groups"]
    kept = json.loads(run("analyze", doubled, "--json", "--keep-duplicates").stdout)
    assert kept["n_samples"] == 9 and kept["meta"]["n_duplicates"] == 0
    r = run("check", doubled, "--max-fraction-compressed", "1", "--format", "json")
    assert json.loads(r.stdout)["n_samples"] == 4 and "5 duplicate" in r.stderr
    stored = tmp_path / "s.parquet"
    assert run("analyze", doubled, "-o", stored).exit_code == 0
    assert pl.read_parquet(stored).height == 9  # the sink keeps every row, spans included
    r = run("report", stored, "--html", tmp_path / "r.html")
    assert r.exit_code == 0 and "4 samples" in r.stderr and "5 duplicate" in r.stderr
    r = run("report", stored, "--html", tmp_path / "r.html", "--keep-duplicates")
    assert "9 samples" in r.stderr


def test_same_id_in_another_model_or_temperature_is_not_a_duplicate(tmp_path):
    path = write(tmp_path / "runs.jsonl", [rec(0), rec(0, temperature=2.0), rec(0, model="other")])
    data = json.loads(run("analyze", path, "--json").stdout)
    assert data["n_samples"] == 3 and data["meta"]["n_duplicates"] == 0


HOLD = """
import sys, time
from tmcli.io.writer import RecordWriter
w = RecordWriter(sys.argv[1])
w.write([{"id": "held", "token_ids": [1]}])
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """An output file that another process is writing (holding it open, as a running generate)."""
    out = tmp_path / "busy.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == b"ready"
    yield out
    proc.kill()
    proc.wait()


def test_second_generate_on_a_busy_output_fails_at_once(held, cache):
    before = held.read_bytes()
    line = one_error_line(run("generate", "-m", "smollm2-135m", "-p", SAMPLE, "-n", "1", "-t", "0",
                              "--max-new-tokens", "2", "-o", held))
    assert str(held) in line and "another tmcli process" in line
    assert held.read_bytes() == before


def test_second_score_on_a_busy_output_fails_at_once(held, outputs):
    line = one_error_line(run("score", outputs, "-o", held, "--temperatures", "5"))
    assert "another tmcli process" in line


def test_failed_generate_leaves_no_output_file(tmp_path):
    """A model folder whose tokenizer loads but whose weights do not: the run fails after it
    planned its work, and leaves neither the file nor its folder."""
    from tmcli.sources.locate import resolve_alias_source

    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_bytes(
        (resolve_alias_source("gpt2").directory / "tokenizer.json").read_bytes())
    out = tmp_path / "runs" / "out.jsonl"
    line = one_error_line(run("generate", "-m", model, "-p", SAMPLE, "-n", "1", "-t", "0",
                              "--max-new-tokens", "2", "-o", out))
    assert "cannot load model" in line or "unknown model" in line
    assert not out.exists() and not out.parent.exists()


# -- 8. outputs: checked before the work, write failures leave nothing -----------------------------

@pytest.mark.parametrize("target, message", [("missing/x.parquet", "no such folder"),
                                             ("folder.parquet", "is a folder"),
                                             ("x.csv", "name the file .parquet")])
def test_bad_output_path_fails_before_the_analysis(tmp_path, target, message):
    (tmp_path / "folder.parquet").mkdir()
    path = write(tmp_path / "bad.jsonl", [], raw_lines=[b"{not json"])  # an analysis would fail
    line = one_error_line(run("analyze", path, "-o", tmp_path / target))
    assert message in line


def test_full_disk_writing_parquet_is_one_line_and_leaves_no_tmp(tmp_path, outputs):
    reencoder("gpt2")  # the tokenizer is converted and cached before the size cap applies
    out = tmp_path / "s.parquet"
    done = cli_subprocess("analyze", outputs, "-o", out, limit_bytes=2000)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and str(out) in lines[-1], done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_full_disk_writing_html_leaves_no_tmp(tmp_path, outputs):
    out = tmp_path / "r.html"
    done = cli_subprocess("report", outputs, "--html", out, limit_bytes=100_000)
    assert done.returncode == 2, done.stderr
    assert str(out) in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_full_disk_for_records_is_one_line(outputs, tmp_path):
    # score copies records outside --temperatures through unscored: a write, with no model
    out = tmp_path / "scored.jsonl"
    done = cli_subprocess("score", outputs, "-o", out, "--temperatures", "5", limit_bytes=100)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"Error: {out}: File too large"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
