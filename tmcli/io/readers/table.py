"""Parquet and Arrow (IPC file or stream) tables: dataset dumps and rollout tables.

Each row becomes a dict (list-of-int columns become lists of ints) and is read by the same
readers as a JSONL line, so the defaults are those of JSONL (``token_ids``,
``prompt_token_ids``) and ``--ids-field`` / ``--prompt-ids-field`` name other columns. Rows are
read a batch at a time, so memory follows the batch, not the table.
"""

from __future__ import annotations

from collections.abc import Iterator

from tmcli.errors import TmcliError

BATCH_ROWS = 1024
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"


def table_kind(head: bytes) -> str | None:
    """'parquet', 'arrow-file' or 'arrow-stream' from a file's first bytes, else None."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ARROW_FILE_MAGIC):
        return "arrow-file"
    if head.startswith(ARROW_STREAM_MAGIC):
        return "arrow-stream"
    return None


def open_table(source, kind: str, name: str | None = None):
    """(schema, iterator of record batches) of a table: a file path, or its bytes (a table
    read from a stream). ``name`` is what messages call it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = name or str(source)
    try:
        data = pa.BufferReader(source) if isinstance(source, (bytes, bytearray)) else None
        if kind == "parquet":
            pf = pq.ParquetFile(data if data is not None else source)
            return pf.schema_arrow, pf.iter_batches(batch_size=BATCH_ROWS)
        opened = data if data is not None else pa.memory_map(source)
        if kind == "arrow-file":
            reader = pa.ipc.open_file(opened)
            return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
        reader = pa.ipc.open_stream(opened)
        return reader.schema, iter(reader)
    except (OSError, pa.ArrowException) as exc:
        raise TmcliError(f"cannot read {name} as {kind} ({exc})",
                         hint="check that the file is complete") from None


def iter_rows(source, kind: str, name: str | None = None) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row as a dict) for every row of the table (see `open_table`)."""
    import pyarrow as pa

    name = name or str(source)
    _schema, batches = open_table(source, kind, name)
    row = 0
    try:
        for batch in batches:
            for obj in batch.to_pylist():
                row += 1
                yield row, obj
    except (OSError, pa.ArrowException) as exc:
        raise TmcliError(f"{name}: cannot read past row {row} ({exc})",
                         hint="check that the file is complete") from None
