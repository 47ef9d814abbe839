"""The one error type for user mistakes, and the exit codes the CLI maps every failure to.

The CLI prints ``str(error)`` on one line and exits 2; library callers catch it like any exception.
Messages name the problem and the fix ("file.jsonl:12: ...; pass --skip-invalid to skip such lines").

Exit codes (a CI gate must be able to tell them apart):
  0  success
  1  `check`: a threshold failed (or `selftest` failed). Nothing else exits 1.
  2  a mistake the user can fix: bad option, bad input data, an OS error on a named path
     (missing, permission denied, disk full), out of memory
  70 an internal error, i.e. a bug in tmcli (EX_SOFTWARE of sysexits.h); `--debug` or
     TMCLI_DEBUG=1 prints the traceback
"""

from __future__ import annotations

import errno
import re

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


def one_line(exc: BaseException, limit: int = 300, *, ellipsis: bool = True) -> str:
    """An exception's text on one line (its type's name when it has none), cut to ``limit``
    characters (with "..." unless ``ellipsis`` is False)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + ("..." if ellipsis else "")


class TmcliError(Exception):
    """A mistake the user can fix: bad input data, a bad option, a missing file."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")

    def __reduce__(self):  # picklable as itself (Ray and process pools send errors back)
        return _rebuild, (type(self), (self.message,), {"hint": self.hint})


class InvalidRecord(TmcliError):
    """One line of an input file cannot be used. Carries where, so --skip-invalid can count it."""

    def __init__(self, source: str, line: int, message: str, *, hint: str | None = None):
        self.source = source
        self.line = line
        self.detail = message
        super().__init__(f"{source}:{line}: {message}", hint=hint)

    def __reduce__(self):
        return _rebuild, (type(self), (self.source, self.line, self.detail), {"hint": self.hint})


def _rebuild(cls, args: tuple, kwargs: dict) -> TmcliError:
    return cls(*args, **kwargs)


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check the permissions of the file and its folder",
    errno.EPERM: "check the permissions of the file and its folder",
    errno.EROFS: "write to a writable location",
    errno.ENOSPC: "free some disk space (or write elsewhere) and run the command again",
    errno.EDQUOT: "free some space under your quota and run the command again",
    errno.EFBIG: "the file is over a size limit; write elsewhere or raise the limit",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EIO: "the device reported an I/O error; check the disk or give another file",
}


def from_os_error(exc: OSError, path: str | None = None) -> TmcliError:
    """A one-line TmcliError naming the path and the fix for an OS error (errno-specific)."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc) or type(exc).__name__
    head = f"{where}: {reason}" if where is not None else reason
    return TmcliError(head, hint=_OS_HINTS.get(exc.errno or -1))


# Characters that would change what a terminal or a log shows: C0/C1 controls (ANSI/OSC escape
# sequences start with ESC), DEL, line and paragraph separators, and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``, ``\\n``), so data printed
    to a terminal or a CI log is seen as what it is and cannot move the cursor, recolour the
    screen or start a new (forged) line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
