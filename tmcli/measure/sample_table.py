"""The per-sample table: its schema (`SAMPLE_SCHEMA`), the columns kept in memory, and sample
rows turned into a DataFrame through Arrow.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import polars as pl

SPAN = pl.Struct({"position": pl.Int64, "before": pl.List(pl.Int64), "after": pl.List(pl.Int64),
                  "kind": pl.String})


SAMPLE_SCHEMA = {
    "id": pl.String, "source": pl.String, "line": pl.Int64, "model": pl.String,
    "tokenizer": pl.String, "temperature": pl.Float64, "canonical": pl.String,
    # truncation the record says it was sampled with (null where it says nothing)
    "top_k": pl.Int64, "top_p": pl.Float64, "min_p": pl.Float64,
    "prompt_index": pl.Int64, "n_tokens": pl.Int64, "n_reencoded": pl.Int64,
    "compression": pl.Float64, "noncanonical": pl.Boolean, "kind": pl.String,
    "n_spans": pl.Int64, "noncanonical_tokens": pl.Int64, "token_rate": pl.Float64,
    "first_divergence": pl.Int64, "boundary_merge": pl.Boolean, "prompt_noncanonical": pl.Boolean,
    "byte_exact": pl.Boolean, "normalized": pl.Boolean, "invalid_bytes": pl.Int64,
    "cut_bytes": pl.Int64, "unknown_ids": pl.Int64, "spans": pl.List(SPAN),
    "causes": pl.List(pl.String),  # tmcli.measure.causes: one per span, in span order
    "window_delta": pl.List(pl.Float64), "window_tokens": pl.List(pl.Int64),
    "window_compression": pl.List(pl.Float64), "window_noncanonical": pl.List(pl.Int64),
    "study_compression": pl.Float64, "study_window_compression": pl.List(pl.Float64),
    # text-quality proxies (tmcli.measure.text_quality) and the record's own NLL figures
    "n_chars": pl.Int64, "chars_per_token": pl.Float64, "distinct_2": pl.Float64,
    "repetition_4": pl.Float64, "nll_token": pl.Float64, "nll_char": pl.Float64,
}


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


def rows_to_frame(rows: list[dict], fields: Sequence[str] = ()) -> pl.DataFrame:
    """Sample rows to a DataFrame of `schema_with(fields)`; nested columns go through pyarrow."""
    import pyarrow as pa

    schema = schema_with(fields)
    cols = {}
    for name, dtype in schema.items():
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
    return pl.DataFrame(cols, schema=schema)
