"""Reading records: the single door for input. `read_records(path)` streams `Record`s from any
supported input (`tmcli.io.input_files` opens it, `tmcli.io.readers` detects each line's
format).
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from tmcli.errors import InvalidRecord, one_line
from tmcli.io.input_files import input_format, iter_lines
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
