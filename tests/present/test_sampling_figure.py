"""The report's figure against the truncation setting, on records whose shares are known by
construction (the real GPT-2 tokenizer; a non-canonical completion spells a word by letters)."""

from __future__ import annotations

import sys
from pathlib import Path

from tmcli.aggregate.analysis import analyze_file
from tmcli.present.figures.sampling import truncation_figure
from tmcli.present.html_report import build_figures

sys.path.insert(0, str(Path(__file__).parents[1] / "aggregate"))
from test_group_by import _records  # noqa: E402

PURE = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}
TOP_K = {"top_k": 50, "top_p": 1.0, "min_p": 0.0}
TOP_P = {"top_k": 0, "top_p": 0.9, "min_p": 0.0}


def _arm(setting: dict, temperature: float, bad: int, n: int = 4):
    return [({**setting, "temperature": temperature}, k < bad) for k in range(n)]


def test_one_point_per_setting_per_model_and_temperature(tmp_path):
    rows = [*_arm(PURE, 1.0, 3), *_arm(TOP_K, 1.0, 1), *_arm(TOP_P, 1.0, 0),
            *_arm(PURE, 2.0, 4), *_arm(TOP_K, 2.0, 2), *_arm(PURE, 0.5, 1)]
    a = analyze_file(_records(tmp_path / "arms.jsonl", rows), n_resamples=200)
    figures = {anchor: fig for anchor, _caption, fig in build_figures(a)}
    fig = figures["truncation"]
    lines = {(t.name, t.xaxis): (list(t.x), list(t.y)) for t in fig.data if t.name}
    # pure first, then from the least to the most truncating; only the sweep is drawn: T=1 ran
    # three settings, T=2 two (a main and a second arm, not a sweep), T=0.5 one
    assert lines[("gpt2 T=1", "x")] == (["pure", "top-p 0.9", "top-k 50"], [0.75, 0.0, 0.25])
    assert not any("T=2" in name or "T=0.5" in name for name, _axis in lines)
    compressed = lines[("gpt2 T=1", "x2")]  # spelled words merge on re-encoding: compressed
    assert compressed == (["pure", "top-p 0.9", "top-k 50"], [0.75, 0.0, 0.25])


def test_two_settings_at_every_temperature_draw_every_temperature(tmp_path):
    rows = [*_arm(PURE, 1.0, 3), *_arm(TOP_K, 1.0, 1), *_arm(PURE, 2.0, 4), *_arm(TOP_K, 2.0, 2)]
    a = analyze_file(_records(tmp_path / "two.jsonl", rows), n_resamples=200)
    fig = truncation_figure(a.groups)
    lines = {t.name: (list(t.x), list(t.y)) for t in fig.data if t.name and t.xaxis == "x"}
    assert lines == {"gpt2 T=1": (["pure", "top-k 50"], [0.75, 0.25]),
                     "gpt2 T=2": (["pure", "top-k 50"], [1.0, 0.5])}


def test_no_figure_without_two_settings_to_compare(tmp_path):
    a = analyze_file(_records(tmp_path / "pure.jsonl", [*_arm(PURE, 1.0, 1), *_arm(PURE, 2.0, 2)]),
                     n_resamples=200)
    assert truncation_figure(a.groups) is None
    assert "truncation" not in [anchor for anchor, _c, _f in build_figures(a)]
