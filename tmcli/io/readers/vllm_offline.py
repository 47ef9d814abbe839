"""vLLM offline outputs (`LLM.generate` RequestOutput as JSON): ``prompt_token_ids`` and
``outputs[].token_ids``, one completion per output."""

from __future__ import annotations

from tmcli.errors import InvalidRecord
from tmcli.io.readers.base import Fields, Record, id_list, meta_of, per_item, prompt_ids

NAME = "vllm-offline"


def matches(obj: dict, fields: Fields) -> bool:
    return isinstance(obj.get("outputs"), list)


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    prompt = prompt_ids(obj, fields, source, line)

    def make(k: int, out) -> tuple:
        if not isinstance(out, dict) or "token_ids" not in out:
            raise InvalidRecord(source, line, f"outputs[{k}] has no 'token_ids'")
        meta = meta_of(obj, fields.prompt_name)
        if "text" in out:
            meta["completion"] = out["text"]
        if out.get("finish_reason") is not None:
            meta["finish_reason"] = out["finish_reason"]
        ids = id_list(out["token_ids"], source, line, f"outputs[{k}].token_ids")
        return ids, prompt, meta, None

    return per_item(obj, "outputs", source, line, make)
