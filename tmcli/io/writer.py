"""Appending records safely: one writer per output file (an exclusive lock from the moment it
exists), records fsynced per batch, a line torn by a crash repaired, and the ids already written
read back so that a rerun resumes.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

import orjson

from tmcli.errors import TmcliError, from_os_error
from tmcli.io.input_files import fcntl, iter_lines
from tmcli.io.outputs import busy_error, other_writer, refuse_special

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
                         "or write to another file") from None
    except OSError as exc:  # a file system without locks (some network mounts): go on unlocked
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            fh.close()
            raise


def _not_jsonl(path: Path, why: str) -> TmcliError:
    return TmcliError(f"{path} is not a JSONL file of records ({why}); tmcli appends records "
                      "only to its own JSONL, and never cuts or rewrites another file",
                      hint="write to another file with -o")


def check_jsonl(path: Path) -> None:
    """Refuse ``path`` when its first bytes say it is not plain JSONL: compressed data or a
    table (`existing_ids` and `repair_tail` check its lines)."""
    from tmcli.io.input_files import GZIP_MAGIC, ZSTD_MAGIC
    from tmcli.io.readers.table import table_kind

    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith((GZIP_MAGIC, ZSTD_MAGIC)) or table_kind(head):
        what = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" \
            if head.startswith(ZSTD_MAGIC) else table_kind(head)
        raise _not_jsonl(path, f"it is {what} data")


def repair_tail(path: Path) -> int:
    """Cut a last line left incomplete by a crash; returns the bytes removed. Only a torn JSON
    object is cut (a last line that starts like one and does not parse); a file whose last line
    is anything else is refused, never cut.

    Takes the output lock for the repair (unless this process holds it), so it never cuts a
    line that another writer is still appending."""
    path = Path(path)
    if not _regular(path) or path.stat().st_size == 0:
        return 0
    check_jsonl(path)
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
            if not last.lstrip().startswith(b"{"):
                raise _not_jsonl(path, "its last line is not a JSON object") from None
            fh.truncate(keep)
            return size - keep


def existing_ids(path: Path) -> set[str]:
    """Ids already written to ``path`` (for resuming); none for a missing file. A file that is
    not tmcli's JSONL (a line that is not a JSON object, compressed data, a table) is refused:
    it is not one to append records to."""
    done: set[str] = set()
    path = Path(path)
    if not path.exists():
        return done
    refuse_special(path)
    check_jsonl(path)
    for _source, line, raw in iter_lines(str(path), keep_ends=True):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if not raw.endswith(b"\n") and raw.lstrip().startswith(b"{"):
                continue  # the last line, cut by a crash: repaired before the next write
            raise _not_jsonl(path, f"line {line} is not JSON") from None
        if not isinstance(obj, dict):
            raise _not_jsonl(path, f"line {line} is not a JSON object")
        rid = obj.get("id")
        if rid is not None:
            done.add(str(rid))
    return done


class RecordWriter:
    """Appends one JSON object per line and flushes+fsyncs each batch, so a crash loses at most
    the batch in flight and never leaves a corrupt file behind after `repair_tail`.

    The file (and its folder) is created with the first record, so a run that fails before it
    has one (a model that cannot load) leaves nothing behind; an existing file is locked from
    the start (a second writer fails at once, before any work) and is not changed before the
    first record is written: only then is a line torn by a crash cut. Ids already in it when
    the lock is taken are not written again, so two runs that planned the same work before
    either wrote still add no duplicate. Only a regular JSONL file of records is appended to;
    write errors (a full disk) become one line naming the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh: BinaryIO | None = None
        self._ids: set[str] = set()
        self._repaired = False
        refuse_special(self.path)
        if self.path.exists():
            self._open()  # a second writer fails here, before any work

    def _open(self) -> None:
        refuse_special(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab")
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        _lock(fh, self.path)
        if other_writer(self.path, check_target=False):  # a command replacing it (filter, analyze -o) is at work
            fh.close()
            raise busy_error(self.path)
        _HELD.add(_key(self.path))
        self._fh = fh
        try:
            self._ids = existing_ids(self.path)
        except BaseException:
            self.close()
            raise

    @property
    def ids(self) -> set[str]:
        """The ids in the file (when it was opened) and those written since."""
        return self._ids

    def write(self, records: list[dict]) -> int:
        """Append ``records`` (those whose id is not in the file yet); returns how many."""
        if not records:
            return 0
        if self._fh is None:
            self._open()
        fh = self._fh
        assert fh is not None  # _open set it or raised
        if not self._repaired:  # the first write: now the run has something to add
            repair_tail(self.path)
            self._repaired = True
        records = [r for r in records if r.get("id") is None or str(r["id"]) not in self._ids]
        try:
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            fh.flush()
            if _regular(self.path):
                os.fsync(fh.fileno())
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        self._ids.update(str(r["id"]) for r in records if r.get("id") is not None)
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
