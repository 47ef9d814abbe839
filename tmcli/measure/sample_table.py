"""The per-sample table: its schema (`SAMPLE_SCHEMA`), the columns kept in memory, and a batch
of sample rows as a DataFrame (built from columns, through Arrow).
"""

from __future__ import annotations

import polars as pl

from tmcli.measure.metrics import METRIC_COLUMNS

# The record's own columns (its id, where it was read, what produced it), then the measurement's
# (`SampleMetrics`), then the NLL figures a record carries from `tmcli score`, then a
# trajectory's (`tmcli.io.readers.base.TurnColumns`: a sampled turn's trajectory, turn and
# message, and the trajectory's drift verdict; null for other samples).
RECORD_COLUMNS = {
    "id": pl.String, "source": pl.String, "line": pl.Int64, "model": pl.String,
    "tokenizer": pl.String, "temperature": pl.Float64, "canonical": pl.String,
    "prompt_index": pl.Int64,
}
SCORE_COLUMNS = {"nll_token": pl.Float64, "nll_char": pl.Float64}
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


def batch_frame(record_columns: dict[str, list], metrics) -> pl.DataFrame:
    """A batch's sample rows: the records' own columns (one list each) beside the measurement's
    (a `columns.MetricsBatch`, whose columns come as arrays)."""
    arrays = metrics.arrow_columns()
    cols = {name: pl.from_arrow(arrays[name]) if name in arrays
            else pl.Series(name, record_columns[name], dtype=dtype)
            for name, dtype in SAMPLE_SCHEMA.items()}
    return pl.DataFrame(cols).cast(SAMPLE_SCHEMA)
