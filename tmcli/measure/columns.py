"""A batch's measurements as columns (`MetricsBatch`): what `Reencoder.measure_batch` returns and
what crosses from the worker processes to the per-sample table.

Most completions are canonical, and a canonical completion's measurement follows from its length
alone (`metrics.canonical_metrics`), so the batch holds one length (and cut-byte count) per sample
and a full `SampleMetrics` only for the samples where something differs. Its columns are built as
arrays (`arrow_columns`), never as one Python object per canonical sample; `row` and `rows` give
the per-sample `SampleMetrics` of the contract.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from tmcli.measure.metrics import SampleMetrics, canonical_metrics

# Columns whose value for a canonical sample is a constant, or the sample's length
_CANONICAL = {
    "noncanonical": False, "kind": "canonical", "n_spans": 0, "noncanonical_tokens": 0,
    "first_divergence": None, "boundary_merge": False, "prompt_noncanonical": False,
    "normalized": False, "invalid_bytes": 0, "unknown_ids": 0,
}
# Columns that are null unless given for the whole batch (`set_column`)
_OPTIONAL = {f.name for f in fields(SampleMetrics) if f.default is None and "dtype" in f.metadata}
_WINDOW_LISTS = ("window_delta", "window_tokens", "window_compression", "window_noncanonical")


class MetricsBatch:
    """The `SampleMetrics` of a batch of samples, canonical until `set` says otherwise."""

    def __init__(self, n_tokens, window: int):
        self.window = window
        self.n_tokens = np.asarray(n_tokens, dtype=np.int64)
        self.cut_bytes = np.zeros(len(self.n_tokens), dtype=np.int64)
        self.measured: dict[int, SampleMetrics] = {}  # the samples where something differs
        self.extra: dict[str, list] = {}  # columns given for every sample (proxies, study)

    def __len__(self) -> int:
        return len(self.n_tokens)

    def set(self, i: int, metrics: SampleMetrics) -> None:
        """Sample ``i``'s full measurement (a non-canonical one)."""
        self.measured[i] = metrics

    def set_column(self, name: str, values: list) -> None:
        """A column given for every sample (`text_quality`, `study_script` figures)."""
        self.extra[name] = list(values)

    def noncanonical(self) -> list[int]:
        """The samples whose ids differ from their re-encoding, in order."""
        return sorted(i for i, m in self.measured.items() if m.noncanonical)

    def row(self, i: int) -> SampleMetrics:
        m = self.measured.get(i)
        if m is None:
            m = canonical_metrics(int(self.n_tokens[i]), self.window, int(self.cut_bytes[i]))
        for name, values in self.extra.items():
            setattr(m, name, values[i])
        return m

    def rows(self) -> list[SampleMetrics]:
        return [self.row(i) for i in range(len(self))]

    # -- columns -------------------------------------------------------------------------------
    def _scalar(self, name: str, dtype) -> tuple[np.ndarray, np.ndarray | None]:
        """One scalar column as values and a null mask (None: no nulls)."""
        n = self.n_tokens
        if name in ("n_tokens", "n_reencoded"):
            values = n.copy()
        elif name in ("compression", "token_rate"):
            values = np.where(n > 0, 0.0, np.nan)
        elif name == "cut_bytes":
            values = self.cut_bytes.copy()
        elif name == "byte_exact":
            values = self.cut_bytes == 0
        else:
            default = _CANONICAL[name]
            values = np.full(len(n), 0 if default is None else default, dtype=dtype)
        mask = np.ones(len(n), dtype=bool) if name == "first_divergence" else None
        for i, m in self.measured.items():
            value = getattr(m, name)
            if mask is not None:
                mask[i] = value is None
            values[i] = 0 if value is None else value
        return values, mask

    def _windows(self) -> dict[str, Any]:
        """The four window lists as flat arrays and their offsets."""
        n, W = self.n_tokens, self.window
        counts = np.maximum(1, -(-n // W))
        offsets = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        tokens = np.full(total, W, dtype=np.int64)
        last = offsets[1:] - 1
        tokens[last] = np.where(n > 0, n - W * (counts - 1), 0)
        delta = np.zeros(total, dtype=np.float64)
        nc = np.zeros(total, dtype=np.int64)
        for i, m in self.measured.items():
            a, b = offsets[i], offsets[i + 1]
            delta[a:b] = m.window_delta
            nc[a:b] = m.window_noncanonical
        with np.errstate(invalid="ignore", divide="ignore"):
            comp = np.where(tokens > 0, delta / np.maximum(tokens, 1), np.nan)
        return {"offsets": offsets, "window_delta": delta, "window_tokens": tokens,
                "window_compression": comp, "window_noncanonical": nc}

    def arrow_columns(self) -> dict[str, Any]:
        """Every column of `METRIC_COLUMNS` as a pyarrow array, one value per sample."""
        import polars as pl
        import pyarrow as pa

        from tmcli.measure.metrics import METRIC_COLUMNS

        out: dict[str, Any] = {}
        windows = self._windows()
        offsets = pa.array(windows["offsets"].astype(np.int32))
        for name, dtype in METRIC_COLUMNS.items():
            if name in self.extra:
                out[name] = _list_or_scalar(self.extra[name], dtype)
            elif name in _WINDOW_LISTS:
                out[name] = pa.ListArray.from_arrays(offsets, pa.array(windows[name]))
            elif name == "kind":
                kinds = ["canonical"] * len(self)
                for i, m in self.measured.items():
                    kinds[i] = m.kind
                out[name] = pa.array(kinds, pa.string())
            elif name == "spans":
                out[name] = spans_array([self.measured[i].spans if i in self.measured else []
                                         for i in range(len(self))])
            elif name == "causes":
                values = [[] for _ in range(len(self))]
                for i, m in self.measured.items():
                    values[i] = m.causes
                out[name] = _list_or_scalar(values, dtype)
            elif name in _OPTIONAL:  # study figures, proxies: not asked for
                out[name] = pa.nulls(len(self), _arrow_type(dtype))
            else:
                np_type = {pl.Int64: np.int64, pl.Float64: np.float64, pl.Boolean: bool}[dtype]
                values, mask = self._scalar(name, np_type)
                out[name] = pa.array(values.astype(np_type), mask=mask)
        return out


def _arrow_type(dtype):
    """The pyarrow type of a polars dtype."""
    import polars as pl

    return pl.Series(dtype=dtype).to_arrow().type


def _list_or_scalar(values: list, dtype):
    """A column from one Python value per sample (None for null), of polars ``dtype``."""
    import polars as pl

    return pl.Series(values=values, dtype=dtype).to_arrow()


def _list_array(lists: list, value_type):
    """A pyarrow ListArray built from flat values and offsets (no per-item objects)."""
    import pyarrow as pa

    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    flat = [v for x in lists for v in x]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, value_type))


def spans_array(spans: list[list]):
    """The ``spans`` column (a list of {position, before, after, kind} per sample) as pyarrow."""
    import pyarrow as pa

    flat = [sp for ss in spans for sp in ss]
    struct = pa.StructArray.from_arrays(
        [pa.array([sp["position"] for sp in flat], pa.int64()),
         _list_array([sp["before"] for sp in flat], pa.int64()),
         _list_array([sp["after"] for sp in flat], pa.int64()),
         pa.array([sp.get("kind") for sp in flat], pa.string())],
        names=["position", "before", "after", "kind"])
    offsets = np.zeros(len(spans) + 1, dtype=np.int32)
    np.cumsum([len(ss) for ss in spans], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), struct)
