"""vLLM's OpenAI-compatible server with ``return_token_ids`` (vLLM >= 0.10.2).

Completions carry ``choices[].token_ids`` and ``choices[].prompt_token_ids``; chat completions
carry ``choices[].token_ids`` and a top-level ``prompt_token_ids`` (vLLM's
``entrypoints/openai/{completion,chat_completion}/protocol.py``). vLLM writes ``token_ids: null``
when the request did not ask for them; such a response is read by the logprobs reader instead.
"""

from __future__ import annotations

from tmcli.io.readers.base import Fields, Record, id_list, meta_of, per_item, prompt_ids

NAME = "vllm-server"


def matches(obj: dict, fields: Fields) -> bool:
    choices = obj.get("choices")
    return (isinstance(choices, list) and bool(choices)
            and all(isinstance(c, dict) and isinstance(c.get("token_ids"), list) for c in choices))


def choice_meta(obj: dict, choice: dict, fields: Fields) -> dict:
    """The response's metadata plus this choice's text and finish reason."""
    meta = meta_of(obj, fields.prompt_name)
    text = choice.get("text")
    if text is None and isinstance(choice.get("message"), dict):
        text = choice["message"].get("content")
    if text is not None:
        meta["completion"] = text
    if choice.get("finish_reason") is not None:
        meta["finish_reason"] = choice["finish_reason"]
    return meta


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    top_prompt = prompt_ids(obj, fields, source, line) if fields.prompt_name in obj else None
    name = fields.prompt_name

    def make(k: int, ch: dict) -> tuple:
        prompt = top_prompt
        if isinstance(ch.get(name), list):  # completions: per choice
            prompt = id_list(ch[name], source, line, f"choices[{k}].{name}")
        ids = id_list(ch["token_ids"], source, line, f"choices[{k}].token_ids")
        return ids, prompt, choice_meta(obj, ch, fields), None

    return per_item(obj, "choices", source, line, make)
