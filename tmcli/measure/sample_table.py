"""The per-sample table: its schema (`SAMPLE_SCHEMA`), the columns kept in memory, and sample
rows turned into a DataFrame through Arrow.
"""

from __future__ import annotations

import polars as pl

from tmcli.measure.metrics import METRIC_COLUMNS
from tmcli.measure.scored import DIVERGENCE_SCHEMA

# The record's own columns (its id, where it was read, what produced it), then the measurement's
# (`SampleMetrics`), then the figures a record carries from `tmcli score` (its NLL, and
# `score --divergence`'s comparison of its two contexts), then a
# trajectory's (`tmcli.measure.turns.TurnColumns`: a sampled turn's trajectory, turn and
# message, and the trajectory's drift verdict; null for other samples).
RECORD_COLUMNS = {
    "id": pl.String, "source": pl.String, "line": pl.Int64, "model": pl.String,
    "tokenizer": pl.String, "temperature": pl.Float64, "canonical": pl.String,
    "prompt_index": pl.Int64,
}
SCORE_COLUMNS = {"nll_token": pl.Float64, "nll_char": pl.Float64, **DIVERGENCE_SCHEMA}
DRIFT_SPAN = pl.Struct({"position": pl.Int64, "sampled": pl.List(pl.Int64),
                        "rendered": pl.List(pl.Int64), "message": pl.Int64, "cause": pl.String})
TURN_COLUMNS = {
    "trajectory": pl.String, "turn": pl.Int64, "n_turns": pl.Int64, "message": pl.Int64,
    "drift": pl.Boolean, "drift_message": pl.Int64, "drift_cause": pl.String,
    "drift_turn": pl.Int64, "drift_position": pl.Int64, "drift_spans": pl.List(DRIFT_SPAN),
}
SAMPLE_SCHEMA = {**RECORD_COLUMNS, **METRIC_COLUMNS, **SCORE_COLUMNS, **TURN_COLUMNS}
TRAJECTORY_COLUMNS = tuple(k for k in TURN_COLUMNS if k != "drift_spans")  # kept in memory


# Written to the parquet sink but not kept in memory: variable-length per-sample detail (lists
# of structs: the differing spans), and figures that follow from kept ones (window_compression =
# window_delta / window_tokens, n_reencoded, token_rate). Nothing summarised reads them.
DETAIL_COLUMNS = (*(name for name, dtype in SAMPLE_SCHEMA.items()
                    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)),
                  "window_compression", "n_reencoded", "token_rate")


# In memory, the input's path is stored once, not once per row.
MEMORY_DTYPES = {"source": pl.Categorical}


def in_memory(samples: pl.DataFrame) -> pl.DataFrame:
    """Sample rows as an `Analysis` holds them: without `DETAIL_COLUMNS`, `MEMORY_DTYPES` cast."""
    samples = samples.drop([c for c in DETAIL_COLUMNS if c in samples.columns])
    return samples.cast({k: v for k, v in MEMORY_DTYPES.items() if k in samples.columns})


def _list_array(lists: list, value_type):
    """A pyarrow ListArray built from flat values and offsets (fast; no per-item objects)."""
    import pyarrow as pa

    offsets = [0]
    for x in lists:
        offsets.append(offsets[-1] + (len(x) if x is not None else 0))
    flat = [v for x in lists if x for v in x]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, value_type))


def rows_to_frame(rows: list[dict]) -> pl.DataFrame:
    """Sample rows to a DataFrame of SAMPLE_SCHEMA; nested columns go through pyarrow."""
    import pyarrow as pa

    cols = {}
    for name, dtype in SAMPLE_SCHEMA.items():
        values = [r.get(name) for r in rows]
        if name == "spans":
            spans = [r["spans"] for r in rows]
            flat = [sp for ss in spans for sp in ss]
            struct = pa.StructArray.from_arrays(
                [pa.array([sp["position"] for sp in flat], pa.int64()),
                 _list_array([sp["before"] for sp in flat], pa.int64()),
                 _list_array([sp["after"] for sp in flat], pa.int64()),
                 pa.array([sp.get("kind") for sp in flat], pa.string())],
                names=["position", "before", "after", "kind"])
            offsets = [0]
            for ss in spans:
                offsets.append(offsets[-1] + len(ss))
            arr = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct)
            if any(r.get("spans") is None for r in rows):
                raise ValueError("spans missing")
            cols[name] = pl.from_arrow(arr)
        elif name == "drift_spans":  # few rows have any: built the plain way
            cols[name] = pl.Series(name, [v or [] for v in values], dtype=dtype)
        elif isinstance(dtype, pl.List):
            if all(v is None for v in values):
                cols[name] = pl.Series(name, values, dtype=dtype)
            else:
                inner = (pa.float64() if dtype.inner == pl.Float64
                         else pa.string() if dtype.inner == pl.String else pa.int64())
                arr = _list_array(values, inner)
                if any(v is None for v in values):
                    import pyarrow.compute as pc

                    arr = pc.if_else(pa.array([v is None for v in values]),
                                     pa.scalar(None, arr.type), arr)
                cols[name] = pl.from_arrow(arr)
        else:
            cols[name] = pl.Series(name, values, dtype=dtype)
    return pl.DataFrame(cols, schema=SAMPLE_SCHEMA)
