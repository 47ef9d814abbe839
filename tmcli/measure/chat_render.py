"""A tokenizer with its chat template, as a trainer uses them: messages rendered by
transformers' own `apply_chat_template` and the text encoded as its ``tokenize=True`` encodes it
(special-token strings parsed, nothing added), and each id's text as the template writes it.
Built once per tokenizer (and template) and kept for the next call.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np

from tmcli.errors import TmcliError, one_line

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 16


class TrajectoryError(TmcliError):
    """A trajectory that cannot be checked (its record's fault: a mask, no sampled ids...)."""


class Renderer:
    """One tokenizer with a chat template: renders messages with transformers'
    `apply_chat_template` and encodes the text as its ``tokenize=True`` does. The transformers
    tokenizer and the encoder are built once per tokenizer, whatever the template."""

    def __init__(self, tokenizer, template: str, special_tokens: dict | None = None, *,
                 hf=None):
        key = ("hf", id(tokenizer), json.dumps(special_tokens or {}, sort_keys=True), id(hf))
        hit = _CACHE.get(key)
        if hit is None:
            from tmcli.sources.tokenizers import private_copy

            if hf is None:  # (it copies the tokenizer it is given)
                from transformers import PreTrainedTokenizerFast
                from transformers.utils import logging as hf_logging

                hf_logging.set_verbosity_error()
                hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **(special_tokens or {}))
            split = bool(getattr(hf, "split_special_tokens", False))
            encoder = tokenizer if tokenizer.encode_special_tokens == split \
                else private_copy(tokenizer, encode_special_tokens=split)  # (never changed)
            hit = (tokenizer, (hf, encoder))
            _remember(key, hit)
        self.hf, self.encoder = hit[1]
        self.template = template

    def render(self, messages: list, tools, kwargs: dict) -> str:
        try:
            return self.hf.apply_chat_template(messages, tools=tools, tokenize=False,
                                               chat_template=self.template, **kwargs)
        except Exception as exc:  # jinja's errors, or the template's raise_exception
            raise TrajectoryError(f"the chat template fails on these messages "
                                  f"({type(exc).__name__}: {one_line(exc, 160)})",
                                  hint="fix the messages (or pass the template they were "
                                  "sampled with: --chat-template FILE)") from None

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.encoder.encode_batch_fast(texts, add_special_tokens=False)]

    def offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Each rendered token's (start, end) byte offsets in ``text``, from the tokenizer's
        own character offsets (used when its ids do not spell the text byte for byte)."""
        enc = self.encoder.encode(text, add_special_tokens=False)
        byte_at = np.zeros(len(text) + 1, dtype=np.int64)
        byte_at[1:] = np.cumsum([len(ch.encode("utf-8", "surrogatepass")) for ch in text])
        spans = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2).clip(0, len(text))
        return byte_at[spans[:, 0]], byte_at[spans[:, 1]]


def spellings(vocab) -> tuple[list[bytes], np.ndarray]:
    """Each id's text as the template writes it: its bytes, a special token its content (ids the
    tokenizer lacks spell nothing); and the byte lengths. Built once per vocabulary."""
    key = id(vocab)
    hit = _CACHE.get(("spell", key))
    if hit is not None:
        return hit[1]
    table = list(vocab.token_bytes)
    for i in np.flatnonzero(vocab.special):
        table[i] = (vocab.original.id_to_token(int(i)) or "").encode("utf-8")
    lengths = np.fromiter(map(len, table), dtype=np.int64, count=len(table))
    _remember(("spell", key), (vocab, (table, lengths)))
    return table, lengths


def _remember(key, value) -> None:
    _CACHE[key] = value  # the object is kept, so its id cannot be reused
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def renderer_for(tokenizer, chat_template: str | None = None, *,
                 template_file: str | None = None) -> tuple[Renderer, object]:
    """The (cached) `Renderer` and vocabulary for an alias/path (its own template, unless
    ``chat_template`` (a template's text) or ``template_file`` names another), a transformers
    tokenizer (its own template) or a `tokenizers.Tokenizer` (with ``chat_template``)."""
    name = tokenizer if isinstance(tokenizer, str) else id(tokenizer)
    key = ("renderer", name, chat_template, template_file)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit[1]
    from tmcli.measure.rollout_check import reencoder_for

    vocab = reencoder_for(tokenizer).vocab
    if isinstance(tokenizer, str):
        from tmcli.sources import templates

        if chat_template is None:
            found = templates.chat_template(tokenizer, template_file)
            text, specials = found.text, found.special_tokens
        else:
            text, specials = chat_template, templates.special_tokens(tokenizer)
        renderer = Renderer(vocab.original, text, specials)
    elif hasattr(tokenizer, "apply_chat_template"):
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise TmcliError("this tokenizer has no chat template", hint="pass chat_template")
        renderer = Renderer(tokenizer.backend_tokenizer, template, hf=tokenizer)
    else:
        if not chat_template:
            raise TmcliError("a tokenizers.Tokenizer carries no chat template",
                             hint="pass chat_template (the template's text)")
        renderer = Renderer(tokenizer, chat_template)
    _remember(key, (tokenizer, (renderer, vocab)))
    return renderer, vocab
