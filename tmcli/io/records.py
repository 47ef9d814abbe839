"""Reading records: the single door for input. `read_records(path)` streams `Record`s from any
supported input (`tmcli.io.input_files` opens it, `tmcli.io.readers` detects each line's
format).
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from tmcli.errors import InvalidRecord, one_line
from tmcli.io.input_files import iter_lines, open_input
from tmcli.io.readers import parse_object
from tmcli.io.readers.base import Fields, Record
from tmcli.io.readers.table import iter_rows


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


def iter_objects(path: str, *, errors: list | None = None,
                 name: str | None = None) -> Iterator[tuple[str, int, object]]:
    """(source, line or 1-based row, JSON value or raw line bytes) of every line or table row;
    over-long lines go to ``errors`` when given (see `iter_lines`). The input is opened once
    (a pipe or FIFO loses nothing to the format sniff); ``name`` replaces the path in messages."""
    handle = open_input(path, name)
    if handle.kind == "jsonl":
        yield from iter_lines(handle, errors=errors)
        return
    source = handle.table if handle.table is not None else path
    for row, obj in iter_rows(source, handle.kind, handle.source):
        yield handle.source, row, obj


def read_records(path: str, *, ids_field: str | None = None, prompt_ids_field: str | None = None,
                 skip_invalid: bool = False, errors: list | None = None,
                 counts: dict | None = None, name: str | None = None) -> Iterator[Record]:
    """Stream records from ``path``; invalid lines raise, or are skipped into ``errors``.

    ``counts["lines"]`` (when ``counts`` is given) receives the lines (or rows) read, blank lines
    aside, so a caller can show that every line was measured or skipped with its reason."""
    errors = [] if errors is None else errors
    counts = {} if counts is None else counts
    counts.setdefault("lines", 0)
    fields = Fields(ids_field, prompt_ids_field)
    before = len(errors)
    for source, line, item in iter_objects(path, errors=errors if skip_invalid else None,
                                           name=name):
        counts["lines"] += 1 + (len(errors) - before)  # over-long lines skipped unread
        before = len(errors)
        try:
            obj = _json(source, line, item) if isinstance(item, bytes) else item
            records = list(parse_object(obj, source, line, fields))
        except (InvalidRecord, ValueError, TypeError, KeyError, AttributeError) as exc:
            # a reader that fails on a line's shape fails on that line (it can be skipped)
            if not isinstance(exc, InvalidRecord):
                text = one_line(exc, 200, ellipsis=False)
                exc = InvalidRecord(source, line, f"unreadable record ({type(exc).__name__}: "
                                    f"{text})", hint="fix or drop the line")
            if not skip_invalid:
                raise exc from None
            errors.append(exc)
            before = len(errors)
            continue
        yield from records
    counts["lines"] += len(errors) - before
