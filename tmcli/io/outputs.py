"""Writing files safely: a temporary file renamed into place (`AtomicFile`, `replacing`) and the
per-sample parquet stream of `analyze --output` (`ParquetSink`). Nothing here knows what an
analysis is: the caller gives the schema and, on closing, the metadata (`tmcli.aggregate.stored`
reads it back).

What any writer of tmcli refuses, whoever calls it (the CLI checks more, and earlier: see
`tmcli.cli.paths`):

- a target that is not a regular file: a directory, a device (``/dev/null``), a FIFO, a socket
  is never replaced by a file;
- a target another tmcli process is writing: each writer holds a lock on its temporary file
  (and `RecordWriter` on the file it appends to), so a second writer stops with one line.

The temporary file has a unique name beside the target (``tempfile``: ``.NAME.XXXX.tmcli-tmp``),
so it is on the same file system (the rename is atomic), two runs never share it and a user's
own ``NAME.tmp`` is never touched; it is removed on any failure, Ctrl-C included.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tmcli.errors import TmcliError, from_os_error
from tmcli.io.input_files import fcntl

META_KEY = b"tmcli"
PARQUET_SUFFIXES = (".parquet", ".pq")
TMP_SUFFIX = ".tmcli-tmp"
# A temporary file nobody holds that is older than this was left by a killed run: removed.
STALE_SECONDS = 600


def special_kind(path: str | Path) -> str | None:
    """What ``path`` is when it is not a regular file ('a directory', 'a device', 'a FIFO', 'a
    socket'); None for a regular file or a path that does not exist yet."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:  # a symbolic link loop, a file in place of a folder
        raise from_os_error(exc, str(path)) from None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def format_of_name(path: str | Path) -> str:
    """The format an output's name says: 'parquet', 'arrow' or 'jsonl' (compressed or not)."""
    from tmcli.io.input_files import TABLE_SUFFIXES

    return TABLE_SUFFIXES.get(Path(path).suffix.lower(), "jsonl").split("-")[0]


def check_format(output: str | Path, kind: str) -> None:
    """Refuse an output named for another format than ``kind`` (an input's: 'jsonl',
    'parquet', 'arrow-file', 'arrow-stream'), for commands that write their input's format."""
    have = "jsonl" if str(output) == "-" else format_of_name(output)
    want = kind.split("-")[0]
    if have != want:
        name = {"parquet": ".parquet", "arrow": ".arrow"}.get(want, ".jsonl")
        raise TmcliError(f"filter writes the input's own format ({kind}), not {have}",
                         hint=f"name the output {name}")


def refuse_special(path: str | Path) -> None:
    """Fail, naming what it is, when ``path`` exists and is not a regular file."""
    kind = special_kind(path)
    if kind is not None:
        raise TmcliError(f"{path} is {kind}, not a regular file",
                         hint="give the path of a file to write (stdout: -, where supported)")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths are one file (same device and inode; hard and symbolic links too)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def target(path: str | Path) -> Path:
    """The file a write to ``path`` replaces: a symbolic link's target (so the link stays)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _held(fd: int) -> bool:
    """Whether another process holds a lock on the open file ``fd``."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def other_writer(path: str | Path, mine: str | None = None, *, check_target: bool = True) -> bool:
    """Whether another tmcli process is writing ``path``: replacing it (its temporary file is
    locked) or appending to it (the file itself is locked). Temporary files of ``path`` that
    nobody holds and that are older than `STALE_SECONDS` were left by a killed run: removed."""
    path = Path(path)
    if fcntl is None:
        return False
    if check_target and path.is_file():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                if _held(fd):
                    return True
            finally:
                os.close(fd)
    prefix = _tmp_prefix(path.name)
    try:
        names = [n for n in os.listdir(path.parent or ".")
                 if n.startswith(prefix) and n.endswith(TMP_SUFFIX)]
    except OSError:
        return False
    for name in names:
        tmp = path.parent / name
        if mine is not None and name == os.path.basename(mine):
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _held(fd):
                return True
            if time.time() - os.fstat(fd).st_mtime > STALE_SECONDS:
                tmp.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return False


def _tmp_prefix(name: str) -> str:
    """The temporary files of target ``name`` start with this (cut so that the temporary name
    stays within a file system's 255 bytes when the target's own name does)."""
    return f".{name[:200]}."


def busy_error(path: str | Path) -> TmcliError:
    return TmcliError(f"{path} is being written by another tmcli process",
                      hint="wait for it to end, or write to another file")


def _mode_for(path: Path) -> int:
    """The permissions a new file at ``path`` gets: an existing file's own, else what the umask
    allows (mkstemp's files are private, which an output should not be)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class AtomicFile:
    """A unique temporary file beside ``path``, locked while it is written, that `commit`
    renames over ``path`` (atomically) and `abort` removes. Creating it checks at once that
    ``path`` can be written: a regular file or nothing, in a folder that takes new files (not
    read-only, not immutable), and no other tmcli process writing it."""

    def __init__(self, path: str | Path):
        self.path = target(path)
        refuse_special(self.path)
        try:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=_tmp_prefix(self.path.name),
                                        suffix=TMP_SUFFIX)
        except OSError as exc:
            raise from_os_error(exc, str(path)) from None
        self.tmp = Path(name)
        self._fd: int | None = fd
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if hasattr(os, "fchmod"):  # (not on Windows before Python 3.13)
                os.fchmod(fd, _mode_for(self.path))
            if other_writer(self.path, mine=name):
                raise busy_error(path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError) and not isinstance(exc, BlockingIOError):
                raise from_os_error(exc, str(path)) from None
            raise

    def commit(self) -> Path:
        """Move the written temporary file into place (atomic); returns the target."""
        try:
            refuse_special(self.path)  # became a FIFO or a folder while we worked
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise from_os_error(exc, str(self.path)) from None
            raise
        self._close()
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (nothing of the run is left)."""
        try:
            self.tmp.unlink(missing_ok=True)
        finally:
            self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@contextmanager
def replacing(path: str | Path):
    """Write to a temporary file (its path yielded) and rename it over ``path`` on success; on
    any failure (Ctrl-C included) it is removed, and OS errors become one line naming ``path``."""
    out = AtomicFile(path)
    try:
        yield out.tmp
    except BaseException as exc:
        out.abort()
        if isinstance(exc, OSError):
            raise from_os_error(exc, str(path)) from None
        raise
    out.commit()


class ParquetSink:
    """Per-sample rows streamed to a parquet file as batches are measured, so the rows (their
    per-span detail included) need not be held in memory. Written to an `AtomicFile` and moved
    into place on `close`; `abort` (or any failure) removes it, so nothing half-written is left.
    The file is created at once, so an unwritable path fails before the analysis starts."""

    def __init__(self, path: str | Path, schema: dict):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.schema = pl.DataFrame(schema=schema).to_arrow().schema
        self._writer: Any = None  # a pyarrow ParquetWriter while open
        self._out = AtomicFile(self.path)
        self.tmp = self._out.tmp
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
        return self._out.commit()

    def abort(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the first error is the one reported
                pass
        self._out.abort()
