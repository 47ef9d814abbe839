"""vLLM offline outputs (`LLM.generate` RequestOutput as JSON): ``prompt_token_ids`` and
``outputs[].token_ids``, one completion per output."""

from __future__ import annotations

from tmcli.errors import InvalidRecord
from tmcli.readers.base import Fields, Record, id_list, meta_of, prompt_ids, record_id, sub_id

NAME = "vllm-offline"


def matches(obj: dict, fields: Fields) -> bool:
    return isinstance(obj.get("outputs"), list)


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    rid = record_id(obj, line)
    prompt = prompt_ids(obj, fields, source, line)
    outputs = obj["outputs"]
    recs = []
    for k, out in enumerate(outputs):
        if not isinstance(out, dict) or "token_ids" not in out:
            raise InvalidRecord(source, line, f"outputs[{k}] has no 'token_ids'")
        ids = id_list(out["token_ids"], source, line, f"outputs[{k}].token_ids")
        meta = meta_of(obj, fields.prompt_name)
        if "text" in out:
            meta["completion"] = out["text"]
        if out.get("finish_reason") is not None:
            meta["finish_reason"] = out["finish_reason"]
        recs.append(Record(source, line, sub_id(rid, len(outputs), out, k), ids, prompt, meta))
    return recs
