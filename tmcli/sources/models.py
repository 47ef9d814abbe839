"""Loading causal LMs for `generate` and `score`: device and dtype, offline-friendly errors, and
the names recorded on every output record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError, one_line
from tmcli.sources.aliases import ALIASES, alias_names
from tmcli.sources.gguf import _converted_gguf, _gguf_cache_path
from tmcli.sources.locate import resolve_source
from tmcli.sources.tokenizers import prompt_tokenizer, tokenizer_name

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
    if source.directory is not None:
        return source.directory
    assert source.hub_id is not None  # a Source without a folder is a hub id's
    return Path(source.hub_id)


def _model_alias_hint() -> str:
    return "model aliases: " + ", ".join(alias_names(models=True)) + "; or give a local path, a GGUF file or a hub id"


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
