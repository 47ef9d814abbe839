"""SGLang's native ``/generate`` output: ``text``, ``output_ids`` and ``meta_info`` (``id``,
``finish_reason``, ``prompt_tokens``, ``completion_tokens``...), plus ``prompt_token_ids`` where
the server returns them (token-in/token-out mode). A batched request (a list of prompts, or
``n`` > 1) returns a JSON list of such objects; each is one record (see `readers.parse_object`).
"""

from __future__ import annotations

from tmcli.io.readers.base import Fields, Record, id_list, meta_of, prompt_ids

NAME = "sglang"


def matches(obj: dict, fields: Fields) -> bool:
    return "output_ids" in obj and ("meta_info" in obj or "text" in obj)


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    ids = id_list(obj["output_ids"], source, line, "output_ids")
    info: dict = obj["meta_info"] if isinstance(obj.get("meta_info"), dict) else {}
    meta = meta_of(obj, "meta_info", "text", fields.prompt_name)
    if obj.get("text") is not None:
        meta["completion"] = obj["text"]
    finish = info.get("finish_reason")
    if isinstance(finish, dict):  # {"type": "length", "length": 16} or {"type": "stop", ...}
        finish = finish.get("type")
    if finish is not None:
        meta["finish_reason"] = finish
    for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "weight_version"):
        if key in info:
            meta[key] = info[key]
    rid = str(obj.get("id", info.get("id", f"line{line}")))
    return [Record(source, line, rid, ids, prompt_ids(obj, fields, source, line), meta)]
