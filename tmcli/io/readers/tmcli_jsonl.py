"""tmcli's own records (``token_ids`` + ``prompt_token_ids`` + metadata), and any flat record
whose ids field is named with ``--ids-field`` (rollout tables, custom JSONL)."""

from __future__ import annotations

from tmcli.errors import InvalidRecord
from tmcli.io.readers.base import Fields, Record, id_list, meta_of, prompt_ids, record_id

NAME = "tmcli"


def matches(obj: dict, fields: Fields) -> bool:
    return bool(fields.ids) or "token_ids" in obj


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    name = fields.ids or "token_ids"
    if name not in obj:
        raise InvalidRecord(source, line, f"no '{name}' field",
                            hint="check --ids-field against the file's field names")
    ids = id_list(obj[name], source, line, name)
    prompt = prompt_ids(obj, fields, source, line)
    rid, given = record_id(obj, line)
    return [Record(source, line, rid, ids, prompt, meta_of(obj, name, fields.prompt_name),
                   id_given=given)]
