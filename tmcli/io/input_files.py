"""Opening any input for reading, once: plain, gzip or zstd JSONL read line by line with a
bounded buffer (a line over `MAX_LINE_BYTES` is reported as file:line without being read whole),
or a Parquet/Arrow table, from a path or ``-`` (stdin), with the format sniffed from the first
bytes.

A pipe, a FIFO or a terminal is opened once and its first bytes are kept after sniffing them
(nothing read is lost), and it is waited on in short steps, so that Ctrl-C stops the command
even while nothing arrives (a blocked read would not see it: the signal can be handled by
another thread). A compressed stream that ends before its end marker is refused as truncated.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tmcli.errors import InvalidRecord, TmcliError, from_os_error
from tmcli.io.readers.table import table_kind
from tmcli.io.streams import Prefixed, Waiting, ZstdReader

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


MAX_LINE_BYTES = 64 * 1024 * 1024


GZIP_MAGIC = b"\x1f\x8b"


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


BOM = b"\xef\xbb\xbf"


_SKIP_CHUNK = 1 << 20


JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow-file",
                  ".feather": "arrow-file", ".ipc": "arrow-file", ".arrows": "arrow-stream"}

def input_stat(path: str) -> os.stat_result:
    """``stat`` of an input path (symbolic links followed), or the one-line error: no such file,
    a symbolic link loop, a directory, permission denied."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TmcliError(f"no such file: {path}", hint="check the path, or use - for stdin") \
            from None
    except OSError as exc:
        raise from_os_error(exc, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise TmcliError(f"{path} is a directory", hint="give a JSONL, Parquet or Arrow file")
    return st


def is_regular(path: str) -> bool:
    """Whether ``path`` is a regular file (which can be read twice and sniffed freely), as
    opposed to stdin, a FIFO, a pipe or a device, which are read once."""
    if path == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _open_raw(path: str):
    """(binary stream, display name, regular file?) for ``path``, opened once; a FIFO is
    opened without waiting for its writer (the wait happens in `Waiting`, interruptibly)."""
    if path == "-":
        stdin = sys.stdin.buffer
        try:
            fd = stdin.fileno()
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except (OSError, ValueError, io.UnsupportedOperation):  # a test's in-memory stdin
            return stdin, "<stdin>", False
        if regular:  # `< file`: stdin is a file, read as one (never closed: it is stdin)
            return stdin, "<stdin>", False
        return Waiting(fd, "<stdin>", closefd=False, fifo=False), "<stdin>", False
    st = input_stat(path)
    try:
        if stat.S_ISREG(st.st_mode):
            return open(path, "rb"), path, True
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise from_os_error(exc, path) from None
    if fcntl is not None:  # waits are done by polling; reads after it need not be non-blocking
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return Waiting(fd, path, closefd=True, fifo=stat.S_ISFIFO(st.st_mode)), path, False


def input_format(path: str) -> str:
    """'jsonl' (plain or compressed), 'parquet', 'arrow-file' or 'arrow-stream' of a regular
    file: by its magic bytes, else its suffix. A stream (``-``, a FIFO, a device) can be read
    only once, so it is not sniffed here: 'stream' (`Input` sniffs it as it opens it)."""
    if not is_regular(path):
        input_stat(path) if path != "-" else None  # a missing path is still an error
        return "stream"
    with _open_raw(path)[0] as fh:
        kind = table_kind(fh.read(8))
    return kind or TABLE_SUFFIXES.get(Path(path).suffix.lower()) or "jsonl"


def is_records_input(path: str) -> bool:
    """Whether ``path`` names input the readers take: stdin or another stream, a JSONL name
    (compressed or not), a table name, or a file whose magic bytes say gzip, zstd, Parquet or
    Arrow."""
    name = Path(path).name.lower()
    for ext in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(ext)
    if path == "-" or Path(name).suffix in JSONL_SUFFIXES or Path(name).suffix in TABLE_SUFFIXES:
        return True
    if not is_regular(path):
        input_stat(path)  # missing, a loop or a directory: say so, not "unknown format"
        return True  # a FIFO, /dev/stdin, a process substitution: sniffed once opened
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return bool(table_kind(head)) or head.startswith((GZIP_MAGIC, ZSTD_MAGIC))


class Input:
    """An opened input: ``kind`` ('jsonl', 'parquet', 'arrow-file', 'arrow-stream'), and for
    JSONL ``stream``, its decompressed bytes (``compression``: 'gzip', 'zstd' or None, told by
    magic bytes, so a piped or misnamed file is read right). A table on a stream is read whole
    into ``table`` (its readers need to seek); a table file is read from its path.

    ``name`` replaces the path in messages (`tmcli filter` reads a copy of its stdin)."""

    def __init__(self, path: str, name: str | None = None):
        raw, source, regular = _open_raw(path)
        self.source = name or source
        self.path = path
        self.table: bytes | None = None
        head = b""
        try:
            while len(head) < 8:  # a pipe may hand over fewer bytes per read
                more = raw.read(8 - len(head))
                if not more:
                    break
                head += more
        except BaseException as exc:
            raw.close()
            if isinstance(exc, OSError):
                raise from_os_error(exc, self.source) from None
            raise
        self._raw = io.BufferedReader(Prefixed(head, raw), buffer_size=1 << 16)
        self.compression: str | None = None
        self.stream: io.BufferedIOBase = self._raw  # gzip and zstd readers are ones too
        self.kind = table_kind(head) or "jsonl"
        if regular and self.kind == "jsonl" and not head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
            self.kind = TABLE_SUFFIXES.get(Path(path).suffix.lower(), "jsonl")
        if self.kind != "jsonl":
            if not regular:
                try:
                    self.table = self._raw.read()
                except OSError as exc:
                    self.close()
                    raise from_os_error(exc, self.source) from None
            self.close()
        elif head.startswith(GZIP_MAGIC):
            import gzip

            self.compression, self.stream = "gzip", gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif head.startswith(ZSTD_MAGIC):
            self.compression = "zstd"
            self.stream = io.BufferedReader(ZstdReader(self._raw), 1 << 20)

    @property
    def raw(self):
        """The input's bytes as they are (still compressed), from the first byte on."""
        return self._raw

    def close(self) -> None:
        if self.stream is not self._raw:
            self.stream.close()
        self._raw.close()


def open_input(path: str, name: str | None = None) -> Input:
    """The input ``path`` (``-`` for stdin) opened for reading, decompressed as it streams."""
    return Input(path, name)


def _read_error(handle: Input, exc: Exception) -> TmcliError:
    if isinstance(exc, OSError) and not handle.compression and exc.errno is not None:
        return from_os_error(exc, handle.source)
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


def iter_lines(path: str | Input, *, keep_ends: bool = False,
               errors: list | None = None) -> Iterator[tuple[str, int, bytes]]:
    """(source, line number, line) for each non-blank line; BOM and CRLF tolerated. ``path``
    may be an `Input` already opened (it is closed at the end).

    Lines are stripped, or kept byte for byte with ``keep_ends`` (for `tmcli filter`). No line
    is read past ``MAX_LINE_BYTES``: an over-long line raises `InvalidRecord`, or, when an
    ``errors`` list is given (``--skip-invalid``), is recorded there and skipped unread.
    """
    handle = path if isinstance(path, Input) else open_input(path)
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
                too_long = InvalidRecord(source, number, f"line is longer than the "
                                         f"{_limit_text(limit)} limit",
                                         hint="write one completion per line (JSONL), not one "
                                         "JSON document")
                if errors is None:
                    raise too_long
                errors.append(too_long)
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


def iter_json(path: str) -> Iterator[tuple[str, int, Any]]:
    """(source, line number, parsed JSON) for each non-blank line (`iter_lines`); a line that
    is not JSON stops with that file and line."""
    import orjson

    for source, line, raw in iter_lines(path):
        try:
            yield source, line, orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TmcliError(f"{source}:{line}: not valid JSON",
                             hint="fix or delete that line") from None


def read_text(path: str) -> str:
    """The whole of a UTF-8 text file (or stream, ``-``), read once; a file that is not UTF-8
    (a Windows code page, a binary) is refused with where it stops being UTF-8."""
    raw, source, _regular = _open_raw(path)
    try:
        data = raw.read() if hasattr(raw, "read") else b""
    except OSError as exc:
        raise from_os_error(exc, source) from None
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TmcliError(f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})",
                         hint="save the file as UTF-8") from None
