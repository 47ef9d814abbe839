"""The one error type for user mistakes.

The CLI prints ``str(error)`` on one line and exits 2; library callers catch it like any exception.
Messages name the problem and the fix ("file.jsonl:12: ...; pass --skip-invalid to skip such lines").
"""

from __future__ import annotations


class TmcliError(Exception):
    """A mistake the user can fix: bad input data, a bad option, a missing file."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")


class InvalidRecord(TmcliError):
    """One line of an input file cannot be used. Carries where, so --skip-invalid can count it."""

    def __init__(self, source: str, line: int, message: str, *, hint: str | None = None):
        self.source = source
        self.line = line
        super().__init__(f"{source}:{line}: {message}", hint=hint)
