"""The sweep specification between `tmcli generate`'s parser and `generate()`: its axes parsed
from option strings, checked, and the user's mistakes as one line (exit 2); `--sampling-config
model` resolved from a real checkpoint's generation config as transformers resolves it."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

import tmcli
from tmcli.cli import app
from tmcli.cli.sweep_spec import SweepSpec, parse_share, parse_temperatures, parse_top_k
from tmcli.errors import TmcliError
from tmcli.generation.sweep import truncation_grid
from tmcli.generation.truncation import NONE, Truncation, model_sampling_config

runner = CliRunner()


def test_temperatures_parse_lists_and_inclusive_ranges():
    assert tmcli.parse_temperatures is parse_temperatures  # the public name is this one
    assert parse_temperatures("0:2:0.2") == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert parse_temperatures("0,1,2") == [0.0, 1.0, 2.0]
    assert parse_temperatures("0:1:0.5,1.5,1") == [0.0, 0.5, 1.0, 1.5]
    for bad in ("-1", "0:1:0", "hot", "0:1", "nan", "inf"):
        with pytest.raises(TmcliError):
            parse_temperatures(bad)


def test_truncation_axes_parse_and_check():
    assert parse_top_k("0,50") == [0, 50] and parse_top_k("10:30:10") == [10, 20, 30]
    assert parse_share("1,0.95,0.9", "--top-p", "0.9") == [1.0, 0.95, 0.9]
    for bad in ("-1", "2.5", "k"):
        with pytest.raises(TmcliError, match="--top-k"):
            parse_top_k(bad)
    with pytest.raises(TmcliError, match=r"--top-p takes numbers in \[0, 1\]"):
        parse_share("1.5", "--top-p", "0.9")


def test_the_spec_is_typed_and_multiplies_the_axes():
    spec = SweepSpec.from_cli(model=None, temperatures="0,2", top_k="50", top_p="1,0.9",
                              min_p=None, sampling_config=None, output="o.jsonl",
                              prompts="p.txt", max_new_tokens=64, device="cpu", threads=2)
    assert (spec.models, spec.temperatures, spec.top_k, spec.top_p, spec.min_p) == \
        (["smollm2-135m"], [0.0, 2.0], [50], [1.0, 0.9], None)
    assert spec.engine_options == {"device": "cpu", "threads": 2} and spec.max_new_tokens == 64
    assert truncation_grid(spec.top_k, spec.top_p, spec.min_p) == \
        [Truncation(50, 1.0), Truncation(50, 0.9)]
    assert truncation_grid() == [NONE]
    default = SweepSpec.from_cli(model=["a", "b"], temperatures=None, top_k=None, top_p=None,
                                 min_p=None, sampling_config=None, output="o", prompts="p")
    assert default.temperatures == parse_temperatures("0:2:0.2") and default.models == ["a", "b"]
    model = SweepSpec.from_cli(model=None, temperatures=None, top_k=None, top_p=None, min_p=None,
                               sampling_config="model", output="o", prompts="p")
    assert model.temperatures is None  # the model's own


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "-5"], "--top-k takes whole numbers >= 0"),
    (["--top-p", "2"], "--top-p takes numbers in [0, 1]"),
    (["--min-p", "x"], "cannot read --min-p"),
    (["--sampling-config", "model", "--top-k", "50"],
     "--top-k cannot be combined with --sampling-config model"),
    (["--sampling-config", "hub"], "unknown --sampling-config 'hub'"),
    (["--turns", "1", "--sampling-config", "model", "--top-k", "50"],
     "--top-k cannot be combined with --sampling-config model"),
    (["--turns", "1", "--top-p", "2"], "--top-p takes numbers in [0, 1]"),
    (["--turns", "1", "--canonical", "constrain"], "--canonical is not supported with --turns"),
])
def test_sampling_mistakes_are_one_line_and_exit_2(tmp_path, extra, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a prompt\n")
    r = runner.invoke(app, ["generate", "-p", str(prompts), "-o", str(tmp_path / "o.jsonl"),
                            *extra])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_model_sampling_config_is_what_transformers_generate_uses(smol, tmp_path):
    """SmolLM2's converted checkpoint has a generation config without sampling fields: greedy
    by default, and top-k 50 (transformers' default) at any temperature a user gives. A config
    that samples at 0.7 with top-p 0.9 and no top-k gets top-k 50 too, as generate() would."""
    assert model_sampling_config("smollm2-135m") == (0.0, Truncation(top_k=50))
    lm, _tok = smol
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    lm.model.config.to_json_file(ckpt / "config.json")
    (ckpt / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "min_p": 0.05}))
    assert model_sampling_config(str(ckpt)) == (0.7, Truncation(50, 0.9, 0.05))
    (ckpt / "generation_config.json").unlink()
    assert model_sampling_config(str(ckpt)) == (0.0, Truncation(top_k=50))
    shutil.rmtree(ckpt)
