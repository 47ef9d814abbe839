"""Opening any input for reading: plain, gzip or zstd JSONL read line by line with a bounded
buffer (a line over `MAX_LINE_BYTES` is reported as file:line without being read whole), or a
Parquet/Arrow table, from a path or ``-`` (stdin), with the format sniffed from the first bytes.
"""

from __future__ import annotations

import io
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from tmcli.errors import InvalidRecord, TmcliError
from tmcli.io.readers.table import table_kind

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
        self.compression: str | None = None
        self.stream: io.BufferedIOBase = self._raw  # gzip and zstd readers are ones too
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
