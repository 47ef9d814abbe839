"""Nothing destroyed (issue 24, rows 1, 2, 3, 7, 17): every command writes only regular files,
never over one of its inputs, never touches an existing output before its inputs and options
are checked, uses a temporary file of its own beside the target, and refuses a second writer.

Each test names the row of issue 24 it holds; each failed before the fix."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_analyze_cli import run, write
from test_hardening import CANONICAL, MERGED, SAMPLE, one_error_line, rec

NOT_JSON = [b"{not json"]  # an input whose analysis would fail: the output's error must come first


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def outputs(tmp_path):
    return write(tmp_path / "in.jsonl", [rec(0), rec(1, MERGED), rec(2), rec(3, MERGED, 2.0)])


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


# -- row 1: only regular files are written -------------------------------------------------------

@pytest.mark.parametrize("command", [["filter", "-o"], ["analyze", "-o"], ["report", "--html"],
                                     ["score", "-o"]])
def test_a_fifo_output_is_refused_and_left_a_fifo(outputs, fifo, command):
    suffix = {"analyze": ".parquet", "report": ".html"}.get(command[0], ".jsonl")
    target = fifo.rename(fifo.with_suffix(suffix))
    line = one_error_line(run(command[0], outputs, command[1], target))
    assert str(target) in line and "FIFO" in line and "regular file" in line
    assert stat.S_ISFIFO(os.stat(target).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_output_is_refused_and_left_a_device(outputs, tmp_path):
    null = tmp_path / "null"  # a private copy of /dev/null (1, 3): the real one is never risked
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    line = one_error_line(run("filter", outputs, "-o", null))
    assert "is a device" in line
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_a_full_device_is_refused_as_a_device(outputs):
    line = one_error_line(run("score", outputs, "-o", "/dev/full", "--temperatures", "5"))
    assert line.startswith("Error: /dev/full is a device")


# -- row 2: never over an input ------------------------------------------------------------------

def test_analyze_refuses_to_write_over_its_raw_input_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "rollouts.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "model": ["gpt2"] * 2, "tokenizer": ["gpt2"] * 2,
                             "token_ids": [CANONICAL, MERGED]}), table)
    before = digest(table)
    line = one_error_line(run("analyze", table, "-o", table))
    assert "is the input" in line
    os.link(table, tmp_path / "same.parquet")  # a hard link is the same file
    line = one_error_line(run("analyze", table, "-o", tmp_path / "same.parquet"))
    assert "is the input" in line
    assert digest(table) == before


@pytest.mark.parametrize("command", [["filter"], ["score", "--temperatures", "5"]])
def test_a_symlink_to_the_input_is_the_input(outputs, tmp_path, command):
    link = tmp_path / "link.jsonl"
    link.symlink_to(outputs)
    before = digest(outputs)
    line = one_error_line(run(command[0], outputs, "-o", link, *command[1:]))
    assert "is the input" in line or "overwrite its input" in line
    assert digest(outputs) == before


# -- row 3: an existing output is not touched before the inputs and options are checked -----------

def test_score_leaves_an_existing_parquet_untouched(outputs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = tmp_path / "existing.parquet"
    pq.write_table(pa.table({"id": ["a"], "n": [1]}), target)
    before = digest(target)
    line = one_error_line(run("score", outputs, "-o", target, "--model", "bad-name"))
    assert "name the file .jsonl" in line
    assert digest(target) == before


def test_score_with_a_bad_model_leaves_a_torn_output_as_it_was(outputs, tmp_path):
    target = tmp_path / "scored.jsonl"
    target.write_bytes(b'{"id": "done", "token_ids": [1]}\n{"id": "torn", "tok')
    before = digest(target)
    line = one_error_line(run("score", outputs, "-o", target, "--model", "bad-name"))
    assert "bad-name" in line
    assert digest(target) == before  # the torn line is cut only when a record is added


def test_appending_to_a_file_that_is_not_jsonl_is_refused_and_it_stays(outputs, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes, no newline at the end")
    before = digest(notes)
    line = one_error_line(run("score", outputs, "-o", notes, "--temperatures", "5"))
    assert "not a JSONL file" in line
    assert digest(notes) == before


# -- row 7: a temporary file of its own, and one writer per output ---------------------------------

def test_a_users_own_tmp_file_is_never_touched(outputs, tmp_path):
    mine = tmp_path / "kept.jsonl.tmp"
    mine.write_text("mine")
    (tmp_path / "kept.html.tmp").write_text("mine too")
    for args in (["filter", outputs, "-o", tmp_path / "kept.jsonl"],
                 ["report", outputs, "--html", tmp_path / "kept.html"]):
        assert run(*args).exit_code == 0
    assert mine.read_text() == "mine" and (tmp_path / "kept.html.tmp").read_text() == "mine too"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmcli-tmp")]
    umask = os.umask(0)
    os.umask(umask)  # a new output gets the usual permissions (a temporary file's are private)
    assert stat.S_IMODE(os.stat(tmp_path / "kept.jsonl").st_mode) == 0o666 & ~umask
    os.chmod(tmp_path / "kept.html", 0o640)  # a replaced one keeps its own
    assert run("report", outputs, "--html", tmp_path / "kept.html").exit_code == 0
    assert stat.S_IMODE(os.stat(tmp_path / "kept.html").st_mode) == 0o640


@pytest.mark.parametrize("command", [["filter", "-o"], ["analyze", "-o"], ["report", "--html"]])
def test_a_second_writer_of_one_output_is_refused(outputs, tmp_path, command):
    from tmcli.io.outputs import AtomicFile

    suffix = {"analyze": ".parquet", "report": ".html"}.get(command[0], ".jsonl")
    target = tmp_path / f"busy{suffix}"
    target.write_bytes(b"the first writer's result")
    other = AtomicFile(target)  # another run at work on it (its temporary file locked)
    try:
        line = one_error_line(run(command[0], outputs, command[1], target))
        assert "being written by another tmcli process" in line
    finally:
        other.abort()
    assert target.read_bytes() == b"the first writer's result"


def test_generate_refuses_an_output_being_replaced(tmp_path):
    from tmcli.io.outputs import AtomicFile

    target = tmp_path / "out.jsonl"
    other = AtomicFile(target)
    try:
        line = one_error_line(run("generate", "-p", SAMPLE, "-o", target, "-n", "1", "-t", "0",
                                  "--max-new-tokens", "2"))
    finally:
        other.abort()
    assert "being written by another tmcli process" in line and not target.exists()


# -- row 17: an unwritable output is found before the work -------------------------------------------

@pytest.fixture
def sealed(tmp_path):
    """A folder nothing can be created in: immutable as root (chattr +i), read-only otherwise."""
    folder = tmp_path / "sealed"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", folder], capture_output=True).returncode != 0:
            pytest.skip("root, and no immutable flag on this file system")
        yield folder
        subprocess.run(["chattr", "-i", folder], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.mark.parametrize("command, name", [(["filter", "-o"], "o.jsonl"),
                                           (["report", "--html"], "r.html"),
                                           (["analyze", "-o"], "s.parquet"),
                                           (["score", "-o"], "s.jsonl")])
def test_an_unwritable_output_fails_before_the_work(tmp_path, sealed, command, name):
    bad = write(tmp_path / "bad.jsonl", [], raw_lines=NOT_JSON)  # its analysis would fail
    line = one_error_line(run(command[0], bad, command[1], sealed / name))
    assert f"cannot write {sealed / name}" in line
    assert "malformed JSON" not in line and "not valid JSON" not in line


def test_a_file_in_place_of_the_folder_is_named(outputs, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_error_line(run("report", outputs, "--html", tmp_path / "file" / "r.html"))
    assert "not a folder" in line


# -- the one policy, for every command ------------------------------------------------------------

def test_the_policy_lives_in_the_cli_and_the_library_keeps_its_refusals(outputs, fifo):
    """The four checkers of the library are gone (one policy, `tmcli.cli.paths`); the library
    writers still refuse a FIFO when called from Python."""
    import tmcli.gates.filter
    import tmcli.io.outputs
    import tmcli.io.writer
    import tmcli.present.html_report
    from tmcli import TmcliError, filter_file
    from tmcli.cli import paths
    from tmcli.io.writer import RecordWriter

    assert not hasattr(tmcli.present.html_report, "check_path")
    assert not hasattr(tmcli.io.outputs, "check_parquet_path")
    assert not hasattr(tmcli.io.writer, "check_writable")
    assert not hasattr(tmcli.gates.filter, "_check_paths")
    assert callable(paths.check_output)
    with pytest.raises(TmcliError, match="FIFO"):
        filter_file(outputs, str(fifo))
    with pytest.raises(TmcliError, match="FIFO"):
        RecordWriter(fifo)
    with pytest.raises(TmcliError, match="is the input"):
        filter_file(outputs, outputs)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
