"""Bounds and signals (issue 24, rows 9, 12, 13, 14): worker counts bounded by cores and work,
``TMCLI_JOBS`` checked; Ctrl-C stops every worker and leaves no temporary file, also while
waiting on stdin or a FIFO; a terminal on stdin gets a hint; a closed stdout is exit 141 for
every command; a nonsense terminal width still shows every number.

The signal and pipe tests run real processes (a signal cannot be sent to a CliRunner), several
at once to keep the suite short. Each test names the row of issue 24 it holds; each failed
before the fix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import orjson
import pytest
from conftest import ROOT, reencoder
from test_analyze_cli import write
from test_hardening import CANONICAL, MERGED, one_error_line, rec
from typer.testing import CliRunner

from tmcli.cli import app


def start(*args, env_extra=None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "tmcli", *map(str, args)], env=env,
                            stderr=subprocess.PIPE, **kwargs)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def polling(proc: subprocess.Popen) -> bool:
    """Whether the process's main thread is blocked in poll() (waiting for input)."""
    try:
        with open(f"/proc/{proc.pid}/wchan") as fh:
            return "poll" in fh.read()
    except OSError:
        return False


def wait_for(predicate, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# -- row 9: worker counts bounded, TMCLI_JOBS checked ---------------------------------------------

@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_invalid_tmcli_jobs_is_refused(tmp_path, value):
    path = write(tmp_path / "r.jsonl", [rec(0)])
    r = CliRunner().invoke(app, ["analyze", path], env={"TMCLI_JOBS": value})
    line = one_error_line(r)
    assert f"TMCLI_JOBS={value!r}" in line and "whole number" in line


def test_worker_counts_are_capped_by_cores_and_by_work(monkeypatch):
    from tmcli.measure.parallel import Measurer, available_cores, default_jobs

    cores = available_cores()
    monkeypatch.setenv("TMCLI_JOBS", "100000")
    assert default_jobs() == cores and Measurer(64, True, "aligned").jobs == cores
    assert Measurer(64, True, "aligned", jobs=10**5).jobs == cores
    if cores < 2:
        pytest.skip("one core: everything is measured in-process")
    from tmcli.measure.alignment import Sample

    reencoder("gpt2")
    batch = [Sample(MERGED, None)] * 4
    for batches, workers in ((1, None), (2, 2), (5, 2)):  # a pool once each worker has a batch
        m = Measurer(64, True, "aligned", jobs=2)
        try:
            done = [t for k in range(batches) for t, _ in m.submit("gpt2", batch, k)]
            pool = m._pool
            assert (pool._max_workers if pool is not None else None) == workers
            done += [t for t, _ in m.drain()]
            assert done == list(range(batches))
        finally:
            m.close()


def test_ctrl_c_stops_every_worker_and_leaves_no_temporary_file(tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no worker processes")
    reencoder("gpt2")
    with open(tmp_path / "big.jsonl", "wb") as fh:
        for i in range(40_000):
            fh.write(orjson.dumps(rec(i, MERGED if i % 2 else CANONICAL)) + b"\n")
    out = tmp_path / "s.parquet"
    proc = start("analyze", tmp_path / "big.jsonl", "-o", out, env_extra={"TMCLI_JOBS": "2"},
                 stdout=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        wait_for(lambda: len(children(proc.pid)) >= 2 or proc.poll() is not None)
        workers = children(proc.pid)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        for pid in [proc.pid, *workers]:  # whatever happened, nothing is left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "Interrupted."
    time.sleep(0.2)
    assert [w for w in workers if os.path.exists(f"/proc/{w}") and open(
        f"/proc/{w}/stat").read().split(") ")[1][0] != "Z"] == []
    assert sorted(os.listdir(tmp_path)) == ["big.jsonl"]  # no s.parquet, no temporary file


# -- row 12: a closed stdout is exit 141, for every command -------------------------------------------

def test_a_closed_stdout_is_141_everywhere(tmp_path):
    reencoder("gpt2")
    path = write(tmp_path / "r.jsonl", [rec(i, MERGED) for i in range(40)])
    commands = [["analyze", path], ["diff", path], ["report", path],
                ["filter", path, "-o", "-", "--keep", "noncanonical"],
                ["check", path, "--on-mismatch", "warn"], ["--help"]]
    procs = []
    for args in commands:
        read, write_end = os.pipe()
        os.close(read)  # the reader is gone before the command writes anything
        procs.append((args, start(*args, stdout=write_end)))
        os.close(write_end)
    for args, proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 141, (args, proc.returncode, err)
        assert b"Traceback" not in err and b"Exception ignored" not in err, (args, err)


# -- row 13: Ctrl-C while waiting, a hint for a terminal, nothing left in $TMPDIR ----------------------

def test_ctrl_c_while_waiting_and_a_hint_for_a_terminal(tmp_path):
    import pty

    os.mkfifo(tmp_path / "fifo")
    spool = tmp_path / "tmpdir"
    spool.mkdir()
    master, slave = pty.openpty()
    procs = {
        "fifo": start("analyze", tmp_path / "fifo", stdout=subprocess.DEVNULL),
        "stdin": start("analyze", "-", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL),
        "filter": start("filter", "-", "-o", tmp_path / "kept.jsonl", stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, env_extra={"TMPDIR": str(spool)}),
        "tty": start("analyze", "-", stdin=slave, stdout=subprocess.DEVNULL),
    }
    os.close(slave)
    results = {}
    try:
        procs["filter"].stdin.write(orjson.dumps(rec(0)) + b"\n")  # the rest never comes
        procs["filter"].stdin.flush()
        import select

        line, end = b"", time.monotonic() + 90
        while b"\n" not in line and time.monotonic() < end:  # the hint comes at once
            if select.select([procs["tty"].stderr], [], [], 1)[0]:
                line += procs["tty"].stderr.read1(200)
        assert b"reading from the terminal" in line and b"Ctrl-D" in line
        os.write(master, b"\x04")  # Ctrl-D: the end of the (empty) input
        waiting = [procs[k] for k in ("fifo", "stdin", "filter")]
        wait_for(lambda: all(map(polling, waiting)))  # every one waits for input
        time.sleep(2.5)  # long enough for the FIFO's notice
        for proc in waiting:
            proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            results[name] = (proc.wait(timeout=15), proc.stderr.read().decode())
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
        os.close(master)
    for name in ("fifo", "stdin", "filter"):
        code, err = results[name]
        assert code == 130 and err.strip().splitlines()[-1] == "Interrupted.", (name, err)
    assert "a FIFO nothing has been written to yet" in results["fifo"][1]
    assert results["tty"][0] == 2 and "no usable records in <stdin>" in results["tty"][1]
    assert os.listdir(spool) == [] and sorted(os.listdir(tmp_path)) == ["fifo", "tmpdir"]


# -- row 14: a nonsense width still shows every number ------------------------------------------------

def test_columns_0_and_1_show_every_number(tmp_path):
    path = write(tmp_path / "r.jsonl", [rec(i, MERGED if i % 3 else CANONICAL,
                                            temperature=float(i % 2)) for i in range(12)])

    def numbers(columns: str) -> list[str]:
        r = CliRunner().invoke(app, ["analyze", str(path)], env={"COLUMNS": columns})
        assert r.exit_code == 0, r.output
        return sorted(re.findall(r"\d+\.\d+|\d+", r.stdout))

    wide = numbers("200")
    assert len(wide) > 20
    assert numbers("0") == numbers("1") == numbers("80")
    assert set(wide) <= set(numbers("1"))
