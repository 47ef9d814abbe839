"""What each token id spells, in bytes, and a canonical encoder that adds nothing of its own.

Decoding through a tokenizer's decoder loses information (U+FFFD for split multi-byte characters,
the SentencePiece decoder strips the leading space of the first token). tmcli instead reads every
token's exact bytes from the vocabulary and re-encodes those bytes with a copy of the tokenizer
whose prefix-space step is switched off, so a completion can be re-encoded out of context without
a spurious "▁" and text never becomes special tokens.

The canonical encoder is the tokenizer itself (its own normaliser, pre-tokenizer, added tokens and
model), in a private copy: setting ``encode_special_tokens`` on it can never change how another
part of tmcli (prompt encoding) uses the tokenizer, and nothing of the tokenizer is re-implemented.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field

import numpy as np
import orjson

from tmcli.errors import TmcliError

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by ByteLevel BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _walk(node, fn):
    """Apply fn to every dict node of a tokenizer.json component (Sequence-aware)."""
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, list):
        for value in node:
            _walk(value, fn)


def _types(node) -> set[str]:
    found: set[str] = set()
    _walk(node, lambda d: found.add(d["type"]) if isinstance(d.get("type"), str) else None)
    return found


@dataclass
class Vocab:
    """Per-id byte spellings of one tokenizer, plus its neutral canonical encoder."""

    family: str  # "byte-level" or "sentencepiece"
    token_bytes: list[bytes]
    lengths: np.ndarray  # byte length per id; specials get 1 (a placeholder in offset space)
    special: np.ndarray  # bool per id: control tokens never re-encoded as text
    known: np.ndarray  # bool per id: id exists in the vocabulary
    byte_ids: list[int | None]  # id that spells exactly one raw byte (byte fallback tokens)
    unk_id: int | None
    encoder: object = field(repr=False)  # tokenizers.Tokenizer, a private neutral copy
    original: object = field(repr=False)  # tokenizers.Tokenizer as loaded (never modified)
    rewrites: bool = False  # a normaliser may change the text (compare spellings of differences)

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def spell(self, ids) -> bytes:
        """The exact bytes ``ids`` spell (specials and ids the tokenizer lacks spell nothing)."""
        try:
            return b"".join(map(self.token_bytes.__getitem__, ids))
        except (IndexError, TypeError):
            size, table = self.size, self.token_bytes
            return b"".join(table[i] if 0 <= i < size else b"" for i in ids)

    def plain_bytes(self) -> list[bytes | None]:
        """Per id, its bytes if it is a text token, None if it is special or unknown: spelling
        through this table fails on any id that is not plain text, at no cost per id."""
        table = self.__dict__.get("_plain")
        if table is None:
            table = self.__dict__["_plain"] = [
                b if known and not special else None
                for b, known, special in zip(self.token_bytes, self.known.tolist(),
                                             self.special.tolist())]
        return table

    def piece(self, token_id: int) -> str:
        """A readable form of one token for display (bytes decoded with replacement)."""
        if not 0 <= token_id < self.size or not self.known[token_id]:
            return f"<unknown id {int(token_id)}>"
        if self.special[token_id]:
            return self.original.id_to_token(int(token_id)) or f"<{token_id}>"
        return self.token_bytes[token_id].decode("utf-8", errors="backslashreplace")

    def bytes_to_id(self) -> dict[bytes, int]:
        """Spelling -> id for mapping text tokens back to ids (regular tokens win over byte
        fallback tokens that spell the same byte)."""
        table = getattr(self, "_bytes_to_id", None)
        if table is None:
            table = {}
            fallback = {i for i in self.byte_ids if i is not None}
            regular = [i for i in range(self.size) if i not in fallback]
            for idx in [*regular, *sorted(fallback)]:
                if self.known[idx] and not self.special[idx]:
                    table.setdefault(self.token_bytes[idx], idx)
            self._bytes_to_id = table
        return table

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer's own canonical ids of each text (specials never parsed from text).
        ``encode_batch``, not ``encode_batch_fast``: with tokenizers 0.23 the one that also
        tracks offsets takes ~20% less CPU (measured: `benchmarks/bench_analyze.py` prints both)."""
        if not texts:
            return []
        return [e.ids for e in self.encoder.encode_batch(texts, add_special_tokens=False)]

    def study_tokenizer(self):
        """A private copy of the tokenizer as loaded, for the study script's own arithmetic
        (it parses special-token strings and adds the tokenizer's specials, as transformers'
        ``tokenizer(text)`` does)."""
        tok = getattr(self, "_study", None)
        if tok is None:
            from tmcli.sources.tokenizers import private_copy

            tok = self._study = private_copy(self.original, encode_special_tokens=False)
        return tok


def build_vocab(tokenizer) -> Vocab:
    """Read a `tokenizers.Tokenizer`'s vocabulary into byte spellings and make its neutral copy."""
    from tokenizers import Tokenizer

    spec = orjson.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    mtype = model.get("type")
    if mtype == "BPE":
        pieces = dict(model["vocab"])
    elif mtype == "Unigram":
        pieces = {p: i for i, (p, _score) in enumerate(model["vocab"])}
    else:
        raise TmcliError(
            f"tokenizer model type {mtype!r} is not supported",
            hint="tmcli supports BPE (byte-level or SentencePiece-style) and Unigram tokenizers",
        )
    components = [spec.get("pre_tokenizer"), spec.get("decoder"), spec.get("normalizer")]
    kinds = set().union(*(_types(c) for c in components))
    byte_level = "ByteLevel" in kinds
    byte_fallback = bool(model.get("byte_fallback")) or "ByteFallback" in kinds
    replacements: list[str] = []
    _walk(components, lambda d: replacements.append(d["replacement"])
          if d.get("type") == "Metaspace" and d.get("replacement") else None)
    replacement = replacements[0] if replacements else "▁"

    added = {a["id"]: a for a in spec.get("added_tokens") or []}
    size = max([*pieces.values(), *added.keys(), -1]) + 1
    token_bytes: list[bytes] = [b""] * size
    known = np.zeros(size, dtype=bool)
    special = np.zeros(size, dtype=bool)
    byte_ids: list[int | None] = [None] * 256

    for piece, idx in pieces.items():
        known[idx] = True
        if byte_level:
            try:
                token_bytes[idx] = bytes(_UNICODE_TO_BYTE[ch] for ch in piece)
            except KeyError:
                token_bytes[idx] = piece.encode("utf-8")
            if len(token_bytes[idx]) == 1:
                byte_ids[token_bytes[idx][0]] = idx
        else:
            m = _BYTE_FALLBACK.match(piece) if byte_fallback else None
            if m:
                token_bytes[idx] = bytes([int(m.group(1), 16)])
                byte_ids[int(m.group(1), 16)] = idx
            else:
                token_bytes[idx] = piece.replace(replacement, " ").encode("utf-8")
    for idx, tok in added.items():
        known[idx] = True
        if tok.get("special"):
            special[idx] = True
            token_bytes[idx] = b""
        elif idx not in pieces:
            content = tok["content"]
            token_bytes[idx] = (
                content.replace(replacement, " ") if not byte_level else content
            ).encode("utf-8")

    unk = model.get("unk_token")
    unk_id = pieces.get(unk) if isinstance(unk, str) else (unk if isinstance(unk, int) else None)
    if unk_id is not None and unk_id < size and not byte_fallback:
        special[unk_id] = True  # an <unk> has no spelling; treat it as a control token
    lengths = np.fromiter((len(b) for b in token_bytes), dtype=np.int64, count=size)
    lengths[special] = 1

    neutral = _neutralise(spec)
    encoder = Tokenizer.from_str(orjson.dumps(neutral or spec).decode())  # a private copy
    encoder.encode_special_tokens = True  # text spelling "<|endoftext|>" stays text
    return Vocab(
        family="byte-level" if byte_level else "sentencepiece",
        token_bytes=token_bytes,
        lengths=lengths,
        special=special,
        known=known,
        byte_ids=byte_ids,
        unk_id=unk_id,
        encoder=encoder,
        original=tokenizer,
        rewrites=spec.get("normalizer") is not None,
    )


def _neutralise(spec: dict) -> dict | None:
    """A copy of tokenizer.json that encodes text as-is (no added prefix space), or None when
    the tokenizer already does. The post-processor is irrelevant: we never add special tokens."""
    changed = False

    def fix(d):
        nonlocal changed
        if d.get("type") == "Metaspace" and d.get("prepend_scheme", "always") != "never":
            d["prepend_scheme"] = "never"
            d.pop("add_prefix_space", None)
            changed = True
        if d.get("type") == "ByteLevel" and d.get("add_prefix_space"):
            d["add_prefix_space"] = False
            changed = True
        if d.get("type") == "Sequence" and isinstance(d.get("normalizers"), list):
            kept = [n for n in d["normalizers"] if n.get("type") != "Prepend"]
            changed |= len(kept) != len(d["normalizers"])
            d["normalizers"] = kept

    out = dict(spec)
    out["pre_tokenizer"] = copy.deepcopy(spec.get("pre_tokenizer"))
    out["normalizer"] = copy.deepcopy(spec.get("normalizer"))
    _walk(out["pre_tokenizer"], fix)
    _walk(out["normalizer"], fix)
    if isinstance(out["normalizer"], dict) and out["normalizer"].get("type") == "Prepend":
        out["normalizer"] = None
        changed = True
    return out if changed else None


@functools.lru_cache(maxsize=16)
def vocab_for(spec: str) -> Vocab:
    """The Vocab of tokenizer ``spec`` (see `tokenizers.load_tokenizer`), built once per process."""
    from tmcli.sources.tokenizers import load_tokenizer

    return build_vocab(load_tokenizer(spec))
