"""The measurement's contract: what one completion's measurement holds (`SampleMetrics`), and the
per-sample table's columns, derived from it.

`Reencoder.measure` returns one `SampleMetrics` per sample; the measuring stage adds the span
causes, the text-quality proxies and (``--window-method study``) the study script's figures to
the same object; `sample_table.SAMPLE_SCHEMA` is the record's own columns around
`METRIC_COLUMNS`, so a field added here is a column of `analyze --output` with its type.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypedDict

import polars as pl


class DiffSpan(TypedDict):
    """One differing span: at ``position`` (in the completion) the generated ids ``before``
    re-encode as ``after``; ``kind`` is one of `alignment.SPAN_KINDS`."""

    position: int
    before: list[int]
    after: list[int]
    kind: str


SPAN = pl.Struct({"position": pl.Int64, "before": pl.List(pl.Int64), "after": pl.List(pl.Int64),
                  "kind": pl.String})


def _column(dtype, *, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A field stored as a column of the per-sample table with ``dtype`` (required unless it
    has a default)."""
    return field(default=default, default_factory=factory, metadata={"dtype": dtype})


@dataclass(slots=True, kw_only=True)
class SampleMetrics:
    """One completion measured against its canonical re-encoding (`tmcli.measure.reencode`).

    Counts are of generated tokens; ``compression`` is signed ((n - canonical) / n, negative
    when the re-encoding is longer); windows are ``window`` tokens each, the last one shorter.
    """

    n_tokens: int = _column(pl.Int64)
    n_reencoded: int = _column(pl.Int64)
    compression: float = _column(pl.Float64)
    noncanonical: bool = _column(pl.Boolean)
    kind: str = _column(pl.String)  # alignment.KINDS: the sample's dominant kind
    n_spans: int = _column(pl.Int64)
    noncanonical_tokens: int = _column(pl.Int64)
    token_rate: float = _column(pl.Float64)
    first_divergence: int | None = _column(pl.Int64)
    boundary_merge: bool = _column(pl.Boolean)
    prompt_noncanonical: bool = _column(pl.Boolean)
    byte_exact: bool = _column(pl.Boolean)
    normalized: bool = _column(pl.Boolean)
    invalid_bytes: int = _column(pl.Int64)
    cut_bytes: int = _column(pl.Int64)
    unknown_ids: int = _column(pl.Int64)
    spans: list[DiffSpan] = _column(pl.List(SPAN))
    causes: list[str] = _column(pl.List(pl.String), factory=list)  # causes.CAUSES, one per span
    window_delta: list[float] = _column(pl.List(pl.Float64))
    window_tokens: list[int] = _column(pl.List(pl.Int64))
    window_compression: list[float] = _column(pl.List(pl.Float64))
    window_noncanonical: list[int] = _column(pl.List(pl.Int64))
    # --window-method study (`study_script.study_metrics`)
    study_compression: float | None = _column(pl.Float64, default=None)
    study_window_compression: list[float] | None = _column(pl.List(pl.Float64), default=None)
    # text-quality proxies (`text_quality.text_metrics`)
    n_chars: int | None = _column(pl.Int64, default=None)
    chars_per_token: float | None = _column(pl.Float64, default=None)
    distinct_2: float | None = _column(pl.Float64, default=None)
    repetition_4: float | None = _column(pl.Float64, default=None)
    # a difference straddling the prompt/completion boundary ({"before", "after"} ids); not a
    # column (``boundary_merge`` is)
    boundary_span: dict | None = None

    def columns(self) -> dict[str, Any]:
        """The per-sample table's columns of this measurement, by name."""
        return {name: getattr(self, name) for name in METRIC_COLUMNS}

    def update(self, values: dict[str, Any]) -> None:
        """Set the fields named in ``values`` (the proxies, the study figures)."""
        for name, value in values.items():
            setattr(self, name, value)


METRIC_COLUMNS: dict[str, pl.DataType] = {
    f.name: f.metadata["dtype"] for f in fields(SampleMetrics) if "dtype" in f.metadata
}
