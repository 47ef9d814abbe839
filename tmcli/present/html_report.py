"""`tmcli report --html`: one self-contained HTML file with the study's figures and their caveats.

The file must open offline in any browser and never run model text: plotly.js is inlined once in
<head>, a Content-Security-Policy forbids every request (a figure that tried to fetch anything
would fail loudly instead of leaking), and every string from the data goes through `html.escape`
(Plotly's own JSON escapes `<`, `>` and `/`, so it cannot close its <script> either).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from tmcli import __version__
from tmcli.aggregate.groups import FEW_SAMPLES
from tmcli.aggregate.keys import (
    SAMPLING_KEYS,
    group_keys,
    group_label,
    series_keys,
    truncation_label,
)
from tmcli.measure.causes import DESCRIPTIONS
from tmcli.present.figures import divergence, modes, position, sampling, temperature, trajectories

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
PLOT_CONFIG = {"displaylogo": False, "responsive": True,
               "toImageButtonOptions": {"format": "png", "scale": 2}}
N_OPEN_EXAMPLES = 3


STUDY_TEMPERATURES = (2.0, 0.8)  # the study's by-position figure
MOST_POSITION_TEMPERATURES = 4


def default_temperatures(groups: pl.DataFrame) -> tuple[float, ...]:
    """The by-position figure's temperatures when none are asked for: every temperature run
    (highest first), or with more than four, the runs nearest to the study's 2.0 and 0.8."""
    if "temperature" not in groups.columns:
        return ()
    run = sorted({float(t) for t in groups["temperature"].drop_nulls()}, reverse=True)
    if len(run) <= MOST_POSITION_TEMPERATURES:
        return tuple(run)
    return tuple(got for _w, got in temperature.nearest_temperatures(run, STUDY_TEMPERATURES))


def build_figures(analysis, temperatures=None) -> list[tuple[str, str, go.Figure]]:
    """(anchor id, caption, figure) for every figure of the report, in reading order.

    ``temperatures``: those of the by-position figure (None: `default_temperatures`)."""
    g, window = analysis.groups, analysis.window
    if "temperature" not in g.columns:
        return []
    temperatures = temperatures or default_temperatures(g)
    comparison = getattr(analysis, "comparison", None)
    canonical = []
    if comparison is not None and comparison.filter(
            pl.col("temperature").is_not_null()).height:
        canonical = [("canonical", "Canonical generation modes against free generation (off), "
                      "per model, at the temperatures run in both: share of non-canonical "
                      "samples (Wilson band), mean NLL per token under the generating model "
                      "(from the records), characters per generated token, and the share of "
                      "distinct word bigrams (bootstrap bands).",
                      modes.canonical_comparison(comparison))]
    canonical += trajectories.figures(analysis)  # its own section too
    return [
        ("fraction", "Share of samples whose re-encoding is shorter (the study's count), with "
         "95% Wilson intervals and the per-model logistic fit.",
         temperature.fraction_compressed(g, analysis.fits)),
        ("fraction-low", "The same at low temperatures, where the study found the data too noisy "
         "to read: the intervals show how much can be said.",
         temperature.fraction_compressed(g, analysis.fits, max_temperature=0.8)),
        ("mean", "Mean of (n − len(re-encoding)) / n per sample. Signed: a lengthened sample "
         "counts negative.", temperature.mean_compression(g)),
        ("windows", "Mean compression per window of positions, all models pooled and per model.",
         position.window_profile(analysis.pooled_windows, g, window, temperatures)),
        ("heatmap", "Each cell: mean compression of one window at one temperature.",
         position.heatmaps(g, window)),
        ("gravity", "Compression-weighted mean position. Above the median position means "
         "non-canonical tokens come late in the completion.", position.centre_of_gravity(g)),
        ("kinds", "Merged: the re-encoding is shorter; lengthened: longer (canonical BPE is not "
         "minimal-length); re-segmented: same length, other tokens.", modes.kinds(g)),
        ("rate", "Tokens inside differing spans over all tokens, comparable with later studies' "
         "per-token figures.", position.token_rate(g)),
        ("survival", "Share of completions still canonical after each number of tokens: once a "
         "completion diverges it leaves the curve.", position.first_divergence(analysis.survival,
                                                             analysis.group_by)),
        *sampling.figures(g),  # per truncation setting, where several were run
        *divergence.figures(analysis),
        *canonical,
    ]


def _f(value, fmt: str = ".2%") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def _ci(row: dict, col: str, fmt: str = ".2%", after: str = "") -> str:
    """The estimate (then ``after``), and its interval in brackets."""
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{_f(row.get(col), fmt)}{after}"
    return (f"{_f(row.get(col), fmt)}{after} <span class=ci>[{_f(lo, fmt)}, {_f(hi, fmt)}]</span>")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def summary_table(groups: pl.DataFrame) -> str:
    """The groups as an HTML table: every figure with its interval below it and its count; notes
    (few samples, boundary merges, samples not byte-exact) listed under the table, so that it
    fits a 900-px window."""
    keys = group_keys(groups)
    head = [{"temperature": "T"}.get(k, k.replace("_", "-") if k in SAMPLING_KEYS else k) for k in keys] + [
        "n", "compressed", "non-canonical", "mean compression", "token rate",
        "merged / longer / re-seg.", "centre of gravity / median pos."]
    rows, notes = [], []
    for r in groups.iter_rows(named=True):
        cells = [_e(_f(r[k], "g") if isinstance(r[k], float) or r[k] is None else r[k])
                 for k in keys]
        row_notes = []
        if r["few_samples"]:
            row_notes.append(f"fewer than {FEW_SAMPLES} samples")
        if r.get("n_boundary_merges"):
            row_notes.append(f"{r['n_boundary_merges']} merge(s) across the prompt boundary")
        if r.get("n_not_byte_exact"):
            row_notes.append(f"{r['n_not_byte_exact']} not byte-exact")
        if row_notes:
            at = f" T={_f(r['temperature'], 'g')}" if "temperature" in keys else ""
            notes.append(f"{group_label(r, series_keys(keys))}{at}: " + "; ".join(row_notes))
        cells += [str(r["n"]) + (" ⚠" if r["few_samples"] else ""),
                  f"{r['n_compressed']} · {_ci(r, 'fraction_compressed', '.1%')}",
                  _ci(r, "fraction_noncanonical", ".1%"), _ci(r, "mean_compression", ".3%"),
                  _ci(r, "token_rate", ".2%"),
                  f"{r['n_merged']} / {r['n_lengthened']} / {r['n_resegmented']}",
                  _ci(r, "centre_of_gravity", ".0f",
                      after=f" / {_f(r['median_position'], '.0f')}")]
        cls = " class=few" if r["few_samples"] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    listed = ("<ul class=notes>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
              if notes else "")
    return ("<div class=wide><table class=summary><thead><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></div>" + listed)


def comparison_table(comparison: pl.DataFrame) -> str:
    """Canonical modes vs free generation as an HTML table (the comparison frame's rows)."""
    sampling = len({tuple(r.get(k) for k in SAMPLING_KEYS)
                    for r in comparison.iter_rows(named=True)}) > 1
    head = ["model", *(["sampling"] if sampling else []), "temperature", "mode", "n",
            "non-canonical", "mean compression",
            "chars / token", "distinct-2", "repetition-4", "NLL / token", "NLL / char",
            "prompts paired", "Δ NLL / token vs off", "Δ chars / token vs off"]
    rows = []
    for r in comparison.iter_rows(named=True):
        cut = [_e(truncation_label(*(r.get(k) for k in SAMPLING_KEYS)))] if sampling else []
        cells = [_e(r["model"]), *cut, _e(_f(r["temperature"], "g")), _e(r["canonical"]),
                 str(r["n"]) + (" ⚠" if r["few_samples"] else ""),
                 _ci(r, "fraction_noncanonical", ".1%"), _ci(r, "mean_compression", ".3%"),
                 *(_ci(r, c, ".3f") for c in ("chars_per_token", "distinct_2", "repetition_4",
                                              "nll_token", "nll_char")),
                 _e(_f(r["paired_prompts"], "d")),
                 _ci(r, "diff_nll_token", "+.3f"), _ci(r, "diff_chars_per_token", "+.3f")]
        cls = " class=few" if r["few_samples"] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table class=summary><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table>")


def fits_table(fits: pl.DataFrame, keys=("model", "canonical")) -> str:
    if fits.height == 0:
        return "<p>No sigmoid fit: fewer than three temperatures per model.</p>"
    rows = []
    for r in fits.iter_rows(named=True):
        label = group_label(r, [k for k in keys if k in fits.columns])
        cells = [label, str(r["n_temperatures"])]
        for prefix in ("", "nc_"):
            if r.get(prefix + "midpoint") is None:
                cells += [f"no fit: {r.get(prefix + 'reason') or 'too few points'}", "", ""]
            else:
                cells += [f"{r[prefix + 'midpoint']:.2f}", f"{r[prefix + 'slope']:.2f}",
                          f"{r[prefix + 'rmse']:.3f}"]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head = ["series", "temperatures", "compressed: midpoint T", "slope", "RMSE",
            "non-canonical: midpoint T", "slope", "RMSE"]
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>"
            "<tbody>" + "".join(rows) + "</tbody></table>")


def warnings(analysis, temperatures=None) -> list[str]:
    """Plain-text caveats shown in a banner at the top (escaped when rendered).

    ``temperatures``: those the user asked for (None: the defaults, which are always run)."""
    g = analysis.groups
    out = []
    few = g.filter(pl.col("few_samples"))
    if few.height:
        out.append(f"{few.height} of {g.height} group(s) have fewer than {FEW_SAMPLES} samples; "
                   "their figures are drawn hollow and their intervals are wide.")
    if "temperature" in g.columns:
        run = sorted({float(t) for t in g["temperature"].drop_nulls()})
        for want, got in temperature.nearest_temperatures(run, temperatures or ()):
            if abs(want - got) > 1e-9:
                out.append(f"No run at T={want:g} (--temperatures): the position figures show "
                           f"the nearest, T={got:g}. Runs are at T="
                           f"{', '.join(f'{t:g}' for t in run)}; pass some of those.")
        widest = max((len(w) for w in g["window_mean"].to_list() if w), default=0) \
            if "window_mean" in g.columns else 0
        if widest == 1:
            out.append(f"Every completion fits in one {analysis.window}-token window, so the "
                       "position figures cannot tell early from late; use a smaller --window "
                       "or longer completions.")
        if g["temperature"].null_count():
            out.append("Some samples have no temperature; they are in the table, not the figures.")
    else:
        out.append("The samples carry no temperature, so no figure can be drawn.")
    if analysis.skipped:
        out.append(f"{len(analysis.skipped)} invalid record(s) were skipped.")
    if analysis.meta.get("n_duplicates"):
        out.append(f"{analysis.meta['n_duplicates']} duplicate record(s) were counted once "
                   "(--keep-duplicates counts every copy).")
    bad = int(g["n_not_byte_exact"].sum())
    if bad:
        out.append(f"{bad} sample(s) could not be compared byte-exactly (invalid bytes or a "
                   "normaliser); their figures rest on an id-level diff.")
    return out


def metadata_table(analysis) -> str:
    s = analysis.samples
    counts = s.group_by("model").len().sort("model")
    derived = {
        "models": ", ".join(f"{m} ({n} samples)" for m, n in counts.iter_rows()),
        "temperatures": ", ".join(f"{t:g}" for t in sorted(s["temperature"].drop_nulls().unique())),
        "samples": s.height, "tokens generated": int(s["n_tokens"].sum()),
        "report made by": f"tmcli {__version__}",
    }
    items = {**derived, **{k: v for k, v in analysis.meta.items() if k not in derived}}
    rows = [f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>" for k, v in items.items()]
    return "<table class=meta>" + "".join(rows) + "</table>"


def _plain(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _tok(piece: str) -> str:
    """One token box, whitespace made visible, escaped; <wbr> lets long runs wrap."""
    shown = piece.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥")
    return f"<span class=t>{_e(shown)}</span><wbr>"


def example_html(k: int, ex: dict) -> str:
    """One completion: its text with differing spans marked, then generated vs canonical tokens."""
    text, toks = [], []
    for seg in ex.get("segments", []):
        gen = seg.get("generated", [])
        if seg.get("differs"):
            text.append(f"<mark>{_e(''.join(gen))}</mark>")
            can = seg.get("canonical", [])
            cause = seg.get("cause")
            label = (f"<span class=cause title=\"{_e(DESCRIPTIONS.get(cause, ''))}\">"
                     f"{_e(cause)}</span>" if cause else "")
            toks.append("<span class=diff><span class=gen>"
                        + "".join(map(_tok, gen))
                        + "</span><span class=can>"
                        + "".join(map(_tok, can))
                        + f"</span>{label}</span>")
        else:
            text.append(_e("".join(gen)))
            toks.append("".join(map(_tok, gen)))
    t = ex.get("temperature")
    head = (f"#{k + 1} · {_e(ex.get('model'))} · T={_e(_f(t, 'g'))} · "
            f"{ex.get('noncanonical_tokens')} of {ex.get('n_tokens')} tokens non-canonical in "
            f"{ex.get('n_spans')} span(s) · compression {_f(ex.get('compression'))} · "
            f"id {_e(ex.get('id'))}")
    prompt = ex.get("prompt")
    prompt_html = (f"<div class=prompt><b>prompt</b> {_e(prompt[-400:])}</div>"
                   if isinstance(prompt, str) and prompt else "")
    opened = " open" if k < N_OPEN_EXAMPLES else ""
    return (f"<details class=example id=example-{k}{opened}><summary>{head}</summary>"
            f"{prompt_html}<div class=text id=example-{k}-text>{''.join(text)}</div>"
            f"<div class=legend>tokens: generated <span class=gen-key>above</span>, canonical "
            f"re-encoding <span class=can-key>below</span> where they differ; · is a space, "
            f"↵ a newline</div><div class=tokens>{''.join(toks)}</div></details>")


STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1240px;
 padding:0 24px 60px;color:#1f2328}
h1{margin:28px 0 4px}h2{margin-top:40px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a}nav a{margin-right:14px}.banner{background:#fff4e5;border:1px solid #f0b35b;
 border-radius:6px;padding:10px 16px;margin:18px 0}.banner li{margin:2px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #d0d7de;
 padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}
tr.few td{background:#fff8f0}.ci{color:#57606a;white-space:nowrap}
.summary .ci{display:block}.wide{overflow-x:auto}.notes{font-size:13px;color:#57606a;margin:4px 0}
.caption{color:#57606a;margin:4px 0}.figure{margin:10px 0 30px}
.example{border:1px solid #d0d7de;border-radius:6px;margin:10px 0;padding:6px 12px}
.example summary{cursor:pointer;font-weight:600}.prompt{color:#57606a;margin:6px 0;font-size:13px}
.text{white-space:pre-wrap;background:#f6f8fa;padding:8px;border-radius:4px;
 font-family:ui-monospace,Menlo,monospace;font-size:13px}mark{background:#ffd33d}
.legend{font-size:12px;color:#57606a;margin:8px 0 4px}
.tokens{font-family:ui-monospace,Menlo,monospace;font-size:12px;line-height:2.1}
.t{border:1px solid #d0d7de;border-radius:3px;padding:0 2px;margin:0 1px;white-space:pre}
.diff{display:inline-flex;flex-direction:column;vertical-align:middle;margin:0 2px;line-height:1.6}
.gen .t,.gen-key{background:#ffebe9;border-color:#ff8182}
.can .t,.can-key{background:#dafbe1;border-color:#4ac26b}.gen-key,.can-key{padding:0 4px}
.cause{font-size:11px;color:#57606a;text-align:center}
"""


def render_html(analysis, *, temperatures=None, title: str = "tmcli report") -> str:
    """The whole report as one HTML string (plotly.js included once, nothing fetched)."""
    from plotly.offline import get_plotlyjs

    figs = build_figures(analysis, temperatures)
    sections, own = [], {}
    for anchor, caption, fig in figs:
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{anchor}",
                          config=PLOT_CONFIG, default_width="100%")
        block = f"<div class=figure><p class=caption>{_e(caption)}</p>{div}</div>"
        if anchor in ("canonical", "trajectories"):  # sections of their own, after the figures
            own[anchor] = block
        else:
            sections.append(block)
    canonical = (
        "<h2 id=canonical>Canonical vs free</h2><p class=caption>Each canonical mode against "
        "free generation (off) at the same model and temperature. Δ: mean over prompts run "
        "in both modes of (mode − off), 95% bootstrap interval over prompts. NLLs are the "
        "records' own (nats, scored on the canonical tokenization); – where absent.</p>"
        f"{comparison_table(analysis.comparison)}{own['canonical']}") if "canonical" in own else ""
    canonical += trajectories.section(analysis, own.get("trajectories"))
    warn = warnings(analysis, temperatures)
    banner = ("<div class=banner><b>⚠ Read with care</b><ul>"
              + "".join(f"<li>{_e(w)}</li>" for w in warn) + "</ul></div>") if warn else ""
    examples = "".join(example_html(k, ex) for k, ex in enumerate(analysis.examples))
    if not examples:
        examples = "<p>No non-canonical completion in this input.</p>"
    inputs = ", ".join(map(str, analysis.meta.get("inputs", [])))
    nav = "".join(f'<a href="#{a}">{a}</a>' for a in
                  ["summary", "figures", *(a for a in ("canonical", "trajectories") if a in own),
                   "examples", "metadata"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{_e(title)}</h1>
<p class=sub>Non-canonical tokenization of model outputs · {analysis.samples.height} samples ·
{_e(inputs)} · window {analysis.window} tokens ({_e(analysis.method)})</p>
<nav>{nav}</nav>{banner}
<h2 id=summary>Summary</h2>
<p class=caption>Every figure with its 95% interval in brackets (Wilson for shares, bootstrap over
samples for means, rates and the centre of gravity).</p>
{summary_table(analysis.groups)}
<h3>Sigmoid fits of the share compressed</h3>{fits_table(analysis.fits, series_keys(analysis.group_by))}
<h2 id=figures>Figures</h2>{''.join(sections)}{canonical}
<h2 id=examples>Most non-canonical completions</h2>{examples}
<h2 id=metadata>Run metadata</h2>{metadata_table(analysis)}
</body></html>
"""


def write_report(analysis, path: str | Path, *, temperatures=None) -> Path:
    """Write the HTML report to ``path`` (.html; replaced atomically, see `io.outputs`)."""
    from tmcli.io.outputs import replacing

    path = Path(path)
    text = render_html(analysis, temperatures=temperatures)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
