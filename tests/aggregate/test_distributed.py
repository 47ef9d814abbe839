"""`analyze --ray` on a local Ray: 4 shards (JSONL, gzip, Parquet) give the numbers `analyze`
gives on their concatenation (bootstrap intervals, fits, the canonical-mode comparison, skipped
lines, duplicates, examples), the per-sample dataset is readable as a stored analysis, and a bad
line in a shard is the one-line error a local run gives.

Ray starts once per test session (`local_ray` in conftest: 2 CPUs)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from tmcli.aggregate.analysis import analyze_file
from tmcli.aggregate.distributed import find_shards
from tmcli.aggregate.stored import load_analysis
from tmcli.cli import app
from tmcli.errors import TmcliError

REAL = Path(__file__).resolve().parents[1] / "data" / "smollm2_generations.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """4 shards and their concatenation: SmolLM2's real samples, the T=2 ones again as a
    `constrain` arm (so the paired comparison runs), a record repeated in a later shard (a
    duplicate) and a malformed line (skipped)."""
    objs = [orjson.loads(line) for line in REAL.read_text().splitlines()]
    objs += [{**o, "id": o["id"] + "-c", "canonical": "constrain"}
             for o in objs if o["temperature"] == 2.0]
    lines = [orjson.dumps(o) + b"\n" for o in objs]
    k = len(lines) // 4
    parts = [lines[:k], lines[k:2 * k] + [b"{not json\n"], lines[2 * k:3 * k],
             lines[3 * k:] + [lines[5]]]
    folder = tmp_path_factory.mktemp("shards")
    (folder / "s0.jsonl").write_bytes(b"".join(parts[0]))
    (folder / "s1.jsonl").write_bytes(b"".join(parts[1]))
    (folder / "s2.jsonl.gz").write_bytes(gzip.compress(b"".join(parts[2])))
    pl.DataFrame([orjson.loads(x) for x in parts[3]]).write_parquet(folder / "s3.parquet")
    (folder / "notes.txt").write_text("not a shard")
    whole = folder.parent / "all.jsonl"
    whole.write_bytes(b"".join(b"".join(p) for p in parts))
    return folder, whole


def test_shards_are_a_folders_record_files_or_a_globs_matches(shards):
    folder, _whole = shards
    names = ["s0.jsonl", "s1.jsonl", "s2.jsonl.gz", "s3.parquet"]
    assert find_shards(str(folder)) == [str(folder / n) for n in names]
    assert find_shards(str(folder / "s*.jsonl")) == [str(folder / n) for n in names[:2]]
    with pytest.raises(TmcliError, match="no shards in"):
        find_shards(str(folder / "*.csv"))
    with pytest.raises(TmcliError, match="no such file or folder"):
        find_shards(str(folder / "missing"))


def test_analyze_on_ray_equals_analyze_of_the_concatenation(local_ray, shards, tmp_path):
    folder, whole = shards
    out = tmp_path / "samples"
    r = runner.invoke(app, ["analyze", "--ray", str(folder), "--skip-invalid", "--json",
                            "-o", str(out)])
    assert r.exit_code == 0, r.output
    bad_line = len((folder / "s1.jsonl").read_bytes().splitlines())
    assert f"skipped 1 invalid line(s); first: {folder / 's1.jsonl'}:{bad_line}: malformed" \
        in r.stderr
    got = json.loads(r.stdout)
    local = analyze_file(str(whole), skip_invalid=True)
    want = json.loads(json.dumps(local.to_json()))
    assert got["meta"].pop("inputs") == find_shards(str(folder))
    want["meta"].pop("inputs")
    assert got == want  # every group figure, interval, fit and paired difference
    assert want["meta"]["n_duplicates"] == 1 and want["n_skipped"] == 1
    assert len(want["canonical_comparison"]) == 2 and len(want["groups"]) == 5

    # the per-sample dataset: one part per shard, all columns, readable as a stored analysis
    assert sorted(p.name for p in out.iterdir()) == \
        ["_tmcli.json", *(f"part-0000{i}.parquet" for i in range(4))]
    parts = pl.read_parquet(out / "*.parquet")  # the parts as one table, in shard order
    assert parts.height == local.samples.height + 1  # the duplicate is written, counted once
    assert parts["spans"].dtype == pl.List and parts["id"].to_list()[:5] == \
        local.samples["id"].to_list()[:5]
    stored = load_analysis(str(out))
    assert_frame_equal(stored.groups, local.groups)
    assert stored.examples == local.examples and len(local.examples) == 12
    r = runner.invoke(app, ["check", str(out), "--max-fraction-noncanonical", "0.001"])
    assert r.exit_code == 1 and "FAIL" in r.stdout  # a stored analysis for `check`, `report`


def test_a_bad_line_in_a_shard_is_the_local_one_line_error(local_ray, shards, tmp_path):
    folder, _whole = shards
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "s1.jsonl").write_bytes((folder / "s1.jsonl").read_bytes())
    out = tmp_path / "out"
    r = runner.invoke(app, ["analyze", "--ray", str(bad), "-o", str(out)])
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    bad_line = len((bad / "s1.jsonl").read_bytes().splitlines())
    assert "\n" not in line and f"{bad / 's1.jsonl'}:{bad_line}: malformed JSON" in line
    assert "--skip-invalid" in line
    assert not out.exists()  # the dataset folder it created is removed
    out.mkdir()
    (out / "x").write_text("")
    r = runner.invoke(app, ["analyze", "--ray", str(bad), "-o", str(out)])
    assert r.exit_code == 2 and "is not empty" in r.output  # checked before any work
