"""Storing an analysis: the per-sample table as parquet, and reading it (or raw records) back.

The parquet file holds only the per-sample rows (`SAMPLE_SCHEMA`; `analyze --output` streams
them there as they are measured, see `ParquetSink`) plus, under the key-value
metadata key ``tmcli``, the run's metadata, example completions and window settings. Group
summaries are not stored: `summarise` recomputes them from the rows, so a stored file never
disagrees with the code that reads it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import orjson
import polars as pl

from tmcli.errors import TmcliError, from_os_error

META_KEY = b"tmcli"
PARQUET_SUFFIXES = (".parquet", ".pq")


def _extra(analysis) -> bytes:
    from tmcli.analysis import _jsonable

    return orjson.dumps({
        "meta": _jsonable(analysis.meta),
        "examples": _jsonable(analysis.examples),
        "window": analysis.window,
        "window_method": analysis.method,
    })


def check_parquet_path(path: str | Path) -> Path:
    """``path`` if a parquet file can be written there; else the one-line error, before work."""
    path = Path(path)
    if not str(path).lower().endswith(PARQUET_SUFFIXES):
        raise TmcliError(f"cannot write samples as '{path}'", hint="name the file .parquet")
    if path.is_dir():
        raise TmcliError(f"{path} is a folder", hint="give a file name ending in .parquet")
    if not path.parent.is_dir():
        raise TmcliError(f"no such folder: {path.parent}", hint="create it first")
    return path


class ParquetSink:
    """Per-sample rows streamed to a parquet file as batches are measured, so the rows (their
    per-span detail included) need not be held in memory. Written to ``<name>.tmp`` and renamed
    on `close`; `abort` (or any failure) removes it, so nothing half-written is left. The file
    is created at once, so an unwritable path fails before the analysis starts."""

    def __init__(self, path: str | Path, schema: dict):
        import pyarrow.parquet as pq

        self.path = check_parquet_path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.schema = pl.DataFrame(schema=schema).to_arrow().schema
        self.rows = 0
        self._writer = None
        with self._errors():
            self._writer = pq.ParquetWriter(self.tmp, self.schema)

    @contextmanager
    def _errors(self):
        import pyarrow as pa

        try:
            yield
        except OSError as exc:
            self.abort()
            raise from_os_error(exc, str(self.path)) from None
        except pa.ArrowException as exc:  # pyarrow reports some I/O failures as its own
            self.abort()
            raise TmcliError(f"cannot write {self.path}: {exc}",
                             hint="check the folder and the free disk space") from None

    def write(self, frame: pl.DataFrame) -> None:
        with self._errors():
            self._writer.write_table(frame.to_arrow().cast(self.schema))
        self.rows += frame.height

    def close(self, analysis) -> Path:
        """Add the analysis' metadata (see `write_parquet`) and move the file into place."""
        with self._errors():
            self._writer.add_key_value_metadata({META_KEY: _extra(analysis)})
            self._writer.close()
            self._writer = None
            self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the first error is the one reported
                pass
        self.tmp.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path):
    """Write to ``<path>.tmp`` (yielded) and rename it over ``path`` on success; on any failure
    the temporary file is removed, and OS errors become one line naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise from_os_error(exc, str(path)) from None
        raise


def write_parquet(analysis, path: str | Path) -> Path:
    """Write ``analysis.samples`` to ``path`` with the metadata needed to rebuild the analysis."""
    import pyarrow.parquet as pq

    table = analysis.samples.to_arrow()
    metadata = dict(table.schema.metadata or {})
    metadata[META_KEY] = _extra(analysis)
    path = Path(path)
    with replacing(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    return path


def read_parquet(path: str | Path, *, n_resamples: int = 2000, group_by: list[str] | None = None,
                 keep_duplicates: bool = False):
    """Rebuild an `Analysis` from a parquet file written by `analyze --output` or `write_parquet`
    (no re-encoding). The per-span detail columns are not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tmcli.analysis import DETAIL_COLUMNS, SAMPLE_SCHEMA, in_memory, summarise_samples

    try:
        names = pq.ParquetFile(path).schema_arrow.names
        table = pq.read_table(path, columns=[c for c in names if c not in DETAIL_COLUMNS])
    except (OSError, pa.ArrowException) as exc:
        raise TmcliError(f"cannot read {path} as parquet ({exc})",
                         hint="give a file written by `tmcli analyze --output x.parquet`") from None
    from tmcli.quality import QUALITY_COLUMNS

    for name in QUALITY_COLUMNS:  # files written before these columns existed: all null
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    defaults = {"causes": pa.list_(pa.string()), "normalized": pa.bool_(),
                "cut_bytes": pa.int64(), "unknown_ids": pa.int64()}
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
    raw = (table.schema.metadata or {}).get(META_KEY) or \
        (pq.read_metadata(path).metadata or {}).get(META_KEY)
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
    from tmcli.records import is_records_input

    text = str(path)
    suffix = Path(text).suffix.lower()
    if text != "-" and Path(text).is_dir():
        raise TmcliError(f"{text} is a directory", hint="give raw outputs (.jsonl, - for stdin) "
                         "or an `analyze --output` file (.parquet)")
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
        from tmcli.analysis import analyze_file

        kwargs = {k: v for k, v in analyze_kwargs.items() if v is not None}
        return analyze_file(text, n_resamples=n_resamples, group_by=group_by,
                            keep_duplicates=keep_duplicates, **kwargs)
    raise TmcliError(f"cannot tell what {text} holds from its suffix '{suffix or '(none)'}'",
                     hint="give raw outputs as .jsonl (.gz, .zst), a Parquet/Arrow table of "
                     "records, or an `analyze --output` file as .parquet")
