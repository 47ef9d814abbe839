"""`tmcli report`: figures from a real analysis, the HTML, the CLI, a headless browser.

The inputs are WikiText continuations encoded with the real SmolLM2 and GPT-2 tokenizers and
perturbed into non-canonical forms (see `report_data.py`); everything after that is the real
`analyze_file`, the real figures and, where Chromium is installed, a real headless browser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_data import REAL_MODEL, SCRIPT_TEXT, WIKITEXT, build_outputs
from typer.testing import CliRunner

from tmcli.aggregate import stats
from tmcli.aggregate.stored import load_analysis, write_parquet
from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.present.figures import position, style, temperature
from tmcli.present.html_report import build_figures, render_html, write_report

N_RESAMPLES = 300


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    if not WIKITEXT.exists():  # as conftest's wikitext_lines: the shared data sits beside the repo
        pytest.skip(f"{WIKITEXT} not found (the report tests read the shared WikiText file)")
    return build_outputs(tmp_path_factory.mktemp("report") / "outputs.jsonl")


@pytest.fixture(scope="module")
def analysis(outputs):
    return load_analysis(outputs, n_resamples=N_RESAMPLES)


@pytest.fixture(scope="module")
def report_path(analysis, tmp_path_factory) -> Path:
    return write_report(analysis, tmp_path_factory.mktemp("html") / "report.html")


class _Tags(HTMLParser):
    """Collects tags, their attributes, and the text inside elements with an id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in ("meta", "wbr", "br", "img", "link", "input"):
            self._open.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if self._open and tag not in ("meta", "wbr", "br", "img", "link", "input"):
            self._open.pop()

    def handle_data(self, data):
        for ident in self._open:
            if ident:
                self.text.setdefault(ident, []).append(data)


def _parse(path: Path) -> _Tags:
    parser = _Tags()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


# -- the analysis the figures are built from -------------------------------------------------

def test_inputs_measure_as_constructed(analysis):
    g = analysis.groups
    assert set(g["model"]) == {"smollm2-135m", "gpt2", REAL_MODEL}
    assert g.filter(pl.col("temperature") == 0.0)["n_noncanonical"].to_list() == [0, 0, 0]
    hot = g.filter(pl.col("temperature") == 2.0).sort("model")
    assert (hot["fraction_noncanonical"] > 0.3).all()
    assert g.filter(pl.col("few_samples")).select("model", "temperature", "n").rows() == [
        (REAL_MODEL, 0.0, 8), ("gpt2", 2.0, 10)]
    assert set(analysis.samples["kind"]) >= {"canonical", "merged", "resegmented"}
    ids = [e["id"] for e in analysis.examples]
    assert "html-script" in ids


# -- figures ---------------------------------------------------------------------------------

def _has_interval(fig) -> bool:
    return any(getattr(t, "fill", None) == "tonexty" or
               (getattr(t, "error_y", None) is not None and t.error_y.array is not None)
               or getattr(t, "type", "") == "heatmap" and "CI" in (t.hovertemplate or "")
               for t in fig.data)


def test_real_generations_reach_the_figures(analysis):
    """The sampled SmolLM2 outputs: at T=2 most re-encodings are *longer* (signed compression)."""
    real = analysis.groups.filter(pl.col("model") == REAL_MODEL).sort("temperature")
    assert real["temperature"].to_list() == [0.0, 0.8, 1.4, 2.0]
    assert real["n"].to_list() == [8, 32, 32, 32]
    hot = real.row(-1, named=True)
    assert hot["n_lengthened"] > hot["n_merged"] and hot["mean_compression_hi"] < 0
    fig = temperature.mean_compression(analysis.groups)
    line = next(t for t in fig.data if t.name == REAL_MODEL and t.mode == "lines+markers")
    assert list(line.y) == real["mean_compression"].to_list()
    assert list(line.customdata[:, 0]) == [8, 32, 32, 32]


def test_every_figure_has_intervals_counts_and_warnings(analysis):
    figs = build_figures(analysis)
    assert len(figs) == 9
    for anchor, _caption, fig in figs:
        assert _has_interval(fig), anchor
        hovers = " ".join(t.hovertemplate or "" for t in fig.data)
        assert "n=" in hovers or "samples" in hovers, anchor
        notes = " ".join(a.text for a in fig.layout.annotations)
        if anchor != "fraction-low":  # gpt2 T=2 (n=10) is not in the zoom to T <= 0.8
            assert "fewer than 30" in notes and "gpt2 T=2 (n=10)" in notes, anchor


def test_fraction_figure_plots_the_measured_fractions_and_fit(analysis):
    fig = temperature.fraction_compressed(analysis.groups, analysis.fits)
    points = {t.name: t for t in fig.data if t.mode == "markers"}
    smol = analysis.groups.filter(pl.col("model") == "smollm2-135m").sort("temperature")
    assert list(points["smollm2-135m"].y) == smol["fraction_compressed"].to_list()
    fit = analysis.fits.filter(pl.col("model") == "smollm2-135m").row(0, named=True)
    curve = next(t for t in fig.data if t.name == "smollm2-135m compressed fit")
    assert np.allclose(curve.y, stats.sigmoid(curve.x, fit["midpoint"], fit["slope"]))
    assert list(points["smollm2-135m non-canonical"].y) == smol["fraction_noncanonical"].to_list()
    curve = next(t for t in fig.data if t.name == "smollm2-135m non-canonical fit")
    assert np.allclose(curve.y, stats.sigmoid(curve.x, fit["nc_midpoint"], fit["nc_slope"]))
    zoom = temperature.fraction_compressed(analysis.groups, analysis.fits, max_temperature=0.8)
    assert max(max(t.x) for t in zoom.data if t.mode == "markers") == 0.8


def test_window_profile_takes_nearest_temperature_and_says_so(analysis):
    fig = position.window_profile(analysis.pooled_windows, analysis.groups, analysis.window,
                                  (1.9, 0.8))
    titles = [a.text for a in fig.layout.annotations]
    assert "T=2: all models pooled" in titles and "T=0.8: per model" in titles
    assert any("T=1.9 was not run; showing nearest T=2" in t for t in titles)
    picks = temperature.nearest_temperatures([0.0, 0.4, 2.0], [1.9, 2.1, 0.1])
    assert picks == [(1.9, 2.0), (0.1, 0.0)]


def test_figures_draw_the_curves_of_the_analysis(analysis):
    """The pooled window profile and the survival curves are drawn as `aggregate` computed them."""
    figs = {a: f for a, _c, f in build_figures(analysis)}
    pooled = analysis.pooled_windows.filter(pl.col("temperature") == 2.0).row(0, named=True)
    line = next(t for t in figs["windows"].data if t.name == "all models" and t.mode)
    assert list(line.y) == pooled["window_mean"]
    curve = analysis.survival.filter((pl.col("model") == "gpt2")
                                     & (pl.col("temperature") == 2.0)).row(0, named=True)
    drawn = next(t for t in figs["survival"].data if t.name == "T=2" and t.xaxis == "x2")
    assert list(drawn.x) == curve["tokens"] and list(drawn.y) == curve["still_canonical"]


def test_heatmap_colours_span_the_data_around_zero(analysis):
    """One colour scale, symmetric around 0 and as wide as the largest window mean (on a fixed
    ±50% the study's ±4% looked blank)."""
    fig = position.heatmaps(analysis.groups, analysis.window)
    reach = max(abs(v) for w in analysis.groups["window_mean"].to_list() for v in w)
    axis = fig.layout.coloraxis
    assert 0 < reach < 0.5
    assert (axis.cmin, axis.cmax) == (-reach, reach)
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}


def test_gravity_legend_has_one_entry_per_series(analysis):
    """Each series has three lines (centre of gravity, of non-canonical tokens, median position):
    one legend entry toggles them all; the title says which line is which."""
    fig = position.centre_of_gravity(analysis.groups)
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == [label for label, _df in style.series(analysis.groups)]
    assert {t.legendgroup for t in fig.data} == set(names)
    assert "dotted: median" in fig.layout.title.text


def test_kaplan_meier_exact():
    x, s, lo, hi, at_risk = stats.kaplan_meier([0, 2, 2, 3, 5], [True, True, False, True, False])
    assert x.tolist() == [0, 1, 3, 4, 6]
    assert np.allclose(s, [1, 0.8, 0.6, 0.3, 0.3])
    assert at_risk.tolist() == [5, 5, 4, 2, 1]
    assert (lo <= s).all() and (s <= hi).all() and lo[1] < 0.8 < hi[1]


# -- HTML ------------------------------------------------------------------------------------

def test_model_text_is_shown_as_text_never_markup(analysis, report_path):
    html = report_path.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "alert(1)</script>" not in html
    parsed = _parse(report_path)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert len(scripts) == 1 + len(build_figures(analysis))  # plotly.js + one per figure
    k = [e["id"] for e in analysis.examples].index("html-script")
    text = "".join(parsed.text[f"example-{k}-text"])
    assert text == SCRIPT_TEXT  # <script>alert(1)</script> and </div>, as characters


def test_report_is_self_contained(report_path):
    parsed = _parse(report_path)
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "data", "action", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not re.match(r"^(https?:)?//", value), (tag, attrs)
    csp = [a["content"] for t, a in parsed.tags
           if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]
    assert sum(1 for t, _ in parsed.tags if t == "link") == 0


def test_report_lists_metadata_summary_and_warnings(analysis, report_path):
    parsed = _parse(report_path)
    text = " ".join(" ".join(v) for v in parsed.text.values())
    html = report_path.read_text(encoding="utf-8")
    assert "2 of 16 group(s) have fewer than 30 samples" in html
    assert html.count("<tr class=few>") == 2
    assert "tmcli 0.1.0" in html
    assert f"{REAL_MODEL} (104 samples), gpt2 (170 samples), smollm2-135m (193 samples)" in html
    assert "id=summary" in html and "id=examples" in html and text


def test_parquet_round_trip_gives_the_same_report(analysis, tmp_path):
    path = write_parquet(analysis, tmp_path / "samples.parquet")
    back = load_analysis(path, n_resamples=N_RESAMPLES)
    assert back.samples.equals(analysis.samples)
    assert back.groups.equals(analysis.groups)
    assert back.examples == analysis.examples and back.window == analysis.window
    assert back.meta["tmcli_version"] == analysis.meta["tmcli_version"]
    assert render_html(back) == render_html(analysis)


def test_bad_inputs_fail_with_a_fix(analysis, tmp_path):
    with pytest.raises(TmcliError, match="suffix '.txt'"):
        load_analysis(tmp_path / "x.txt")
    bad = tmp_path / "other.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(bad)
    # a Parquet file without tmcli's metadata is a table of records (issue 14), not an analysis
    with pytest.raises(TmcliError, match="other.parquet:1: no token ids found"):
        load_analysis(bad)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}).replace_schema_metadata({b"tmcli": b"{}"}), bad)
    with pytest.raises(TmcliError, match="lacks the per-sample column"):
        load_analysis(bad)
    good = write_parquet(analysis, tmp_path / "s.parquet")
    with pytest.raises(TmcliError, match="window cannot apply to a stored analysis"):
        load_analysis(good, window=32)
    with pytest.raises(TmcliError, match="name the file with .html"):
        write_report(analysis, tmp_path / "r.pdf")


# -- CLI -------------------------------------------------------------------------------------

def test_cli_writes_html(outputs, tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(outputs), "--html", str(out),
                                   "--temperatures", "1.9,0.8"])
    assert res.exit_code == 0, res.output
    assert "No run at T=1.9 (--temperatures): the position figures show the nearest, T=2." \
        in res.output
    assert out.stat().st_size > 1_000_000  # plotly.js is inside


def test_cli_terminal_summary_and_errors(analysis, outputs, tmp_path):
    pq = write_parquet(analysis, tmp_path / "s.parquet")
    res = CliRunner().invoke(app, ["report", str(pq)], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "smollm2-135m" in res.output and "10⚠" in res.output
    assert "fewer than 30 samples" in res.output
    res = CliRunner().invoke(app, ["report", str(outputs), "--html", str(tmp_path / "r.pdf")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "Error: cannot write a report as '.pdf'; name the file with .html, e.g. --html report.html"]
    res = CliRunner().invoke(app, ["report", str(pq), "--window", "32"])
    assert res.exit_code == 2 and "cannot apply to a stored analysis" in res.output


# -- headless Chromium -----------------------------------------------------------------------

def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser", "google-chrome")
                 if (p := shutil.which(n))), None)


def _browse(page: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary; `make browser` installs Debian's chromium")
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr", "--v=0",
           *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _problems(stderr: str) -> list[str]:
    """Console messages of the page (any level) and blocked or failed requests."""
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line or "net::ERR" in line or "Refused to" in line]


@pytest.mark.browser
def test_browser_checks_can_fail(tmp_path):
    page = tmp_path / "canary.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
                    '<img src="http://example.invalid/x.png"><script>throw new Error("boom")'
                    "</script></body></html>")
    problems = " ".join(_problems(_browse(page, tmp_path, "--dump-dom").stderr))
    assert "boom" in problems and "example.invalid" in problems


@pytest.mark.browser
def test_report_renders_in_chromium(analysis, report_path, tmp_path):
    run = _browse(report_path, tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _problems(run.stderr) == []
    dom = run.stdout
    anchors = [a for a, _, _ in build_figures(analysis)]
    assert dom.count('class="plot-container plotly"') == len(anchors) == 9
    parts = dom.split('<div id="fig-')[1:]
    assert [p.split('"', 1)[0] for p in parts] == anchors
    assert all('class="main-svg"' in p for p in parts)
    assert "<script>alert" not in dom
    shot = tmp_path / "report.png"
    run = _browse(report_path, tmp_path, "--window-size=1400,4000", f"--screenshot={shot}")
    assert run.returncode == 0 and _problems(run.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
