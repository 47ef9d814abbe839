"""`generate --data-parallel-size N` on a local Ray: the records of one process, from 2 replicas of
the fused engine, also when a replica's process is killed mid-run (twice: once restarted by Ray,
once lost for good); the rows sharded deterministically; the options' one-line errors.

Ray starts once per test session (`local_ray` in conftest: 2 CPUs); each replica loads SmolLM2
with one thread.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.generation.data_parallel import shard
from tmcli.generation.prompts import Prompt
from tmcli.generation.sweep import _Job, generate

PROMPTS = [
    "The lighthouse keeper counted the ships every evening.",
    "Rain had fallen on the valley for three days, and the river was rising fast.",
    "Her notebook",
    "In 1871 the bridge was finished after nine years of work by more than four hundred men.",
]
SWEEP = dict(temperatures=[0.0, 1.0], max_new_tokens=8, engine="fused", seed=3)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ids_and_tokens(records: list[dict]) -> set[tuple]:
    return {(r["id"], tuple(r["token_ids"])) for r in records}


@pytest.fixture(scope="module")
def one_process(cache, tmp_path_factory) -> list[dict]:
    """The records a single process writes (no Ray)."""
    out = tmp_path_factory.mktemp("one") / "out.jsonl"
    generate("smollm2-135m", PROMPTS, out, **SWEEP)
    return _records(out)


def test_rows_are_sharded_by_prompt_longest_first_to_the_least_loaded_replica():
    prompts = [Prompt(i, f"p{i}") for i in range(5)]
    jobs = [_Job(f"{p.index}/{t}", p, t, 0) for p in prompts for t in (0.0, 1.0)]
    lengths = {0: 10, 1: 40, 2: 20, 3: 30, 4: 5}  # prompt tokens
    shards = shard(jobs, lengths, 2, max_new_tokens=10)
    # 1 (50/row) -> r0; 3 (40) -> r1; 2 (30): r1 has 80 < 100 -> r1; 0 (20): r0 100 < 140 -> r0;
    # 4 (15): r0 140 = r1 140 -> the lower index, r0
    assert [[j.id for j in s] for s in shards] == [
        ["1/0.0", "1/1.0", "0/0.0", "0/1.0", "4/0.0", "4/1.0"],
        ["3/0.0", "3/1.0", "2/0.0", "2/1.0"],
    ]
    assert shard(list(reversed(jobs)), lengths, 2, 10)[0][0].prompt.index == 1  # order-free
    assert len(shard(jobs[:2], lengths, 4, 10)) == 1  # no replica without rows


def test_two_replicas_write_the_records_of_one_process(local_ray, one_process, tmp_path):
    out = tmp_path / "dp.jsonl"
    summary = generate("smollm2-135m", PROMPTS, out, data_parallel_size=2, batch_size=1, **SWEEP)
    records = _records(out)
    assert summary.written == len(records) == len(one_process) == 8
    assert _ids_and_tokens(records) == _ids_and_tokens(one_process)
    assert {r["engine"] for r in records} == {"fused"} and summary.new_tokens == 64
    again = generate("smollm2-135m", PROMPTS, out, data_parallel_size=2, **SWEEP)
    assert (again.written, again.skipped) == (0, 8)  # resumes like one process
    deadline = time.monotonic() + 60
    while _replicas() and time.monotonic() < deadline:  # killed at the end, exiting
        time.sleep(0.5)
    assert _replicas() == []


def _replicas() -> list[psutil.Process]:
    """This test process's Ray replica processes (never another user's)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::Replica"):
                found.append(proc)
        except psutil.Error:
            pass
    return found


class _Killer:
    """Progress that SIGKILLs a busy replica's process when the first batch is written, then the
    process Ray restarted in its place (its one restart spent: lost for good)."""

    bars = False

    def __init__(self):
        self.first: set[int] = set()
        self.killed: list[int] = []
        self.notes: list[str] = []

    def start(self, total): ...
    def describe(self, text): ...

    def note(self, text):
        self.notes.append(text)

    def advance(self, tokens):
        replicas = _replicas()
        if not self.killed:
            self.first = {p.pid for p in replicas}
            target = [p for p in replicas if "decode" in p.cmdline()[0]] or replicas
        elif len(self.killed) == 1:
            target = [p for p in replicas if p.pid not in self.first]  # the restarted one
        else:
            return
        if target:
            os.kill(target[0].pid, signal.SIGKILL)
            self.killed.append(target[0].pid)


def test_a_replica_killed_mid_run_loses_and_duplicates_nothing(local_ray, one_process, tmp_path,
                                                                 monkeypatch):
    import tmcli.generation.data_parallel as dp

    monkeypatch.setattr(dp, "RESTARTS", 1)
    out = tmp_path / "dp.jsonl"
    killer = _Killer()
    summary = generate("smollm2-135m", PROMPTS, out, data_parallel_size=2, batch_size=1,
                       progress=killer, **SWEEP)
    assert len(killer.killed) == 2  # a crash Ray restarted, then the same replica lost for good
    assert any("was lost" in n and "go to the 1 replica(s) left" in n for n in killer.notes)
    records = _records(out)
    assert len(records) == len({r["id"] for r in records}) == summary.written == 8
    assert _ids_and_tokens(records) == _ids_and_tokens(one_process)


def test_data_parallel_errors_are_one_line(local_ray, tmp_path):
    runner = CliRunner()
    base = ["generate", "-p", "-", "-t", "0", "--max-new-tokens", "2", "--engine", "fused",
            "-o", str(tmp_path / "o.jsonl")]
    result = runner.invoke(app, base + ["--data-parallel-size", "0"], input="hello\n")
    assert result.exit_code == 2 and "--data-parallel-size must be positive" in result.output
    # more replicas than the cluster has room for: Ray would wait for ever
    result = runner.invoke(app, base + ["--data-parallel-size", "3"], input="a\nb\nc\n")
    assert result.exit_code == 2 and "3 replicas of 1 CPU(s) need 3, and the Ray cluster has 2" \
        in result.output and "--data-parallel-size" in result.output.split(";")[1]
    result = runner.invoke(app, base + ["--data-parallel-size", "2", "--threads", "4"],
                           input="a\nb\n")
    assert result.exit_code == 2 and "a replica needs 4 CPUs" in result.output
    for address, says in (("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
                          ("head-node", "--ray-address 'head-node' is not HOST:PORT")):
        result = runner.invoke(app, base + ["--ray-address", address], input="hello\n")
        line = result.output.strip()
        assert result.exit_code == 2 and "\n" not in line and says in line, result.output
        assert "ray start --head" in line
    assert not (tmp_path / "o.jsonl").exists()

    class Loaded:
        spec, name = "smollm2-135m", "fused"

    with pytest.raises(TmcliError, match="cannot be replicated"):
        generate("smollm2-135m", ["x"], tmp_path / "o.jsonl", engine=Loaded(),
                 data_parallel_size=2)
