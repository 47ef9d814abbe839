"""The ``fused`` engine: tmcli's fused decoder (`llama_decoder.LlamaDecoder`) for Llama-style models
(SmolLM2, Llama, Mistral without a sliding window, Qwen2) in the shared decode loop of
`engines.transformers`. On a CPU it is the fastest engine for these models (see
benchmarks/bench_generate.py); other models are refused, or handed to the plain transformers
forward when the engine was picked by ``auto`` without knowing the model's type."""

from __future__ import annotations

from tmcli.errors import TmcliError
from tmcli.generation.engines import EngineOptions
from tmcli.generation.engines.transformers import TransformersEngine


class FusedEngine(TransformersEngine):
    name = "fused"
    fast = True

    def __init__(self, spec: str, options: EngineOptions, *, strict: bool = True):
        from tmcli.generation.engines import FUSED_TYPES, model_type

        kind = model_type(spec) if strict else None  # auto has checked it already
        if kind is not None and kind not in FUSED_TYPES:
            raise TmcliError(f"the fused engine does not support {spec} (model type {kind})",
                             hint="use --engine transformers (or auto)")
        super().__init__(spec, options)
        if self.decoder.name != "fused":
            if strict:
                kind = getattr(self.lm.model.config, "model_type", "?")
                raise TmcliError(f"the fused engine does not support {spec} (model type {kind})",
                                 hint="use --engine transformers (or auto)")
            self.name = self.decoder.name
