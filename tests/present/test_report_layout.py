"""The report's layout as a reader sees it: in headless Chromium at 900 and 1400 px, no legend runs
into a figure's title, and the summary table fits the page; at 1,100 px (the PNG width) no two
subplot titles run into each other; and the axes do not invent a range (the low-temperature figure
with one temperature, the by-position figure with one window)."""

from __future__ import annotations

import json
import shutil
import subprocess

import orjson
import pytest
from conftest import reencoder

from tmcli.aggregate.analysis import analyze_file
from tmcli.present.figures import style, temperature
from tmcli.present.html_report import build_figures, write_report

MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const box = e => e && e.getBoundingClientRect();
  const overlap = (a, b) => a && b && a.width && b.width && !(a.right <= b.left ||
      b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top);
  const out = {page: document.body.clientWidth, figures: {}};
  for (const div of document.querySelectorAll("div[id^=fig-]")) {
    const title = box(div.querySelector(".g-gtitle text"));
    const legend = box(div.querySelector("g.legend"));
    const notes = [...div.querySelectorAll("g.annotation text")].map(box);
    const clash = notes.some((a, i) => notes.slice(i + 1).some(b => overlap(a, b)));
    out.figures[div.id] = {overlap: !!overlap(title, legend), right: box(div).right,
                           titles_overlap: clash, n_titles: notes.length};
  }
  out.table = box(document.querySelector("table.summary")).right;
  document.getElementById("measured").textContent = JSON.stringify(out);
}, 500));
</script><pre id=measured></pre></body>"""


def _ids(text: str) -> list[int]:
    return reencoder("gpt2").vocab.original.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """The demo's shape: one model, T=0,1,2, 48-token completions (one 64-token window)."""
    base = (_ids(" The river rises in the hills and runs to the sea through a valley") * 8)[:48]
    table = reencoder("gpt2").vocab.bytes_to_id()
    merged = ([table[ch.encode()] for ch in " The river"] + base)[:48]
    path = tmp_path_factory.mktemp("layout") / "out.jsonl"
    with open(path, "wb") as fh:
        for t, k in ((0.0, 1), (1.0, 2), (2.0, 5)):
            for i in range(8):
                fh.write(orjson.dumps({"id": f"{t}-{i}", "model": "smollm2-135m-like-name",
                                       "tokenizer": "gpt2", "temperature": t,
                                       "token_ids": merged if i < k else base}) + b"\n")
    return analyze_file(str(path), n_resamples=200)


def test_axes_span_the_data(analysis):
    low = temperature.fraction_compressed(analysis.groups, analysis.fits, max_temperature=0.8)
    lo, hi = low.layout.xaxis.range
    assert -0.1 < lo < 0 and 0.8 < hi < 0.9  # Plotly alone would show -1 to 1 around T=0
    figs = dict((a, f) for a, _c, f in build_figures(analysis))
    lo, hi = figs["windows"].layout.xaxis.range
    assert lo < 0 < 47 < hi < 48  # 48 tokens, not a range around the one window's centre


def test_legends_leave_the_title_room(analysis):
    for anchor, _caption, fig in build_figures(analysis):
        rows = style._legend_rows(fig)
        if fig.layout.legend.orientation == "h" and rows:
            assert fig.layout.margin.t >= style.TITLE_PX + 20 * rows, anchor


def _measure(analysis, tmp_path, width: int) -> dict:
    """The report of ``analysis`` laid out by headless Chromium ``width`` px wide: what
    `MEASURE` found."""
    binary = next((p for n in ("chromium", "chromium-browser", "google-chrome")
                   if (p := shutil.which(n))), None)
    if binary is None:
        pytest.skip("no chromium binary; `make browser` installs Debian's chromium")
    page = write_report(analysis, tmp_path / "report.html")
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE),
                    encoding="utf-8")
    run = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                          f"--window-size={width},3000", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180)
    text = run.stdout.split("<pre id=\"measured\">", 1)[-1].split("</pre>", 1)[0]
    return json.loads(text)


@pytest.mark.browser
@pytest.mark.parametrize("width", [900, 1400])
def test_report_layout_in_chromium(analysis, tmp_path, width):
    measured = _measure(analysis, tmp_path, width)
    assert len(measured["figures"]) == 9
    for fid, fig in measured["figures"].items():
        assert not fig["overlap"], (width, fid)
        assert fig["right"] <= width, (width, fid)
    assert measured["table"] <= width


@pytest.fixture(scope="module")
def two_modes(tmp_path_factory):
    """Two models with long names, each run free (off) and constrained at T=1 and 2: the
    canonical comparison's 2 x 4 panels."""
    base = (_ids(" The river rises in the hills and runs to the sea through a valley") * 8)[:48]
    table = reencoder("gpt2").vocab.bytes_to_id()
    merged = ([table[ch.encode()] for ch in " The river"] + base)[:48]
    path = tmp_path_factory.mktemp("modes") / "out.jsonl"
    with open(path, "wb") as fh:
        for model in ("SmolLM2-135M-Instruct", "gemma-3-270m-base"):
            for mode in ("off", "constrain"):
                for t in (1.0, 2.0):
                    for i in range(4):
                        ids = merged if mode == "off" and i < t else base
                        fh.write(orjson.dumps({
                            "id": f"{model}-{mode}-{t}-{i}", "model": model, "tokenizer": "gpt2",
                            "temperature": t, "canonical": mode, "prompt_index": i,
                            "token_ids": ids}) + b"\n")
    return analyze_file(str(path), n_resamples=100)


@pytest.mark.browser
def test_subplot_titles_do_not_overlap_at_the_png_width(two_modes, tmp_path):
    """At 1,100 px the canonical figure's panel titles, "model: metric", ran into each other;
    no two annotations (panel titles, notes) of any figure may touch."""
    figures = _measure(two_modes, tmp_path, 1100)["figures"]
    assert figures["fig-canonical"]["n_titles"] >= 8
    assert [f for f, m in figures.items() if m["titles_overlap"]] == []
