"""Forward passes with a KV cache, one token per row per step, returning last-position logits only.

Two decoders share one small interface (``prefill``, ``step``, ``select``):

- `LlamaDecoder`, for Llama-architecture models (SmolLM2, Llama, Mistral without sliding window,
  Qwen2): the same arithmetic as transformers' modules, but with q/k/v fused into one matmul,
  oneDNN-prepacked weights on CPU with SiLU, products and residual adds fused into the matmuls,
  a preallocated KV cache written in place (no per-step concatenation), each prompt's keys
  stored once and shared by all its rows (temperatures), grouped-query attention without
  copying K/V per head, and prompts prefilled without padding. On a CPU the decode step of a
  135M model is then a handful of large GEMMs, which is where batching pays.
- `HFDecoder`, for every other causal LM: the model's own forward with its own cache.

Prompts come left-padded with a mask; positions count real tokens only, so a row computes the
same numbers as it would alone (up to float rounding).
"""

from __future__ import annotations

import inspect
import os

import torch

from tmcli.errors import TmcliError
from tmcli.generation.engines.llama_decoder import LlamaDecoder


def make_decoder(model, *, fast: bool = True):
    """The fastest decoder that computes exactly what ``model`` computes."""
    if fast and LlamaDecoder.supports(model):
        return LlamaDecoder(model)
    return HFDecoder(model)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(1) - 1).clamp_(min=0)


class HFDecoder:
    """Generic path: ``model(...)`` with the model's own cache and a growing 2-D attention mask."""

    name = "transformers"

    def __init__(self, model):
        self.model = model
        self.device = model.device
        params = inspect.signature(model.forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache = None

    def _forward(self, ids, positions):
        out = self.model(input_ids=ids, attention_mask=self.mask.long(), position_ids=positions,
                         past_key_values=self.cache, use_cache=True, **self._keep)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        self.cache = None
        self.mask = mask.clone()
        self.prompt_width = mask.shape[1]
        positions = _positions(mask)
        self.last = positions[:, -1]
        return self._forward(ids, positions)

    def rollback(self, rows, counts) -> None:
        """Forget the last ``counts[i]`` generated tokens of decoder row ``rows[i]``: masked out
        of attention from now on, and the row's next position moves back."""
        width = self.prompt_width
        for i, k in zip(rows, counts):
            kept = self.mask[i, width:].nonzero().squeeze(1)
            self.mask[i, width + kept[len(kept) - k:]] = False
            self.last[i] -= k

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], 1)
        self.last = self.last + 1
        return self._forward(ids[:, None], self.last[:, None])

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows of the batch, e.g. one prompt's cache for each temperature."""
        self.cache.reorder_cache(rows)
        self.mask = self.mask[rows]
        self.last = self.last[rows]


def _kv_bytes_per_token(model, dtype_bytes: int) -> int:
    cfg = getattr(model.config, "text_config", None) or model.config
    layers = getattr(cfg, "num_hidden_layers", 24)
    heads = getattr(cfg, "num_attention_heads", 16)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * layers * kv * head_dim * dtype_bytes


def _free_memory(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def plan_batch_size(lm, max_context: int, requested: int | None, rows: int) -> int:
    """Rows per batch: ``requested``, checked against free memory, or the largest that keeps the
    KV cache and sampling buffers within half the free memory (at most 256 on CPU, where larger
    batches stop paying, 512 on accelerators)."""
    itemsize = torch.empty((), dtype=getattr(torch, lm.dtype)).element_size()
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    per_row = _kv_bytes_per_token(lm.model, itemsize) * max_context + vocab * 24
    free = _free_memory(lm.device)
    if requested is not None:
        requested = min(requested, rows)
        need = requested * per_row
        if need > free:
            raise TmcliError(
                f"out of memory: a batch of {requested} rows needs ~{need / 2**30:.1f} GiB for its KV "
                f"cache, {free / 2**30:.1f} GiB is free",
                hint="use a smaller --batch-size (or leave it out), or fewer --max-new-tokens")
        return requested
    cap = 256 if lm.device == "cpu" else 512
    fits = int(free * 0.5 // per_row)
    if fits < 1:
        raise TmcliError(
            f"out of memory: one row of {max_context} tokens needs ~{per_row / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB is free", hint="use fewer --max-new-tokens or shorter prompts")
    return max(1, min(cap, fits, rows))
