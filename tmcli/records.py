"""Records I/O: the single door for input, and appending records safely.

Reading: `read_records(path)` streams `Record`s from any supported input. The file level is
here: JSONL read line by line with a bounded buffer (a line over `MAX_LINE_BYTES` is reported as
file:line without being read whole), gzip/zstd compression detected by magic bytes (so the
``.jsonl.gz`` / ``.jsonl.zst`` suffixes and piped compressed data both work) and decompressed as
a stream, and Parquet/Arrow tables read a batch of rows at a time. Each JSON object (line or
row) goes to `tmcli.readers`, which detects its format (tmcli, vLLM offline, vLLM server
``return_token_ids``, OpenAI logprobs, SGLang, or a field named with ``ids_field``).

``-`` is stdin (JSONL, compressed or not), so memory does not grow with the input.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from tmcli.errors import InvalidRecord, TmcliError, from_os_error, one_line
from tmcli.readers import Fields, Record, parse_object
from tmcli.readers.table import iter_rows, table_kind

__all__ = ["MAX_LINE_BYTES", "Input", "Record", "RecordWriter", "existing_ids", "input_format",
           "is_records_input", "iter_lines", "iter_objects", "open_input", "parse_line",
           "read_records", "repair_tail"]

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MAX_LINE_BYTES = 64 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow-file",
                  ".feather": "arrow-file", ".ipc": "arrow-file", ".arrows": "arrow-stream"}


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read to sniff the format) followed by the rest of ``stream``;
    closing it closes ``stream`` unless that is stdin."""

    def __init__(self, head: bytes, stream):
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._stream is not sys.stdin.buffer:
            self._stream.close()
        super().close()


def _file(path: str):
    p = Path(path)
    if not p.exists():
        raise TmcliError(f"no such file: {path}", hint="check the path, or use - for stdin")
    if p.is_dir():
        raise TmcliError(f"{path} is a directory", hint="give a JSONL, Parquet or Arrow file")
    try:
        return open(p, "rb")
    except OSError as exc:
        raise TmcliError(f"cannot read {path} ({exc.strerror or exc})",
                         hint="check the file's permissions") from None


def input_format(path: str) -> str:
    """'jsonl' (plain or compressed), 'parquet', 'arrow-file' or 'arrow-stream': by the file's
    magic bytes, else its suffix."""
    if path == "-":
        return "jsonl"
    with _file(path) as fh:
        kind = table_kind(fh.read(8))
    return kind or TABLE_SUFFIXES.get(Path(path).suffix.lower()) or "jsonl"


def is_records_input(path: str) -> bool:
    """Whether ``path`` names input the readers take: stdin, a JSONL name (compressed or not), a
    table name, or a file whose magic bytes say gzip, zstd, Parquet or Arrow."""
    name = Path(path).name.lower()
    for ext in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(ext)
    if path == "-" or Path(name).suffix in JSONL_SUFFIXES or Path(name).suffix in TABLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return bool(table_kind(head)) or head.startswith((GZIP_MAGIC, ZSTD_MAGIC))


class Input:
    """An opened input: ``stream`` yields its decompressed bytes; ``compression`` is 'gzip',
    'zstd' or None (told by magic bytes, so a piped or misnamed file is read right)."""

    def __init__(self, path: str):
        if path == "-":
            raw, self.source = sys.stdin.buffer, "<stdin>"
        else:
            raw, self.source = _file(path), path
        head = b""
        while len(head) < 4:  # a pipe may hand over fewer bytes per read
            more = raw.read(4 - len(head))
            if not more:
                break
            head += more
        self._raw = io.BufferedReader(_Prefixed(head, raw), buffer_size=1 << 16)
        self.compression = None
        self.stream = self._raw
        if head.startswith(GZIP_MAGIC):
            import gzip

            self.compression, self.stream = "gzip", gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif head.startswith(ZSTD_MAGIC):
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(self._raw, read_across_frames=True)
            self.compression, self.stream = "zstd", io.BufferedReader(reader, 1 << 20)
        elif table_kind(head):
            self.close()
            raise TmcliError(f"{self.source} is a Parquet/Arrow table",
                             hint="give it as a file path, not on stdin")

    def close(self) -> None:
        if self.stream is not self._raw:
            self.stream.close()
        self._raw.close()


def open_input(path: str) -> Input:
    """The input ``path`` (``-`` for stdin) opened for reading, decompressed as it streams."""
    return Input(path)


def _read_error(handle: Input, exc: Exception) -> TmcliError:
    what = f"corrupt or truncated {handle.compression} data" if handle.compression else "read error"
    return TmcliError(f"{handle.source}: {what} ({exc})",
                      hint="check that the file is complete (a download or copy cut short?)")


def _decode_errors() -> tuple:
    errors: tuple = (OSError, EOFError, zlib.error)
    if "zstandard" in sys.modules:
        errors += (sys.modules["zstandard"].ZstdError,)
    return errors


def _limit_text(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"


def iter_lines(path: str, *, keep_ends: bool = False,
               errors: list | None = None) -> Iterator[tuple[str, int, bytes]]:
    """(source, line number, line) for each non-blank line; BOM and CRLF tolerated.

    Lines are stripped, or kept byte for byte with ``keep_ends`` (for `tmcli filter`). No line
    is read past ``MAX_LINE_BYTES``: an over-long line raises `InvalidRecord`, or, when an
    ``errors`` list is given (``--skip-invalid``), is recorded there and skipped unread.
    """
    handle = open_input(path)
    fh, source = handle.stream, handle.source
    limit = MAX_LINE_BYTES
    number = 0
    try:
        while True:
            try:
                raw = fh.readline(limit + 1)
            except _decode_errors() as exc:
                raise _read_error(handle, exc) from None
            if not raw:
                break
            number += 1
            if len(raw) - raw.endswith(b"\n") > limit:
                exc = InvalidRecord(source, number, f"line is longer than the "
                                    f"{_limit_text(limit)} limit",
                                    hint="write one completion per line (JSONL), not one JSON "
                                    "document")
                if errors is None:
                    raise exc
                errors.append(exc)
                while not raw.endswith(b"\n"):
                    try:
                        raw = fh.readline(_SKIP_CHUNK)
                    except _decode_errors() as err:
                        raise _read_error(handle, err) from None
                    if not raw:
                        break
                continue
            if number == 1 and raw.startswith(BOM):
                raw = raw[3:]
            stripped = raw.strip()
            if stripped:
                yield source, number, raw if keep_ends else stripped
    finally:
        handle.close()


def _json(source: str, line: int, raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = "each line must be one JSON object"
        if raw[:1] == b"[" and line == 1:
            hint = "this looks like a JSON array; write one object per line (JSONL)"
        raise InvalidRecord(source, line, f"malformed JSON ({exc.args[0].split(':')[0]})",
                            hint=hint) from None


def parse_line(source: str, line: int, raw: bytes, ids_field: str | None = None,
               prompt_ids_field: str | None = None) -> list[Record]:
    """The records in one JSONL line (a vLLM, OpenAI or SGLang line can hold several)."""
    return parse_object(_json(source, line, raw), source, line, Fields(ids_field, prompt_ids_field))


def iter_objects(path: str, *, errors: list | None = None) -> Iterator[tuple[str, int, object]]:
    """(source, line or 1-based row, JSON value or raw line bytes) of every line or table row;
    over-long lines go to ``errors`` when given (see `iter_lines`)."""
    kind = input_format(path)
    if kind == "jsonl":
        yield from iter_lines(path, errors=errors)
    else:
        for row, obj in iter_rows(path, kind):
            yield path, row, obj


def read_records(path: str, *, ids_field: str | None = None, prompt_ids_field: str | None = None,
                 skip_invalid: bool = False, errors: list | None = None) -> Iterator[Record]:
    """Stream records from ``path``; invalid lines raise, or are skipped into ``errors``."""
    errors = [] if errors is None else errors
    fields = Fields(ids_field, prompt_ids_field)
    for source, line, item in iter_objects(path, errors=errors if skip_invalid else None):
        try:
            obj = _json(source, line, item) if isinstance(item, bytes) else item
            records = list(parse_object(obj, source, line, fields))
        except (InvalidRecord, ValueError, TypeError, KeyError, AttributeError) as exc:
            # a reader that fails on a line in any way fails on that line (--skip-invalid)
            if not isinstance(exc, InvalidRecord):
                text = one_line(exc, 200, ellipsis=False)
                exc = InvalidRecord(source, line, f"unreadable record ({text})",
                                    hint="fix or drop the line, or pass --skip-invalid")
            if not skip_invalid:
                raise exc from None
            errors.append(exc)
            continue
        yield from records


# -- writing ------------------------------------------------------------------------------------
#
# One writer per output file: `RecordWriter` holds an exclusive advisory lock (flock) on the file
# from the moment it exists until it is closed, and `repair_tail` takes it for the repair. A
# second `generate`/`score` on the same file therefore stops at once with one line, instead of
# both appending every record. (It does not wait: rerunning after the first one ends resumes.)

_HELD: set[str] = set()  # files this process holds the lock of (flock is per open file)


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _regular(path: Path) -> bool:
    """A regular file (not a device, FIFO or /dev/stdout): only those can be repaired or resumed."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _lock(fh, path: Path) -> None:
    """Take the exclusive lock on open file ``fh`` or fail with the one-line error."""
    if fcntl is None:  # no flock (Windows): one writer is then the user's to ensure
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise TmcliError(f"{path} is being written by another tmcli process",
                         hint="wait for it to end (running the command again then resumes), "
                         "or write to another file with -o") from None
    except OSError as exc:  # a file system without locks (some network mounts): go on unlocked
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            fh.close()
            raise


def repair_tail(path: Path) -> int:
    """Cut a last line left incomplete by a crash; returns the bytes removed.

    Takes the output lock for the repair (unless this process holds it), so it never cuts a
    line that another writer is still appending."""
    path = Path(path)
    if not _regular(path) or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        if _key(path) not in _HELD:
            _lock(fh, path)  # released when fh closes
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        pos = size
        chunk = 1 << 16
        tail = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            nl = tail.rfind(b"\n")
            if nl != -1:
                last = tail[nl + 1 :]
                keep = pos + nl + 1
                break
        else:
            last, keep = tail, 0
        if not last.strip():
            return 0
        try:
            orjson.loads(last)
            fh.write(b"\n")  # complete object without its newline: keep it
            return 0
        except orjson.JSONDecodeError:
            fh.truncate(keep)
            return size - keep


def existing_ids(path: Path) -> set[str]:
    """Ids already written to ``path`` (for resuming); none for a device or a FIFO."""
    done: set[str] = set()
    if not _regular(Path(path)):
        return done
    for _source, _line, raw in iter_lines(str(path)):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "id" in obj:
            done.add(str(obj["id"]))
    return done


def check_writable(path: Path) -> None:
    """Fail now, with the path and the fix, if ``path`` cannot become a file we write: before
    any work, not after it. Missing folders are fine (they are created); a file in their place
    is not."""
    path = Path(path)
    if path.is_dir():
        raise TmcliError(f"{path} is a folder", hint="give a file name, e.g. -o out/outputs.jsonl")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TmcliError(f"cannot create {path}: {parent} is not a folder", hint="check the path")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise TmcliError(f"cannot write {path}: permission denied",
                         hint="check the permissions, or write elsewhere with -o")


class RecordWriter:
    """Appends one JSON object per line and flushes+fsyncs each batch, so a crash loses at most
    the batch in flight and never leaves a corrupt file behind after `repair_tail`.

    The file (and its folder) is created with the first record, so a run that fails before it
    has one (a model that cannot load) leaves nothing behind. The file is locked from then (from
    the start if it exists) until `close`; ids already in it when the lock is taken are not
    written again, so two runs that planned the same work before either wrote still add no
    duplicate. Write errors (a full disk) become one line naming the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None
        self._ids: set[str] = set()
        check_writable(self.path)
        if self.path.exists():
            self._open()  # a second writer fails here, before any work

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab")
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        _lock(fh, self.path)
        _HELD.add(_key(self.path))
        self._fh = fh
        repair_tail(self.path)
        self._ids = existing_ids(self.path)

    def write(self, records: list[dict]) -> int:
        """Append ``records`` (those whose id is not in the file yet); returns how many."""
        if not records:
            return 0
        if self._fh is None:
            self._open()
        records = [r for r in records if "id" not in r or str(r["id"]) not in self._ids]
        try:
            self._fh.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            self._fh.flush()
            if _regular(self.path):
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        self._ids.update(str(r["id"]) for r in records if "id" in r)
        return len(records)

    def close(self) -> None:
        if self._fh is not None:
            _HELD.discard(_key(self.path))
            try:
                self._fh.close()
            except OSError:  # what could not be written was reported by write()
                pass
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
