"""GGUF files: the fix-ups that make transformers' conversion of a GGUF (or SentencePiece)
tokenizer encode as the original does, and the one-time dequantisation of a GGUF model into a
cached checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

from tmcli.sources.aliases import cache_dir, write_atomically
from tmcli.sources.locate import Source


def gguf_string(fields, name: str) -> str:
    """A string field of a GGUF file (``gguf.GGUFReader(...).fields``); "" when absent."""
    field = fields.get(name)
    return bytes(field.parts[field.data[0]]).decode() if field is not None and field.data else ""


def gguf_architecture(path: Path) -> str:
    """A GGUF's ``general.architecture`` ("" when absent), read once and then kept in the cache
    under the file's content: `gguf.GGUFReader` parses all the metadata, the vocabulary included
    (about 14 s for Gemma-3's 262k tokens on a laptop core), to answer it."""
    import gguf

    key = Source(path.parent, path.name).key
    cached = cache_dir() / "gguf-architectures" / (hashlib.sha256(key.encode()).hexdigest()[:16])
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    architecture = gguf_string(gguf.GGUFReader(str(path)).fields, "general.architecture")
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cached, architecture)
    return architecture


def _fix_gguf_tokenizer(text: str, path: Path) -> str:
    """Make transformers' conversion of a GGUF tokenizer encode as the GGUF's own tokenizer.

    - llama.cpp's ``smollm`` pre-tokenizer splits every digit before ByteLevel (SmolLM's own
      tokenizer.json does); transformers' converter drops that step.
    - SentencePiece models (``tokenizer.ggml.model == "llama"``, e.g. Gemma-3) match their
      user-defined pieces (token type 4: runs of spaces, newlines and tabs, HTML tags) whole,
      before BPE, and never merge them with their neighbours. transformers keeps some as added
      tokens but leaves the space runs to BPE merges, so 32 spaces encode as 16 + 16 instead of
      SentencePiece's 31 + "▁" merged with what follows. Every user-defined piece becomes an
      added token (matched leftmost-longest, as SentencePiece does); control pieces stay special.
    `tests/measure/test_exact.py` compares the result with SentencePiece rebuilt from the GGUF."""
    import gguf
    import orjson

    fields = gguf.GGUFReader(str(path)).fields

    def string(name: str) -> str:
        return gguf_string(fields, name)

    spec = orjson.loads(text)
    changed = False
    if string("tokenizer.ggml.pre") == "smollm" and \
            (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]]}
        changed = True
    types_field = fields.get("tokenizer.ggml.token_type")
    if string("tokenizer.ggml.model") == "llama" and types_field is not None:
        types = [int(types_field.parts[i][0]) for i in types_field.data]
        added = {a["id"]: a for a in spec.get("added_tokens") or []}
        vocab = (spec.get("model") or {}).get("vocab")
        piece = {i: p for p, i in vocab.items()} if isinstance(vocab, dict) else {}
        for idx, kind in enumerate(types):
            if kind == 4 and idx not in added and idx in piece:
                spec.setdefault("added_tokens", []).append({
                    "id": idx, "content": piece[idx], "single_word": False, "lstrip": False,
                    "rstrip": False, "normalized": True, "special": False})
                changed = True
            elif kind == 4 and idx in added and added[idx].get("special"):
                added[idx]["special"] = False
                changed = True
            elif kind == 3 and idx in added and not added[idx].get("special"):
                added[idx]["special"] = True
                changed = True
        spec["added_tokens"] = sorted(spec.get("added_tokens") or [], key=lambda a: a["id"])
    return orjson.dumps(spec).decode() if changed else text


def _fix_sentencepiece_merges(text: str, path: Path) -> str:
    """Order a converted SentencePiece BPE model's merges as SentencePiece applies them.

    SentencePiece BPE merges, at each step, the adjacent pair whose merged piece has the highest
    score. transformers' converter ranks some merges otherwise (Mistral's whitespace pieces,
    score -1e9, come first), so a quarter of whitespace-heavy texts encoded differently from
    the .model file. Ranking every merge of a NORMAL piece by that piece's score (ties by id)
    restores SentencePiece's encoding (`tests/measure/test_exact.py` compares them)."""
    import orjson
    from sentencepiece import sentencepiece_model_pb2 as pb

    spec = orjson.loads(text)
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return text
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception:  # protobuf's DecodeError; not a SentencePiece model: leave it be
        return text
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        return text
    vocab = model["vocab"]
    merges = []
    for idx, piece in enumerate(proto.pieces):
        if piece.type != pb.ModelProto.SentencePiece.NORMAL or len(piece.piece) < 2:
            continue
        p = piece.piece
        merges += [(-piece.score, idx, k, p[:k], p[k:]) for k in range(1, len(p))
                   if p[:k] in vocab and p[k:] in vocab]
    merges.sort()
    model["merges"] = [[left, right] for *_key, left, right in merges]
    return orjson.dumps(spec).decode()


def _gguf_cache_path(source: Source) -> Path:
    digest = hashlib.sha256(source.key.encode()).hexdigest()[:16]
    return cache_dir() / "models" / digest


def _converted_gguf(source: Source, spec: str, from_pretrained, progress: bool):
    """Dequantise a GGUF into a cached checkpoint; returns the model if it was just converted,
    None if a cached conversion exists (the caller then loads it in seconds)."""
    target = _gguf_cache_path(source)
    if (target / "config.json").is_file():
        return None
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not progress:  # transformers' own tqdm ignores its progress-bar switch
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        model = from_pretrained(str(source.directory), gguf_file=source.gguf_file, dtype="float32")
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
    # A GGUF-loaded model refuses save_pretrained while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        (tmp / "tmcli-source.txt").write_text(f"{spec}\n{source.key}\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model
