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
        self._fh: BinaryIO | None = None
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
        fh = self._fh
        assert fh is not None  # _open set it or raised
        records = [r for r in records if "id" not in r or str(r["id"]) not in self._ids]
        try:
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            fh.flush()
            if _regular(self.path):
                os.fsync(fh.fileno())
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
