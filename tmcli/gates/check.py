"""`tmcli check`: a CI gate over analysed outputs — thresholds in, verdict and exit code out.

Exit 0 when every threshold holds, 1 when one fails (2 is left to usage errors). Thresholds apply
to the whole input by default, or to every group with ``per_group``; ``use_upper`` compares the
upper end of the 95% interval instead of the point estimate (a stricter, noise-aware gate).

Per sample, ``on_mismatch`` lists every non-canonical sample (file:line, id, first differing
token, causes): ``error`` also fails the check (a pipeline's gate), ``warn`` only reports them
(a log). The third policy, dropping such samples, is `tmcli filter --keep canonical`.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import polars as pl

from tmcli.aggregate.groups import summarise
from tmcli.errors import EXIT_CHECK_FAILED, EXIT_OK, TmcliError, printable

# option name -> column of the group summary
THRESHOLDS = {
    "max_compression": "mean_compression",
    "max_noncanonical_rate": "token_rate",
    "max_fraction_compressed": "fraction_compressed",
    "max_fraction_noncanonical": "fraction_noncanonical",
    "max_fraction_drift": "fraction_drift",  # trajectories (tmcli.measure.trajectory)
}
FORMATS = ("text", "json", "github", "junit")
ON_MISMATCH = ("error", "warn")
MAX_LISTED = 20  # mismatches listed in text/github/junit output (json lists all)


@dataclass
class Outcome:
    group: str
    threshold: str
    metric: str
    value: float
    limit: float
    n: int
    passed: bool


@dataclass
class Mismatch:
    """A non-canonical sample, for ``--on-mismatch``."""

    source: str
    line: int
    id: str
    position: int
    n_spans: int
    kind: str
    causes: list[str]
    message: int | None = None  # a drifting trajectory: the message of its first difference


@dataclass
class CheckResult:
    outcomes: list[Outcome]
    n_samples: int
    n_skipped: int
    mismatches: list[Mismatch] = field(default_factory=list)
    on_mismatch: str | None = None

    @property
    def passed(self) -> bool:
        return (all(o.passed for o in self.outcomes)
                and not (self.on_mismatch == "error" and self.mismatches))

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_CHECK_FAILED


def validate_thresholds(thresholds: Mapping[str, float | None],
                        on_mismatch: str | None = None) -> dict[str, float]:
    """The thresholds given (None values dropped), or the one-line error for a bad one."""
    if on_mismatch is not None and on_mismatch not in ON_MISMATCH:
        raise TmcliError(f"unknown --on-mismatch '{on_mismatch}'",
                         hint="use error (fail the check) or warn (report only); to drop "
                         "such samples use `tmcli filter --keep canonical`")
    limits = {k: v for k, v in thresholds.items() if v is not None}
    unknown = set(limits) - set(THRESHOLDS)
    if unknown:
        raise TmcliError(f"unknown threshold(s): {', '.join(sorted(unknown))}",
                         hint="use " + ", ".join(THRESHOLDS))
    if not limits and on_mismatch is None:
        raise TmcliError("no threshold given",
                         hint="pass at least one of --max-compression, --max-noncanonical-rate, "
                         "--max-fraction-compressed, --max-fraction-noncanonical, "
                         "--max-fraction-drift")
    for name, value in limits.items():
        option = f"--{name.replace('_', '-')}"
        if not math.isfinite(value):
            raise TmcliError(f"{option} must be a finite number")
        if not 0 <= value <= 1:  # every figure checked is a share (compression: of the tokens)
            raise TmcliError(f"{option} {value:g} is outside 0..1",
                             hint="thresholds are fractions: 0.05 means 5%")
    return limits


def run_check(analysis, thresholds: Mapping[str, float | None], *, per_group: bool = False,
              use_upper: bool = False, on_mismatch: str | None = None) -> CheckResult:
    """Compare an `Analysis` against thresholds (keys of THRESHOLDS; None values ignored), and
    list its non-canonical samples under an ``on_mismatch`` policy (see the module doc)."""
    limits = validate_thresholds(thresholds, on_mismatch)
    if per_group:
        groups, keys = analysis.groups, analysis.group_by
    else:
        keys = ["scope"]
        groups = summarise(analysis.samples.with_columns(scope=pl.lit("all")), keys,
                           analysis.window)
    if "max_fraction_drift" in limits and "fraction_drift" not in groups.columns:
        raise TmcliError("--max-fraction-drift needs trajectories, and the input holds none",
                         hint="give records with messages and their sampled ids (see the "
                         "README's trajectories section), or drop the option")
    outcomes = []
    for row in groups.iter_rows(named=True):
        label = ", ".join(f"{k}={row[k]}" for k in keys) if per_group else "all"
        for name, limit in limits.items():
            metric = THRESHOLDS[name]
            value = row[metric + "_hi"] if use_upper else row[metric]
            value = float("nan") if value is None else float(value)
            passed = not math.isnan(value) and value <= limit
            outcomes.append(Outcome(label, name, metric + ("_hi" if use_upper else ""),
                                    value, limit, int(row["n"]), passed))
    return CheckResult(outcomes, analysis.samples.height, len(analysis.skipped),
                       find_mismatches(analysis) if on_mismatch else [], on_mismatch)


def find_mismatches(analysis) -> list[Mismatch]:
    """Every non-canonical sample of an `Analysis`, and every trajectory that drifts (once, at
    the turn its first difference is in), in input order."""
    samples = analysis.samples.with_row_index("_row")
    df = samples.filter(pl.col("noncanonical"))
    cols = ["_row", "source", "line", "id", "first_divergence", "n_spans", "kind", "causes"]
    found = [(r["_row"], Mismatch(r["source"] or "", r["line"] or 0, str(r["id"]),
                                  r["first_divergence"] or 0, r["n_spans"], r["kind"],
                                  list(r["causes"] or [])))
             for r in df.select(cols).iter_rows(named=True)]
    if "drift" in samples.columns:
        drifting = samples.filter(pl.col("drift").fill_null(False)
                                  & (pl.col("turn") == pl.col("drift_turn")))
        found += [(r["_row"], Mismatch(r["source"] or "", r["line"] or 0, str(r["trajectory"]),
                                       r["drift_position"] or 0, 1, "drift",
                                       [r["drift_cause"] or ""], r["drift_message"]))
                  for r in drifting.iter_rows(named=True)]
    return [m for _row, m in sorted(found, key=lambda x: x[0])]


def _mismatch_text(m: Mismatch) -> str:
    if m.kind == "drift":
        return (f"{m.source}:{m.line}: trajectory {m.id} drifts from its chat template at "
                f"message {m.message}, token {m.position} ({', '.join(m.causes)})")
    causes = ", ".join(dict.fromkeys(m.causes)) or m.kind
    return (f"{m.source}:{m.line}: sample {m.id} is non-canonical from token {m.position} "
            f"({m.n_spans} span(s): {causes})")


def render(result: CheckResult, fmt: str) -> str:
    """The verdict in one of FORMATS (all machine-readable except `text`)."""
    if fmt == "json":
        doc = {"passed": result.passed, "n_samples": result.n_samples,
               "n_skipped": result.n_skipped,
               "checks": [_clean(asdict(o)) for o in result.outcomes]}
        if result.on_mismatch:
            doc.update(on_mismatch=result.on_mismatch,
                       mismatches=[asdict(m) for m in result.mismatches])
        return json.dumps(doc, indent=2)
    if fmt == "github":
        lines = []
        for o in result.outcomes:
            msg = f"{o.metric} = {_fmt(o.value)} (limit {o.limit:g}, n={o.n}) for {o.group}"
            title = _gh_property(f"tmcli check {o.threshold}")
            level = "notice" if o.passed else "error"
            lines.append(f"::{level} title={title}::{_gh_data(msg)}")
        level = "error" if result.on_mismatch == "error" else "warning"
        for m in result.mismatches[:MAX_LISTED]:
            lines.append(f"::{level} file={_gh_property(m.source)},line={m.line},"
                         f"title=tmcli non-canonical::{_gh_data(_mismatch_text(m))}")
        lines.extend(_more(result))
        return "\n".join(lines)
    if fmt == "junit":
        suite = ET.Element("testsuite", name="tmcli check", tests=str(len(result.outcomes)),
                           failures=str(sum(not o.passed for o in result.outcomes)))
        for o in result.outcomes:
            case = ET.SubElement(suite, "testcase", classname="tmcli.gates.check",
                                 name=_xml_safe(f"{o.threshold}[{o.group}]"))
            if not o.passed:
                ET.SubElement(case, "failure", message=_xml_safe(
                    f"{o.metric} = {_fmt(o.value)} > {o.limit:g} (n={o.n})"))
        for m in result.mismatches[:MAX_LISTED]:
            case = ET.SubElement(suite, "testcase", classname="tmcli.gates.check",
                                 name=f"canonical[{m.id}]")
            if result.on_mismatch == "error":
                ET.SubElement(case, "failure", message=_mismatch_text(m))
            else:
                ET.SubElement(case, "system-out").text = _mismatch_text(m)
        if result.mismatches:
            suite.set("tests", str(len(suite)))
            suite.set("failures", str(sum(c.find("failure") is not None for c in suite)))
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)
    if fmt == "text":
        lines = []
        for o in result.outcomes:
            mark = "PASS" if o.passed else "FAIL"
            op = "<=" if o.passed else ">"
            lines.append(f"{mark}  {printable(o.group)}: {o.metric} = {_fmt(o.value)} {op} {o.limit:g}"
                         f"  (n={o.n})")
        mark = "FAIL" if result.on_mismatch == "error" else "WARN"
        lines += [f"{mark}  {_mismatch_text(m)}" for m in result.mismatches[:MAX_LISTED]]
        lines.extend(_more(result))
        verdict = "passed" if result.passed else "FAILED"
        tail = (f"; {len(result.mismatches)} non-canonical sample(s) "
                f"(--on-mismatch {result.on_mismatch})" if result.on_mismatch else "")
        lines.append(f"check {verdict}: {sum(o.passed for o in result.outcomes)}/"
                     f"{len(result.outcomes)} thresholds hold over {result.n_samples} samples"
                     + tail)
        return "\n".join(lines)
    raise TmcliError(f"unknown format '{fmt}'", hint="use " + ", ".join(FORMATS))


def _gh_data(text: str) -> str:
    """A GitHub workflow command's message, escaped as the runner unescapes it (a newline in
    the data can then not start a forged `::error` or `::stop-commands` line); other control
    characters (ANSI colours in the log viewer) shown as escapes."""
    return printable(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def _gh_property(text: str) -> str:
    """A workflow command property value (``title=``): also ``:`` and ``,`` escaped."""
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


# Characters XML 1.0 cannot hold at all, even as character references.
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(text: str) -> str:
    """Text for a JUnit attribute: control characters shown as escapes, none left that would
    make the XML unparseable."""
    return _XML_ILLEGAL.sub(lambda m: f"\\u{ord(m.group()):04x}", printable(text))


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.6g}"


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _more(result: CheckResult) -> list[str]:
    extra = len(result.mismatches) - MAX_LISTED
    return [f"... and {extra} more non-canonical sample(s) (--format json lists all)"] \
        if extra > 0 else []
