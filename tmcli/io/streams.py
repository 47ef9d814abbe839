"""The raw byte streams under an input: bytes already read put back in front (`Prefixed`), a
pipe, FIFO or terminal waited on in short steps so that Ctrl-C is always seen (`Waiting`: a
blocked read would miss a signal handled by another thread), and zstd frames decompressed with
truncation detected (`ZstdReader`)."""

from __future__ import annotations

import io
import os
import sys
import time

# How long one wait on a pipe, FIFO or terminal lasts before Python looks at signals again.
_POLL_SECONDS = 0.2
# After this long with nothing from a FIFO, say on stderr what is being waited for (once).
_NOTICE_SECONDS = 2.0


class Prefixed(io.RawIOBase):
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


class Waiting(io.RawIOBase):
    """A pipe, FIFO, terminal or device read without blocking the main thread for more than
    `_POLL_SECONDS` at a time (so a Ctrl-C is always seen)."""

    def __init__(self, fd: int, name: str, *, closefd: bool, fifo: bool):
        import select

        self._fd, self._name, self._closefd, self._fifo = fd, name, closefd, fifo
        self._poll = None
        if hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN | select.POLLPRI)
        self._started = time.monotonic()
        self._noticed = self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._eof:  # a terminal's end (Ctrl-D) comes once: it is kept
            if self._poll is not None and not self._poll.poll(int(_POLL_SECONDS * 1000)):
                self._notice()
                continue  # back in Python between waits: a pending Ctrl-C is raised here
            try:
                n = os.readv(self._fd, [buf])
            except BlockingIOError:
                continue
            self._eof = n == 0
            return n
        return 0

    def _notice(self) -> None:
        if self._fifo and not self._noticed \
                and time.monotonic() - self._started > _NOTICE_SECONDS:
            self._noticed = True
            print(f"waiting for {self._name}: a FIFO nothing has been written to yet "
                  "(Ctrl-C to stop)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closefd and not self.closed:
            os.close(self._fd)
        super().close()


class ZstdReader(io.RawIOBase):
    """zstd frames decompressed as they stream (several frames one after another, as `zstd`
    and `cat a.zst b.zst` write them), fed in small steps so that memory follows the output
    read, not the compression ratio. A stream that ends inside a frame raises EOFError: a file
    cut short is refused, never measured on the part that survived."""

    _STEP = 1 << 14

    def __init__(self, raw):
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._dec = self._new()
        self._in_frame = False
        self._out = b""

    def readable(self) -> bool:
        return True

    def _feed(self, data: bytes) -> None:
        self._in_frame = True
        self._out += self._dec.decompress(data)
        while self._dec.eof:  # a frame ended: the bytes after it start the next one
            rest = self._dec.unused_data
            self._dec, self._in_frame = self._new(), False
            if not rest:
                break
            self._in_frame = True
            self._out += self._dec.decompress(rest)

    def readinto(self, buf) -> int:
        while not self._out:
            chunk = self._raw.read(self._STEP)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd data ends in the middle of a frame")
                return 0
            self._feed(chunk)
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()
