"""Storing an analysis: the per-sample table as parquet, and reading it (or raw records) back.

The parquet file holds only the per-sample rows (`SAMPLE_SCHEMA`; `analyze --output` streams
them there as they are measured, see `outputs.ParquetSink`) plus, under the key-value
metadata key ``tmcli``, the run's metadata, example completions and window settings. Group
summaries are not stored: `summarise` recomputes them from the rows, so a stored file never
disagrees with the code that reads it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from tmcli.aggregate.analysis import analyze_file, summarise_samples
from tmcli.errors import TmcliError
from tmcli.io.outputs import META_KEY, PARQUET_SUFFIXES, replacing
from tmcli.measure.sample_table import (
    DETAIL_COLUMNS,
    SAMPLE_SCHEMA,
    TRAJECTORY_COLUMNS,
    in_memory,
)

# In the folder `analyze --ray --output` writes (parts `part-NNNNN.parquet`, one per shard): the
# metadata a single file keeps in its footer.
DATASET_METADATA = "_tmcli.json"


def write_parquet(analysis, path: str | Path) -> Path:
    """Write ``analysis.samples`` to ``path`` with the metadata needed to rebuild the analysis."""
    import pyarrow.parquet as pq

    table = analysis.samples.to_arrow()
    metadata = dict(table.schema.metadata or {})
    metadata[META_KEY] = orjson.dumps(analysis.stored_metadata())
    path = Path(path)
    with replacing(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    return path


def read_parquet(path: str | Path, *, n_resamples: int = 2000, group_by: list[str] | None = None,
                 keep_duplicates: bool = False):
    """Rebuild an `Analysis` from a parquet file written by `analyze --output` or `write_parquet`,
    or the folder `analyze --ray --output` writes (no re-encoding). The per-span detail columns
    are not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:  # one open of the file: its schema, its columns and its footer's metadata
        if Path(path).is_dir():  # `analyze --ray --output`: parts in shard order, metadata beside
            parts = sorted(Path(path).glob("part-*.parquet"))
            table = pa.concat_tables(
                pq.read_table(p, columns=[c for c in pq.read_schema(p).names
                                          if c not in DETAIL_COLUMNS]) for p in parts)
            footer = {META_KEY: (Path(path) / DATASET_METADATA).read_bytes()}
        else:
            with pq.ParquetFile(path) as pf:
                names = pf.schema_arrow.names
                table = pf.read(columns=[c for c in names if c not in DETAIL_COLUMNS])
                footer = pf.metadata.metadata or {}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TmcliError(f"cannot read {path} as parquet ({exc})",
                         hint="give a file written by `tmcli analyze --output x.parquet`") from None
    from tmcli.measure.text_quality import QUALITY_COLUMNS

    for name in QUALITY_COLUMNS:  # files written before these columns existed: all null
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    defaults = {"causes": pa.list_(pa.string()), "normalized": pa.bool_(),
                "cut_bytes": pa.int64(), "unknown_ids": pa.int64()}
    for name in TRAJECTORY_COLUMNS:  # files written before trajectories existed: all null
        if name not in table.column_names:
            kind = SAMPLE_SCHEMA[name]
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()
                                        if kind == pl.String else pa.bool_()
                                        if kind == pl.Boolean else pa.int64()))
    for name, kind in defaults.items():  # files written before these columns existed
        if name not in table.column_names:
            fill = pa.nulls(table.num_rows, kind) if name == "causes" else \
                pa.array([False if name == "normalized" else 0] * table.num_rows, kind)
            table = table.append_column(name, fill)
    schema = {k: v for k, v in SAMPLE_SCHEMA.items() if k not in DETAIL_COLUMNS}
    missing = [c for c in schema if c not in table.column_names]
    if missing:
        raise TmcliError(f"{path} lacks the per-sample column(s) {', '.join(missing[:5])}",
                         hint="write it with this tmcli's `analyze --output x.parquet`")
    # written as file key-value metadata (the streaming sink) or schema metadata (write_parquet)
    raw = (table.schema.metadata or {}).get(META_KEY) or footer.get(META_KEY)
    try:
        extra = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise TmcliError(f"{path}: the 'tmcli' metadata is not valid JSON",
                         hint="re-run `tmcli analyze --output`") from None
    samples = in_memory(pl.from_arrow(table.select(list(schema))).cast(schema))
    if samples.height == 0:
        raise TmcliError(f"{path} holds no samples", hint="analyze a non-empty input")
    meta = dict(extra.get("meta") or {})
    meta.setdefault("inputs", [str(path)])
    return summarise_samples(samples, group_by=group_by, window=int(extra.get("window") or 64),
                             method=str(extra.get("window_method") or "aligned"),
                             n_resamples=n_resamples, examples=extra.get("examples"),
                             meta=meta, keep_duplicates=keep_duplicates)


def is_stored_analysis(path: str | Path) -> bool:
    """Whether ``path`` is an `analyze --output` file (Parquet with tmcli's metadata), as opposed
    to a table of records (rollouts, dataset dumps) that is still to be measured."""
    text = str(path)
    if text != "-" and Path(text).is_dir():
        return (Path(text) / DATASET_METADATA).is_file()
    if text == "-" or not text.lower().endswith(PARQUET_SUFFIXES) or not Path(text).is_file():
        return False
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return META_KEY in (pq.read_metadata(text).metadata or {})
    except (OSError, pa.ArrowException):
        return True  # let read_parquet report what is wrong with it


def load_analysis(path: str | Path, *, n_resamples: int = 2000,
                  group_by: list[str] | None = None, keep_duplicates: bool = False,
                  **analyze_kwargs):
    """An `Analysis` from raw outputs (.jsonl, analysed now) or a stored analysis (.parquet).

    ``analyze_kwargs`` (tokenizer, window, skip_invalid...) apply to JSONL input only; a parquet
    file was measured already, with its own settings.
    """
    from tmcli.io.input_files import is_records_input

    text = str(path)
    suffix = Path(text).suffix.lower()
    if text != "-" and Path(text).is_dir() and not is_stored_analysis(text):
        raise TmcliError(f"{text} is a directory", hint="give raw outputs (.jsonl, - for stdin), "
                         "an `analyze --output` file (.parquet) or an `analyze --ray --output` "
                         "folder")
    if suffix in PARQUET_SUFFIXES and not Path(text).is_file():
        raise TmcliError(f"no such file: {text}", hint="check the path")
    if is_stored_analysis(text):
        given = {k for k, v in analyze_kwargs.items() if v is not None}
        if given:
            raise TmcliError(f"{', '.join(sorted(given))} cannot apply to a stored analysis",
                             hint="pass them to `tmcli analyze`, or give the raw .jsonl outputs")
        return read_parquet(text, n_resamples=n_resamples, group_by=group_by,
                            keep_duplicates=keep_duplicates)
    if is_records_input(text):
        kwargs = {k: v for k, v in analyze_kwargs.items() if v is not None}
        return analyze_file(text, n_resamples=n_resamples, group_by=group_by,
                            keep_duplicates=keep_duplicates, **kwargs)
    raise TmcliError(f"cannot tell what {text} holds from its suffix '{suffix or '(none)'}'",
                     hint="give raw outputs as .jsonl (.gz, .zst), a Parquet/Arrow table of "
                     "records, or an `analyze --output` file as .parquet")
