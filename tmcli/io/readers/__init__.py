"""Readers by name: one small reader per input format, detected in one place (`detect`).

Each reader module has ``NAME``, ``matches(obj, fields)`` and ``read(obj, source, line, fields)``
turning one JSON object (a JSONL line, or one Parquet/Arrow row) into `Record`s. `READERS` is
tried in order; the first that matches reads the object. The file level (lines, compression,
Parquet/Arrow tables) lives in `tmcli.io.records`, the single door for input.

- ``trajectory``: multi-turn trajectories, token-in/token-out (``messages`` + ``prompt_token_ids``
  + ``token_ids`` [+ ``response_mask``]): tmcli's and vLLM's
- ``verl``: verl's and SkyRL's trajectories (``messages`` + ``prompt_ids`` + ``response_ids`` +
  ``response_mask``/``loss_mask``)
- ``tmcli``: tmcli's records, and any flat record with ``--ids-field`` (rollout tables)
- ``sglang``: SGLang ``/generate`` (``output_ids`` + ``meta_info``)
- ``vllm-offline``: vLLM ``RequestOutput`` (``outputs[].token_ids``)
- ``vllm-server``: vLLM's OpenAI server with ``return_token_ids`` (``choices[].token_ids``)
- ``openai``: OpenAI-compatible logprobs (token strings/bytes, or vLLM's ``token_id:N``)
"""

from __future__ import annotations

from tmcli.errors import InvalidRecord
from tmcli.io.readers import (
    openai,
    sglang,
    tmcli_jsonl,
    trajectory,
    verl,
    vllm_offline,
    vllm_server,
)
from tmcli.io.readers.base import Fields, Record, Trajectory

READERS = {m.NAME: m for m in (trajectory, verl, tmcli_jsonl, sglang, vllm_offline, vllm_server,
                               openai)}

__all__ = ["READERS", "Fields", "Record", "Trajectory", "detect", "parse_object"]


def detect(obj: dict, fields: Fields) -> str | None:
    """The name of the first reader that reads ``obj``, or None."""
    return next((name for name, m in READERS.items() if m.matches(obj, fields)), None)


def parse_object(obj, source: str, line: int, fields: Fields) -> list[Record]:
    """The records in one decoded JSON value: an object, or a list of objects (SGLang batches)."""
    if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
        recs = []
        for k, item in enumerate(obj):
            for rec in parse_object(item, source, line, fields):
                if rec.id == f"line{line}":  # no id of its own: one per list item
                    rec.id = f"line{line}/{k}"
                recs.append(rec)
        return recs
    if not isinstance(obj, dict):
        raise InvalidRecord(source, line, "expected a JSON object", hint="one object per line")
    name = detect(obj, fields)
    if name is None:
        raise InvalidRecord(
            source, line, "no token ids found (looked for 'token_ids', 'output_ids', "
            "'outputs[].token_ids', 'choices[].token_ids', 'choices[].logprobs')",
            hint="name the ids field with --ids-field",
        )
    return READERS[name].read(obj, source, line, fields)
