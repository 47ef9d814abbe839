"""What every reader shares: the `Record` it produces and the checks on id lists.

A reader turns one decoded JSON object (a JSONL line, or one row of a Parquet/Arrow table) into
records: (id, generated ids, prompt ids, metadata). Readers never load a tokenizer; a reader whose
format carries tokens as strings (OpenAI logprobs) leaves them in ``logprob_tokens`` for the
analysis to map with the record's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmcli.errors import InvalidRecord

DEFAULT_PROMPT_FIELD = "prompt_token_ids"


@dataclass
class Record:
    """One completion read from a file, before re-encoding.

    ``line`` is the input line (JSONL) or the 1-based row (Parquet/Arrow) it came from; one line
    can hold several completions (n > 1), which `tmcli filter` keeps or drops together.
    """

    source: str
    line: int
    id: str
    token_ids: list[int] | None
    prompt_ids: list[int] | None
    meta: dict = field(default_factory=dict)
    # OpenAI-style logprob tokens (bytes or strings) still to be mapped to ids
    logprob_tokens: list | None = None


@dataclass(frozen=True)
class Fields:
    """Field names the user chose (``--ids-field``, ``--prompt-ids-field``); None = defaults."""

    ids: str | None = None
    prompt_ids: str | None = None

    @property
    def prompt_name(self) -> str:
        return self.prompt_ids or DEFAULT_PROMPT_FIELD


def id_list(value, source: str, line: int, name: str) -> list[int]:
    """``value`` as a list of integer ids, else a one-line error naming the field."""
    if not isinstance(value, list):
        raise InvalidRecord(source, line, f"'{name}' must be a list of integer token ids")
    if set(map(type, value)) - {int}:  # bool is not an id, and floats are not either
        v = next(v for v in value if type(v) is not int)
        raise InvalidRecord(source, line, f"'{name}' holds {v!r}, not an integer token id",
                            hint="token ids must be integers")
    return value


def prompt_ids(obj: dict, fields: Fields, source: str, line: int) -> list[int] | None:
    """The record's prompt ids (top-level field), or None when it has none."""
    value = obj.get(fields.prompt_name)
    if value is None:
        if fields.prompt_ids and fields.prompt_ids not in obj:
            raise InvalidRecord(source, line, f"no '{fields.prompt_ids}' field",
                                hint="check --prompt-ids-field against the file's field names")
        return None
    return id_list(value, source, line, fields.prompt_name)


def meta_of(obj: dict, *skip: str) -> dict:
    """Everything but the bulky id fields: model, tokenizer, temperature, prompt text..."""
    drop = {"token_ids", DEFAULT_PROMPT_FIELD, "outputs", "choices", "output_ids", *skip}
    return {k: v for k, v in obj.items() if k not in drop}


def record_id(obj: dict, line: int) -> str:
    return str(obj.get("id", obj.get("request_id", f"line{line}")))


def per_item(obj: dict, key: str, source: str, line: int, make) -> list[Record]:
    """One record per item of ``obj[key]`` (vLLM ``outputs``, OpenAI ``choices``): ``make(k,
    item)`` gives (ids, prompt ids, metadata, logprob tokens); ids are ``id`` or ``id/index``."""
    rid = record_id(obj, line)
    items = obj[key]
    return [Record(source, line, sub_id(rid, len(items), item, k), *make(k, item))
            for k, item in enumerate(items)]


def sub_id(rid: str, count: int, item: dict, k: int) -> str:
    """One id per completion: the response id alone, or ``id/index`` when it holds several."""
    return rid if count == 1 else f"{rid}/{item.get('index', k) if isinstance(item, dict) else k}"
