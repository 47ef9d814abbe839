"""Writing files safely: a temporary file renamed into place (`replacing`) and the per-sample
parquet stream of `analyze --output` (`ParquetSink`). Nothing here knows what an analysis is: the
caller gives the schema and, on closing, the metadata (`tmcli.aggregate.stored` reads it back)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tmcli.errors import TmcliError, from_os_error

META_KEY = b"tmcli"
PARQUET_SUFFIXES = (".parquet", ".pq")


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
        self._writer: Any = None  # a pyarrow ParquetWriter while open
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

    def close(self, metadata: dict) -> Path:
        """Add ``metadata`` (JSON, under `META_KEY`) and move the file into place."""
        with self._errors():
            self._writer.add_key_value_metadata({META_KEY: orjson.dumps(metadata)})
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
