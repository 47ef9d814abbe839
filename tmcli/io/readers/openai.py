"""OpenAI-compatible responses with logprobs: ``choices[].logprobs`` carries the sampled tokens
as strings or bytes, not ids.

Chat completions give ``logprobs.content[]`` items (``token``, ``bytes``); legacy completions
give ``logprobs.tokens``. vLLM's ``return_tokens_as_token_ids`` writes each token as
``token_id:N`` (and then ``bytes`` spells that string, so the string wins); older vLLM wrote
``bytes:\\xNN`` for tokens that are not valid UTF-8 alone. The strings are mapped to ids by
`token_ids_from_logprobs` with the record's own tokenizer, which the analysis picks per record.
"""

from __future__ import annotations

from tmcli.errors import InvalidRecord
from tmcli.io.readers.base import Fields, Record, per_item, prompt_ids
from tmcli.io.readers.vllm_server import choice_meta

NAME = "openai"
TOKEN_ID = "token_id:"


def matches(obj: dict, fields: Fields) -> bool:
    return isinstance(obj.get("choices"), list)


def _tokens(choice, source: str, line: int, k: int) -> list:
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(lp, dict):
        raise InvalidRecord(source, line, f"choices[{k}] has neither token_ids nor logprobs",
                            hint="request the completion with return_token_ids (vLLM) or "
                            "logprobs enabled")
    if isinstance(lp.get("content"), list):  # chat completions: token + bytes
        out: list[str | bytes | None] = []
        for item in lp["content"]:
            if not isinstance(item, dict):
                raise InvalidRecord(source, line, f"choices[{k}].logprobs.content holds "
                                    f"{type(item).__name__}, not a token object")
            token, raw = item.get("token"), item.get("bytes")
            if isinstance(token, str) and token.startswith(TOKEN_ID):
                out.append(token)
            elif isinstance(raw, list):
                try:
                    out.append(bytes(raw))
                except (TypeError, ValueError):
                    raise InvalidRecord(source, line, f"choices[{k}].logprobs.content has bytes "
                                        "that are not 0-255 integers") from None
            else:
                out.append(token)
        return out
    if isinstance(lp.get("tokens"), list):  # legacy completions: token strings
        return list(lp["tokens"])
    raise InvalidRecord(source, line, f"choices[{k}].logprobs has neither 'content' nor 'tokens'")


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    prompt = prompt_ids(obj, fields, source, line)
    return per_item(obj, "choices", source, line, lambda k, ch: (
        None, prompt, choice_meta(obj, ch, fields), _tokens(ch, source, line, k)))


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _token_bytes(tok) -> bytes | None:
    if isinstance(tok, str) and tok.startswith("bytes:"):
        try:
            return tok[6:].encode("latin-1").decode("unicode_escape").encode("latin-1")
        except (UnicodeError, ValueError):
            return None
    if isinstance(tok, str):
        return tok.encode("utf-8", errors="surrogatepass")
    if isinstance(tok, (bytes, bytearray)):
        return bytes(tok)
    return None


def token_ids_from_logprobs(rec: Record, vocab, spec: str) -> list[int]:
    """Map a record's logprob tokens (``token_id:N``, bytes, strings, ``bytes:\\xNN``) to ids
    of ``vocab`` (a `tmcli.measure.token_bytes.Vocab`: its byte spelling -> id table)."""
    table = vocab.bytes_to_id()
    ids = []
    for k, tok in enumerate(rec.logprob_tokens or []):
        if isinstance(tok, str) and tok.startswith(TOKEN_ID) and _is_number(tok[len(TOKEN_ID):]):
            ids.append(int(tok[len(TOKEN_ID):]))
            continue
        data = _token_bytes(tok)
        idx = table.get(data) if data is not None else None
        if idx is None:
            raise InvalidRecord(rec.source, rec.line,
                                f"logprob token {k} ({tok!r}) is not a token of '{spec}'",
                                hint="pass the tokenizer that produced it with --tokenizer, or "
                                "ask vLLM for ids (return_token_ids or return_tokens_as_token_ids)")
        ids.append(idx)
    return ids
