"""The per-sample table: its schema (`SAMPLE_SCHEMA`), the columns kept in memory, and a batch
of sample rows as a DataFrame (built from columns, through Arrow).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import polars as pl

from tmcli.measure.metrics import METRIC_COLUMNS
from tmcli.measure.scored import DIVERGENCE_SCHEMA

# The record's own columns (its id, where it was read, what produced it), then the measurement's
# (`SampleMetrics`), then the figures a record carries from `tmcli score` (its NLL, and
# `score --divergence`'s comparison of its two contexts), then a
# trajectory's (`tmcli.io.readers.base.TurnColumns`: a sampled turn's trajectory, turn and
# message, and the trajectory's drift verdict; null for other samples).
RECORD_COLUMNS = {
    "id": pl.String, "source": pl.String, "line": pl.Int64, "model": pl.String,
    "tokenizer": pl.String, "temperature": pl.Float64, "canonical": pl.String,
    # truncation the record says it was sampled with (null where it says nothing)
    "top_k": pl.Int64, "top_p": pl.Float64, "min_p": pl.Float64,
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


def batch_frame(record_columns: dict[str, list], metrics, fields: Sequence[str] = ()) -> pl.DataFrame:
    """A batch's sample rows: the records' own columns (one list each, ``fields`` included)
    beside the measurement's (a `columns.MetricsBatch`, whose columns come as arrays)."""
    arrays = metrics.arrow_columns()
    schema = schema_with(fields)
    cols = {name: pl.from_arrow(arrays[name]) if name in arrays
            else _series(name, record_columns[name], dtype)
            for name, dtype in schema.items()}
    return pl.DataFrame(cols).cast(schema)


def _series(name: str, values: list, dtype) -> pl.Series:
    """A column from one value per row; a list column whose rows are all empty lists (a turn's
    drift spans, outside trajectories) as one empty list repeated, not one object per row."""
    if isinstance(dtype, pl.List) and values and all(type(v) is list and not v for v in values):
        return pl.Series(name, [[]], dtype=dtype).gather([0] * len(values))
    return pl.Series(name, values, dtype=dtype)


def schema_with(fields: Sequence[str] = ()) -> dict:
    """`SAMPLE_SCHEMA` plus the record fields a user groups by (``--group-by checkpoint``), each
    a string column: the field's text, or its JSON for a number or anything else
    (`record_field`); `natural_types` gives numbers back their type once all rows are in."""
    return {**SAMPLE_SCHEMA, **{f: pl.String for f in fields if f not in SAMPLE_SCHEMA}}


def record_field(meta: dict, name: str) -> str | None:
    """A record's field as a sample-table string: ``checkpoint`` or a dotted path into nested
    objects (``sampling.top_k``); None when the record lacks it."""
    value = meta
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def natural_types(samples: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """String columns ``names`` as integers, else floats, where every value reads back as the
    same text (``"10"`` but not ``"0010"``), so groups sort as numbers (step 2 before step 10)."""
    for name in names:
        col = samples[name]
        if col.dtype != pl.String or col.null_count() == col.len():
            continue
        values = col.drop_nulls().unique().to_list()
        for kind, read in ((pl.Int64, int), (pl.Float64, float)):
            try:
                same = all(orjson.dumps(read(v)).decode() == v for v in values)
            except ValueError:
                same = False
            if same:
                samples = samples.with_columns(col.cast(kind))
                break
    return samples
