"""The measurement's contract: what one completion's measurement holds (`SampleMetrics`), and the
per-sample table's columns, derived from it.

`Reencoder.measure` returns one `SampleMetrics` per sample: `form_metrics` builds it from a
sample's aligned canonical form, `canonical_metrics` in closed form for the usual case where
nothing differs. The measuring stage adds the span causes, the text-quality proxies and
(``--window-method study``) the study script's figures to the same object;
`sample_table.SAMPLE_SCHEMA` is the record's own columns around `METRIC_COLUMNS`, so a field
added here is a column of `analyze --output` with its type.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypedDict

import numpy as np

from tmcli.measure.alignment import Canonical


class DiffSpan(TypedDict):
    """One differing span: at ``position`` (in the completion) the generated ids ``before``
    re-encode as ``after``; ``kind`` is one of `alignment.SPAN_KINDS`."""

    position: int
    before: list[int]
    after: list[int]
    kind: str


def _column(dtype: str, *, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A field stored as a column of the per-sample table with ``dtype``, a polars type by name
    (``Int64``, ``List[Float64]``; ``Span`` is a `DiffSpan`), required unless it has a default.
    Named, not imported: measuring (and generating, which measures) needs no polars."""
    return field(default=default, default_factory=factory, metadata={"dtype": dtype})


def polars_dtype(name: str):
    """The polars type named by a column's ``dtype``."""
    import polars as pl

    if name.startswith("List[") and name.endswith("]"):
        return pl.List(polars_dtype(name[5:-1]))
    if name == "Span":
        return pl.Struct({"position": pl.Int64, "before": pl.List(pl.Int64),
                          "after": pl.List(pl.Int64), "kind": pl.String})
    return getattr(pl, name)


@dataclass(slots=True, kw_only=True)
class SampleMetrics:
    """One completion measured against its canonical re-encoding (`tmcli.measure.reencode`).

    Counts are of generated tokens; ``compression`` is signed ((n - canonical) / n, negative
    when the re-encoding is longer); windows are ``window`` tokens each, the last one shorter.
    """

    n_tokens: int = _column("Int64")
    n_reencoded: int = _column("Int64")
    compression: float = _column("Float64")
    noncanonical: bool = _column("Boolean")
    kind: str = _column("String")  # alignment.KINDS: the sample's dominant kind
    n_spans: int = _column("Int64")
    noncanonical_tokens: int = _column("Int64")
    token_rate: float = _column("Float64")
    first_divergence: int | None = _column("Int64")
    boundary_merge: bool = _column("Boolean")
    prompt_noncanonical: bool = _column("Boolean")
    byte_exact: bool = _column("Boolean")
    normalized: bool = _column("Boolean")
    invalid_bytes: int = _column("Int64")
    cut_bytes: int = _column("Int64")
    unknown_ids: int = _column("Int64")
    spans: list[DiffSpan] = _column("List[Span]")
    causes: list[str] = _column("List[String]", factory=list)  # causes.CAUSES, one per span
    window_delta: list[float] = _column("List[Float64]")
    window_tokens: list[int] = _column("List[Int64]")
    window_compression: list[float] = _column("List[Float64]")
    window_noncanonical: list[int] = _column("List[Int64]")
    # --window-method study (`study_script.study_metrics`)
    study_compression: float | None = _column("Float64", default=None)
    study_window_compression: list[float] | None = _column("List[Float64]", default=None)
    # text-quality proxies (`text_quality.text_metrics`)
    n_chars: int | None = _column("Int64", default=None)
    chars_per_token: float | None = _column("Float64", default=None)
    distinct_2: float | None = _column("Float64", default=None)
    repetition_4: float | None = _column("Float64", default=None)
    # a difference straddling the prompt/completion boundary ({"before", "after"} ids); not a
    # column (``boundary_merge`` is)
    boundary_span: dict | None = None

    def columns(self) -> dict[str, Any]:
        """The per-sample table's columns of this measurement, by name."""
        return {name: getattr(self, name) for name in COLUMN_NAMES}

    def update(self, values: dict[str, Any]) -> None:
        """Set the fields named in ``values`` (the proxies, the study figures)."""
        for name, value in values.items():
            setattr(self, name, value)


COLUMN_NAMES = tuple(f.name for f in fields(SampleMetrics) if "dtype" in f.metadata)


def __getattr__(name: str):
    if name == "METRIC_COLUMNS":  # {column: polars type}, built on first use
        columns = {f.name: polars_dtype(f.metadata["dtype"]) for f in fields(SampleMetrics)
                   if "dtype" in f.metadata}
        globals()["METRIC_COLUMNS"] = columns
        return columns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def window_count(n: int, window: int) -> int:
    """Windows of ``window`` tokens over ``n`` tokens (at least one, the last one shorter)."""
    return max(1, -(-n // window))


def window_tokens(n: int, window: int) -> list[int]:
    """Tokens in each window of a completion of ``n`` tokens."""
    nw = window_count(n, window)
    return [window] * (nw - 1) + [n - window * (nw - 1) if n > 0 else 0]


def canonical_metrics(n: int, window: int, cut_bytes: int = 0) -> SampleMetrics:
    """The measurement of a canonical completion of ``n`` tokens (ids equal their re-encoding):
    nothing differs, so every figure follows from ``n`` (and a character cut at the very end)."""
    nw = window_count(n, window)
    tokens = window_tokens(n, window)
    return SampleMetrics(
        n_tokens=n, n_reencoded=n, compression=0.0 if n else float("nan"), noncanonical=False,
        kind="canonical", n_spans=0, noncanonical_tokens=0,
        token_rate=0.0 if n else float("nan"), first_divergence=None, boundary_merge=False,
        prompt_noncanonical=False, byte_exact=not cut_bytes, normalized=False, invalid_bytes=0,
        cut_bytes=cut_bytes, unknown_ids=0, spans=[], window_delta=[0.0] * nw,
        window_tokens=tokens,
        window_compression=[0.0 if t > 0 else float("nan") for t in tokens],
        window_noncanonical=[0] * nw)


def form_spans(form: Canonical, p: int) -> tuple[list[DiffSpan], dict | None, bool]:
    """The completion's spans in an aligned form (positions relative to the completion, which
    starts at ``p``), the boundary span if a difference straddles the prompt/completion
    boundary, and whether the prompt itself holds a difference."""
    a, b = form.ids.tolist(), form.canon.tolist()  # sliced per span below
    raw = [(a0, a1, b0, b1, None) for a0, a1, b0, b1 in form.segments()]
    raw += [(i0, i1, None, None, kind) for i0, i1, kind in form.flagged]
    raw.sort(key=lambda r: r[0])
    spans: list[DiffSpan] = []
    boundary, prompt_nc = None, False
    for a0, a1, b0, b1, kind in raw:
        if a1 <= p:
            prompt_nc = True
            continue
        before = a[a0:a1]
        after = before if kind else b[b0:b1]
        if a0 < p:
            boundary = {"before": before, "after": after}
            continue
        if kind is None:
            d = len(before) - len(after)
            kind = "merged" if d > 0 else "lengthened" if d < 0 else "resegmented"
        spans.append({"position": a0 - p, "before": before, "after": after, "kind": kind})
    return spans, boundary, prompt_nc


def form_metrics(form: Canonical, p: int, window: int) -> SampleMetrics:
    """The measurement of the completion (from position ``p``) of an aligned form: figures are
    sums over its differing spans, and a span's saving is spread over the tokens it replaces, so
    windows add up to the whole sequence exactly."""
    spans, boundary, prompt_nc = form_spans(form, p)
    n = len(form.ids) - p
    W = window
    nw = window_count(n, W)
    win_delta = np.zeros(nw, dtype=np.float64)
    win_nc = np.zeros(nw, dtype=np.int64)
    delta_sum = nc_tokens = n_unknown = 0
    if spans:
        k = np.array([len(sp["before"]) for sp in spans])
        delta = k - np.array([len(sp["after"]) for sp in spans])
        starts = np.repeat(np.array([sp["position"] for sp in spans]), k)
        q = (starts + np.arange(len(starts)) - np.repeat(np.cumsum(k) - k, k)) // W
        win_delta += np.bincount(q, np.repeat(delta / k, k), minlength=nw)[:nw]
        win_nc += np.bincount(q, minlength=nw)[:nw]
        delta_sum, nc_tokens = int(delta.sum()), int(k.sum())
        n_unknown = sum(len(sp["before"]) for sp in spans if sp["kind"] == "unknown_id")
    tokens = np.array(window_tokens(n, W), dtype=np.int64)
    kinds = {s["kind"] for s in spans}
    if "unknown_id" in kinds:
        kind = "unknown_id"
    elif "invalid_utf8" in kinds:
        kind = "invalid_utf8"
    elif not spans:
        kind = "canonical"
    else:
        kind = "merged" if delta_sum > 0 else "lengthened" if delta_sum < 0 else "resegmented"
    with np.errstate(invalid="ignore", divide="ignore"):
        win_comp = np.where(tokens > 0, win_delta / np.maximum(tokens, 1), np.nan)
    return SampleMetrics(
        n_tokens=n,
        n_reencoded=n - delta_sum,
        compression=delta_sum / n if n else float("nan"),
        noncanonical=bool(spans),
        kind=kind,
        n_spans=len(spans),
        noncanonical_tokens=nc_tokens,
        token_rate=nc_tokens / n if n else float("nan"),
        first_divergence=spans[0]["position"] if spans else None,
        boundary_merge=boundary is not None,
        boundary_span=boundary,
        prompt_noncanonical=prompt_nc,
        byte_exact=not (form.normalized or form.invalid_bytes or form.cut_bytes),
        normalized=form.normalized,
        invalid_bytes=form.invalid_bytes,
        cut_bytes=form.cut_bytes,
        unknown_ids=n_unknown,
        spans=spans,
        window_delta=win_delta.tolist(),
        window_tokens=tokens.tolist(),
        window_compression=win_comp.tolist(),
        window_noncanonical=win_nc.tolist(),
    )
