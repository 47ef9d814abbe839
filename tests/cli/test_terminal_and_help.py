"""What a newcomer reads in a terminal: tables that fit 80 columns without cutting a number or a
name, one line per row at 200 columns, help without Typer's type placeholders, and messages that
say what to do."""

from __future__ import annotations

import json
import re

import orjson
import pytest
from conftest import reencoder
from typer.testing import CliRunner

from tmcli.cli import app

LONG = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a long model name must never be cut
runner = CliRunner()


def _ids(text: str) -> list[int]:
    return reencoder("gpt2").vocab.original.encode(text, add_special_tokens=False).ids


def _spelled(text: str) -> list[int]:
    table = reencoder("gpt2").vocab.bytes_to_id()
    return [table[ch.encode()] for ch in text]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Two models x three temperatures; the merged share rises with temperature."""
    base = (_ids(" The river rises in the hills and runs to the sea through a valley") * 8)[:70]
    merged = (_spelled(" The river") + base)[:70]
    path = tmp_path_factory.mktemp("width") / "out.jsonl"
    with open(path, "wb") as fh:
        for model in ("gpt2", LONG):
            for t, k in ((0.0, 0), (1.0, 3), (2.0, 7)):
                for i in range(10):
                    fh.write(orjson.dumps({
                        "id": f"{model}-{t}-{i}", "model": model, "tokenizer": "gpt2",
                        "temperature": t, "token_ids": merged if i < k else base}) + b"\n")
    return str(path)


def _run(*args, columns: int):
    res = runner.invoke(app, [*map(str, args)], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res.stdout


def _figures(outputs) -> list[str]:
    """Every interval the table must show whole, as the table formats them."""
    data = json.loads(_run("analyze", outputs, "--json", "--resamples", "200", columns=80))
    out = []
    for g in data["groups"]:
        for name in ("fraction_compressed", "fraction_noncanonical"):
            if g[name + "_lo"] is not None:
                out.append(f"{100 * g[name + '_lo']:.1f}–{100 * g[name + '_hi']:.1f}")
    return out


def test_tables_fit_80_columns_without_cutting(outputs):
    text = _run("analyze", outputs, "--resamples", "200", columns=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    for interval in _figures(outputs):
        assert interval in text, interval
    # the figure columns are spread over several tables, each with the keys (names whole)
    headers = [line for line in lines if line.startswith("model ")]
    assert len(headers) >= 3  # groups split in two or more, plus the fits
    assert sum(1 for line in lines if line.startswith(LONG)) >= 3 * 2


def test_tables_use_the_width_at_200_columns(outputs):
    text = _run("analyze", outputs, "--resamples", "200", columns=200)
    rows = [line for line in text.splitlines() if line.startswith(("gpt2 ", LONG))]
    # one table, one line per group with every interval beside its figure
    assert len([line for line in rows if line.count("[") >= 4]) == 6
    assert "interval in brackets" in text
    assert max(len(line) for line in text.splitlines()) <= 200


def test_fits_table_says_why_there_is_no_fit(outputs, tmp_path):
    flat = tmp_path / "flat.jsonl"
    rows = [json.loads(line) for line in open(outputs, encoding="utf-8")]
    k = {}
    with open(flat, "wb") as fh:  # the same two merged samples of ten at every temperature
        for r in rows:
            key = (r["model"], r["temperature"])
            k[key] = k.get(key, 0) + 1
            if k[key] > 2:
                r["token_ids"] = rows[-1]["token_ids"]  # canonical
            fh.write(orjson.dumps(r) + b"\n")
    text = _run("analyze", flat, "--resamples", "200", columns=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    note = f"{LONG}, share compressed: no fit: a sigmoid fits no better than a flat line"
    assert note in " ".join(text.split())  # the note may wrap; its words stay in order


COMMANDS = ["", "analyze", "check", "report", "generate", "score", "selftest", "models",
            "models install"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_type_placeholders(command):
    res = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    for bad in ("<bool>", "<list[str]>", "<str>", "<int>", "{input}", "{INPUT}", "{NAME"):
        assert bad not in res.output, (command, bad)
    if command == "generate":
        assert re.search(r"--shuffle\s+Shuffle", res.output)  # a flag: no value offered


def test_report_and_check_on_a_directory(tmp_path):
    for args in (["report", str(tmp_path)], ["check", str(tmp_path), "--max-compression", "1"],
                 ["analyze", str(tmp_path)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2
        assert res.output.startswith(f"Error: {tmp_path} is a directory"), res.output


def test_report_defaults_to_the_temperatures_run(outputs, tmp_path):
    res = runner.invoke(app, ["report", outputs, "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "No run at" not in res.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    for t in ("2", "1", "0"):
        assert f"T={t}: all models pooled" in html
    res = runner.invoke(app, ["report", outputs, "--html", str(tmp_path / "r.html"),
                              "--temperatures", "0.8"])
    assert res.exit_code == 0, res.output
    assert ("No run at T=0.8 (--temperatures): the position figures show the nearest, T=1. "
            "Runs are at T=0, 1, 2; pass some of those.") in res.output
