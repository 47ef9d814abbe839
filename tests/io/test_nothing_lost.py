"""Nothing lost (issue 24, rows 4, 5, 6, 10, 16): a pipe or FIFO loses no byte to the format
sniff; a record without an id is never merged with another; a compressed file cut short is
refused as such; every line read is measured or counted as skipped with its reason; a
temperature is a number >= 0 or none, never coerced.

Each test names the row of issue 24 it holds; each failed before the fix."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from pathlib import Path

import orjson
import pytest
import zstandard
from typer.testing import CliRunner

from tmcli.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from test_hardening import CANONICAL, MERGED, one_error_line, rec  # noqa: E402

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def jsonl(objs) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


def many(n: int) -> list[dict]:
    """n records, every other one merged, each with a long random field (so that the file is
    many pipe buffers, and compresses into several zstd blocks)."""
    rnd = random.Random(0)
    return [{**rec(i, MERGED if i % 2 else CANONICAL), "pad": rnd.randbytes(64).hex()}
            for i in range(n)]


def summary(path, *args) -> dict:
    r = run("analyze", path, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# -- row 4: a FIFO, a pipe or a process substitution loses nothing to the format sniff -------------

@pytest.fixture
def fifo_of(tmp_path):
    """A FIFO that a thread fills with ``data`` once a reader opens it."""
    threads = []

    def make(data: bytes, name: str = "fifo"):
        path = tmp_path / name
        os.mkfifo(path)

        def feed():
            with open(path, "wb") as fh:  # blocks until the command opens it
                fh.write(data)

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        threads.append(t)
        return path

    yield make
    for t in threads:
        t.join(timeout=10)


def test_filter_from_a_fifo_keeps_every_record(fifo_of, tmp_path):
    data = jsonl(many(400))  # ~100 KB: the sniff used to eat the first 8 KiB
    out = tmp_path / "kept.jsonl"
    r = run("filter", fifo_of(data), "-o", out)
    assert r.exit_code == 0, r.output
    lines = data.splitlines(keepends=True)
    assert out.read_bytes() == b"".join(lines[0::2])  # the even ids are the canonical ones
    assert "kept 200 canonical record(s), dropped 200 of 400 line(s) read" in r.stderr


def test_analyze_from_a_fifo_measures_every_record(fifo_of):
    data = jsonl(many(300))
    assert summary(fifo_of(data))["n_samples"] == 300
    gz = __import__("gzip").compress(data)
    assert summary(fifo_of(gz, "gz-fifo"))["n_samples"] == 300  # told gzip by its magic


def test_a_parquet_table_through_a_fifo_is_read_whole(fifo_of, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(50)], "tokenizer": ["gpt2"] * 50,
                             "token_ids": [MERGED if i % 2 else CANONICAL for i in range(50)]}),
                   table)
    assert summary(fifo_of(table.read_bytes()))["n_samples"] == 50


# -- row 5: null or missing ids are "no id": never merged ------------------------------------------

def test_null_ids_are_distinct_records(tmp_path):
    path = tmp_path / "null.jsonl"
    path.write_bytes(jsonl([{**rec(i, MERGED if i else CANONICAL), "id": None} for i in range(3)]))
    data = summary(path)
    assert data["n_samples"] == 3 and data["meta"]["n_duplicates"] == 0
    r = run("check", path, "--max-fraction-compressed", "1", "--format", "json")
    assert json.loads(r.stdout)["n_samples"] == 3


def test_a_line_derived_id_never_merges_with_a_real_one(tmp_path):
    path = tmp_path / "mixed.jsonl"
    no_id = {k: v for k, v in rec(0).items() if k != "id"}
    path.write_bytes(jsonl([no_id, {**rec(0, MERGED), "id": "line1"}]))  # line 1 has no id
    data = summary(path)
    assert data["n_samples"] == 2 and data["meta"]["n_duplicates"] == 0


def test_records_without_ids_are_all_appended(tmp_path):
    from tmcli.io.writer import RecordWriter

    out = tmp_path / "o.jsonl"
    with RecordWriter(out) as w:  # batch after batch, as generate and score write
        assert w.write([{"id": None, "x": 1}, {"x": 2}]) == 2
        assert w.write([{"id": None, "x": 3}, {"x": 4}]) == 2
    with RecordWriter(out) as w:  # and when resuming
        assert w.write([{"id": None, "x": 5}]) == 1
    assert [orjson.loads(line)["x"] for line in out.read_bytes().splitlines()] == [1, 2, 3, 4, 5]


# -- row 6: a compressed file cut short is refused as such -------------------------------------------

@pytest.fixture(scope="module")
def zst(tmp_path_factory):
    """A zstd file of 600 records (several blocks), and the same cut at a block boundary (a
    complete block, then nothing) and in the middle of a block."""
    folder = tmp_path_factory.mktemp("zst")
    data = jsonl(many(600))
    whole = zstandard.ZstdCompressor(level=1).compress(data)
    cobj = zstandard.ZstdCompressor(level=1).compressobj()
    half = data[: data.rindex(b"\n", 0, len(data) // 2) + 1]
    at_block = cobj.compress(half) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    files = {"whole": whole, "block": at_block, "middle": whole[: len(whole) // 2],
             # two frames one after the other (zstd a; zstd b; cat): one stream, all records
             "frames": zstandard.ZstdCompressor().compress(half)
             + zstandard.ZstdCompressor().compress(data[len(half):])}
    paths = {}
    for name, blob in files.items():
        paths[name] = folder / f"{name}.jsonl.zst"
        paths[name].write_bytes(blob)
    return paths


def test_a_complete_zstd_file_and_concatenated_frames_are_read_whole(zst):
    assert summary(zst["whole"])["n_samples"] == 600
    assert summary(zst["frames"])["n_samples"] == 600


@pytest.mark.parametrize("cut", ["block", "middle"])
def test_a_truncated_zstd_file_is_refused(zst, cut):
    for args in ([], ["--skip-invalid"]):
        line = one_error_line(run("analyze", zst[cut], *args))
        assert str(zst[cut]) in line and "truncated zstd" in line
    line = one_error_line(run("filter", zst[cut], "-o", zst[cut].with_suffix(".out.zst")))
    assert "truncated zstd" in line and not zst[cut].with_suffix(".out.zst").exists()


def test_a_truncated_gzip_file_is_refused(tmp_path):
    import gzip

    blob = gzip.compress(jsonl(many(500)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    assert "truncated gzip" in one_error_line(run("analyze", path, "--skip-invalid"))


# -- row 10: every line is measured or counted as skipped, with its reason ---------------------------

@pytest.fixture
def with_empty_lists(tmp_path):
    lines = [rec(0), {"id": "v", "model": "gpt2", "outputs": []},
             {"id": "o", "model": "gpt2", "choices": []}, rec(3, MERGED)]
    path = tmp_path / "empty.jsonl"
    path.write_bytes(jsonl(lines))
    return path


def test_empty_output_lists_are_invalid_lines(with_empty_lists):
    line = one_error_line(run("analyze", with_empty_lists))
    assert f"{with_empty_lists}:2:" in line and "'outputs' is empty" in line
    data = summary(with_empty_lists, "--skip-invalid")
    assert (data["n_samples"], data["n_skipped"], data["meta"]["n_lines"]) == (2, 2, 4)
    assert data["skipped_reasons"] == {"'outputs' is empty: the line holds no completion": 1,
                                       "'choices' is empty: the line holds no completion": 1}
    r = run("analyze", with_empty_lists, "--skip-invalid")
    assert "skipped 2 invalid line(s)" in r.stderr and "is empty" in r.stderr


def test_filter_counts_add_up_to_the_lines_read(with_empty_lists, tmp_path):
    counts = {}
    for keep in ("canonical", "noncanonical"):
        r = run("filter", with_empty_lists, "-o", tmp_path / f"{keep}.jsonl", "--keep", keep,
                "--skip-invalid")
        assert r.exit_code == 0, r.output
        counts[keep] = r.stderr
    assert "kept 1 canonical record(s), dropped 1, 2 invalid dropped of 4 line(s)" \
        in counts["canonical"]
    assert "kept 1 noncanonical record(s), dropped 1, 2 invalid dropped of 4 line(s)" \
        in counts["noncanonical"]


# -- row 16: temperatures are numbers >= 0 or none, never coerced -------------------------------------

@pytest.mark.parametrize("value", ["hot", {"t": 1}, [1.0], True, -0.5])
def test_a_bad_temperature_is_an_invalid_line(tmp_path, value):
    path = tmp_path / "t.jsonl"
    path.write_bytes(jsonl([rec(0), {**rec(1), "temperature": value}]))
    line = one_error_line(run("analyze", path))
    assert f"{path}:2:" in line and "'temperature'" in line and "not a temperature" in line
    data = summary(path, "--skip-invalid")
    assert (data["n_samples"], data["n_skipped"]) == (1, 1)
    assert [g["temperature"] for g in data["groups"]] == [1.0]


def test_sampling_temperature_is_checked_too(tmp_path):
    bad = {k: v for k, v in rec(1).items() if k != "temperature"}
    path = tmp_path / "t.jsonl"
    path.write_bytes(jsonl([{**bad, "sampling": {"temperature": "x"}}]))
    assert "'sampling.temperature'" in one_error_line(run("analyze", path))


def test_a_nan_temperature_in_a_table_is_invalid_and_leaks_no_warning(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "tokenizer": ["gpt2"] * 2,
                             "temperature": [1.0, float("nan")],
                             "token_ids": [CANONICAL, MERGED]}), path)
    line = one_error_line(run("analyze", path))
    assert f"{path}:2:" in line and "nan" in line
    r = run("analyze", path, "--skip-invalid", "--json")
    assert r.exit_code == 0 and "Warning" not in r.stderr and ".py" not in r.stderr
    assert json.loads(r.stdout)["n_samples"] == 1

