"""`--group-by` any record field: a user's own fields (checkpoint, step, policy_version) and the
sampling settings, carried from the records into the per-sample table (and its parquet file),
one report series per group, and `check --per-group` gating each group.

Records are built with the real GPT-2 tokenizer: a canonical completion is the tokenizer's own
encoding of a text, a non-canonical one spells a word letter by letter, so every share below is
known by construction.
"""

from __future__ import annotations

import orjson
import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.aggregate.analysis import analyze_file
from tmcli.aggregate.keys import group_label
from tmcli.aggregate.stored import read_parquet
from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.present.figures.style import series

runner = CliRunner()
TEXT = " The keeper counted the ships every evening"


def _ids(text: str) -> list[int]:
    return reencoder("gpt2").vocab.original.encode(text, add_special_tokens=False).ids


def _spelled(text: str) -> list[int]:
    table = reencoder("gpt2").vocab.bytes_to_id()
    return _ids(text[: text.index(" ships")]) + [table[bytes([b])] for b in b" ships"] + \
        _ids(text[text.index(" every"):])


def _records(path, rows):
    """rows: (fields, non-canonical?) -> a tmcli-style JSONL file."""
    with open(path, "wb") as fh:
        for i, (fields, bad) in enumerate(rows):
            rec = {"id": f"r{i}", "model": "gpt2", "temperature": 1.0,
                   "token_ids": _spelled(TEXT) if bad else _ids(TEXT), **fields}
            fh.write(orjson.dumps(rec) + b"\n")
    return str(path)


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Steps 2 and 10 (3 of 4 and 1 of 4 non-canonical), at two checkpoints' policy versions."""
    rows = [({"step": 2, "checkpoint": "ckpt-a", "sampling": {"top_k": 50}}, k < 3)
            for k in range(4)]
    rows += [({"step": 10, "checkpoint": "ckpt-b", "sampling": {"top_k": 0}}, k < 1)
             for k in range(4)]
    return _records(tmp_path_factory.mktemp("steps") / "rollouts.jsonl", rows)


def test_any_record_field_groups_with_its_own_type(steps, tmp_path):
    a = analyze_file(steps, group_by=["step"], n_resamples=200)
    assert a.groups["step"].to_list() == [2, 10]  # numbers, in number order
    assert a.groups["fraction_noncanonical"].to_list() == [0.75, 0.25]
    assert a.samples["step"].dtype.is_integer()
    by_name = analyze_file(steps, group_by=["checkpoint", "sampling.top_k"], n_resamples=200)
    assert by_name.groups.select("checkpoint", "sampling.top_k").rows() == \
        [("ckpt-a", 50), ("ckpt-b", 0)]
    with pytest.raises(TmcliError, match="no record has a field 'policy_version'"):
        analyze_file(steps, group_by=["policy_version"])


def test_fields_travel_through_the_parquet_file_to_report_and_check(steps, tmp_path):
    out = tmp_path / "s.parquet"
    r = runner.invoke(app, ["analyze", steps, "--group-by", "step,temperature", "--output",
                            str(out), "--json"])
    assert r.exit_code == 0, r.output
    stored = read_parquet(out, group_by=["step"], n_resamples=200)
    assert stored.groups["fraction_noncanonical"].to_list() == [0.75, 0.25]
    gate = ["check", str(out), "--group-by", "step", "--per-group",
            "--max-fraction-noncanonical", "0.5"]
    r = runner.invoke(app, gate)
    assert r.exit_code == 1 and "step=2" in r.output and "step=10" in r.output
    assert runner.invoke(app, [*gate[:-1], "0.8"]).exit_code == 0
    r = runner.invoke(app, ["check", str(out), "--group-by", "checkpoint", "--per-group",
                            "--max-fraction-noncanonical", "0.5"])
    assert r.exit_code == 2 and "cannot group by checkpoint" in r.output  # not carried
    html = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(out), "--group-by", "step,temperature", "--html",
                            str(html)])
    assert r.exit_code == 0, r.output
    assert "step=2" in html.read_text() and "step=10" in html.read_text()


def test_one_series_per_group_but_temperature(steps):
    a = analyze_file(steps, group_by=["checkpoint", "temperature"], n_resamples=200)
    assert [label for label, _df in series(a.groups)] == ["checkpoint=ckpt-a", "checkpoint=ckpt-b"]
    assert a.fits.columns[:3] == ["model", "canonical", "checkpoint"]


def test_sampling_settings_are_columns_and_split_the_default_groups(tmp_path):
    rows = [({"top_k": 50, "top_p": 1.0, "min_p": 0.0}, k < 2) for k in range(4)]
    rows += [({"sampling": {"top_k": 0, "top_p": 0.9, "min_p": 0.0}}, k < 1) for k in range(4)]
    rows += [({}, False)]  # a record that says nothing of its sampling
    a = analyze_file(_records(tmp_path / "arms.jsonl", rows), n_resamples=200)
    assert a.group_by == ["model", "top_k", "top_p", "temperature"]  # min-p: 0 or unsaid
    assert a.groups.select("top_k", "top_p", "n", "n_noncanonical").rows() == \
        [(0, 0.9, 4, 1), (50, 1.0, 4, 2), (None, None, 1, 0)]
    labels = [group_label(r, a.group_by) for r in a.groups.iter_rows(named=True)]
    assert labels == ["gpt2 (top-p 0.9)", "gpt2 (top-k 50)", "gpt2 (?)"]
