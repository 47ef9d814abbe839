"""Whole-sequence forwards that return next-token distributions at chosen rows, registered by
name like the generation engines: ``fused`` (tmcli's fused Llama arithmetic,
`generation.engines.llama_decoder`), ``transformers`` (the model's own forward, every causal LM)
and ``vllm`` (`scoring.vllm_forward`: vLLM's logprobs).

The unit of work is a `Pair`: two id sequences that spell the same text (the generated and the
canonical ids, sharing a prefix) and, for each, the rows whose next-token distribution is
wanted; row ``r`` is the distribution after ``ids[: r + 1]``. Each forward yields, per pair as
soon as it is done (not in order: batches go by length), its index and its two [rows, vocab]
log-probability tensors (float32), so a caller holds at most a batch of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass

from tmcli.errors import TmcliError

FORWARDS: dict[str, str] = {
    "fused": "tmcli.scoring.forward:FusedForward",
    "transformers": "tmcli.scoring.forward:TransformersForward",
    "vllm": "tmcli.scoring.vllm_forward:VLLMForward",
}
LOGITS_BUDGET = 1 << 30  # bytes of float32 logits one batch may hold
TOKENS_BUDGET = 16384  # padded tokens per transformers batch


@dataclass
class Pair:
    """Two sequences of one text and the rows wanted from each; ``prefix``: leading ids they
    share (computed once where the forward can)."""

    ref: list[int]
    alt: list[int]
    ref_rows: list[int]
    alt_rows: list[int]
    prefix: int = 0


def load_forward(name: str, lm):
    """The registered forward ``name`` over ``lm`` (a `sources.models.LoadedModel`, or for
    ``vllm`` a loaded `generation.engines.vllm.VLLMEngine`), imported only now."""
    if name not in FORWARDS:
        raise TmcliError(f"unknown engine '{name}'", hint="use one of: " + ", ".join(FORWARDS))
    module, _, cls = FORWARDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(lm)


def softcap_of(model) -> float | None:
    """The model's final logit soft-capping (Gemma-2/3), else None."""
    config = model.config
    return getattr(config, "final_logit_softcapping", None) or getattr(
        getattr(config, "text_config", None), "final_logit_softcapping", None)


class TransformersForward:
    """The model's own forward (any causal LM): pairs batched by length, right-padded (real
    tokens never attend to padding), the head applied to the wanted rows only."""

    name = "transformers"

    def __init__(self, lm):
        model = lm.model
        self.lm = lm
        self.inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.head = model.get_output_embeddings()
        self.softcap = softcap_of(model)
        self.vocab = self.head.weight.shape[0]

    def _batches(self, pairs: list[Pair]) -> Iterator[list[int]]:
        order = sorted(range(len(pairs)), key=lambda i: max(len(pairs[i].ref), len(pairs[i].alt)))
        batch: list[int] = []
        width = rows = 0
        for i in order:
            p = pairs[i]
            w = max(width, len(p.ref), len(p.alt))
            r = rows + len(p.ref_rows) + len(p.alt_rows)
            if batch and (2 * (len(batch) + 1) * w > TOKENS_BUDGET
                          or 4 * r * self.vocab > LOGITS_BUDGET):
                yield batch
                batch, w, r = [], max(len(p.ref), len(p.alt)), len(p.ref_rows) + len(p.alt_rows)
            batch.append(i)
            width, rows = w, r
        if batch:
            yield batch

    def pair_logprobs(self, pairs: list[Pair]) -> Iterator[tuple]:
        import torch

        from tmcli.scoring.compare import log_softmax

        with torch.inference_mode():
            for batch in self._batches(pairs):
                seqs = [s for i in batch for s in (pairs[i].ref, pairs[i].alt)]
                width = max(len(s) for s in seqs)
                ids = torch.zeros((len(seqs), width), dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s)] = torch.tensor(s)
                    mask[r, : len(s)] = 1
                device = self.lm.device
                hidden = self.inner(input_ids=ids.to(device),
                                    attention_mask=mask.to(device)).last_hidden_state
                for k, i in enumerate(batch):
                    p = pairs[i]
                    out = []
                    for r, rows in ((2 * k, p.ref_rows), (2 * k + 1, p.alt_rows)):
                        index = torch.tensor(rows, dtype=torch.long, device=hidden.device)
                        out.append(log_softmax(self.head(hidden[r].index_select(0, index)),
                                               self.softcap))
                    yield (i, *out)
                del hidden


class FusedForward:
    """tmcli's fused Llama arithmetic (`LlamaDecoder.layer`), one pair at a time: the shared
    prefix runs once, its keys and values kept, and each sequence's remainder attends to them,
    so a pair costs the prefix once plus two suffixes (not two whole sequences)."""

    name = "fused"

    def __init__(self, lm):
        from tmcli.generation.engines.llama_decoder import LlamaDecoder

        if not LlamaDecoder.supports(lm.model):
            kind = getattr(lm.model.config, "model_type", "?")
            raise TmcliError(f"the fused engine does not support {lm.spec} (model type {kind})",
                             hint="use --engine transformers")
        self.lm = lm
        self.dec = LlamaDecoder(lm.model)
        self.softcap = None
        self.vocab = lm.model.get_output_embeddings().weight.shape[0]

    def _run(self, ids: list[int], start: int, cache: list | None, keep: bool):
        """Hidden states of ``ids[start:]`` after the last layer, attending to ``cache`` (the
        keys/values of ``ids[:start]``, one (k, v) per layer) first; with ``keep``, the keys
        and values of this run are returned too."""
        import torch
        import torch.nn.functional as F

        dec = self.dec
        device = dec.device
        x = torch.tensor(ids[start:], dtype=torch.long, device=device)[None]
        positions = torch.arange(start, len(ids), device=device)[None]
        cos, sin = dec.rope(positions)
        h = F.embedding(x, dec.embed)
        kept: list = []
        T = x.shape[1]
        mask = None
        if cache:  # row i of the remainder sees the whole prefix and itself and before
            full = torch.ones((T, start + T), dtype=torch.bool, device=device)
            mask = torch.cat([full[:, :start], torch.tril(full[:, start:])], 1)

        def attend(li, q, k, v):
            if keep:
                kept.append((k, v))
            if cache:
                k = torch.cat([cache[li][0], k], 2)
                v = torch.cat([cache[li][1], v], 2)
                return _attention(q, k, v, mask).transpose(1, 2).reshape(1, T, -1)
            return _attention(q, k, v, None).transpose(1, 2).reshape(1, T, -1)

        for li in range(len(dec.layers)):
            h = dec.layer(li, h, cos, sin, attend)
        return h[0], kept

    def pair_logprobs(self, pairs: list[Pair]) -> Iterator[tuple]:
        import torch

        from tmcli.scoring.compare import log_softmax

        with torch.inference_mode():
            for i, p in enumerate(pairs):
                start = min([p.prefix, *p.ref_rows, *p.alt_rows])
                start = max(0, min(start, len(p.ref) - 1, len(p.alt) - 1))
                cache = self._run(p.ref[:start], 0, None, True)[1] if start else None
                out = []
                for ids, rows in ((p.ref, p.ref_rows), (p.alt, p.alt_rows)):
                    h, _ = self._run(ids, start, cache, False)
                    index = torch.tensor(rows, dtype=torch.long, device=h.device) - start
                    out.append(log_softmax(self.dec.final(h.index_select(0, index))))
                yield (i, *out)


def _attention(q, k, v, mask):
    """Causal attention (``mask`` None) or attention under a boolean ``mask``; K/V heads shared
    by groups of query heads."""
    import torch.nn.functional as F

    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              enable_gqa=True)
    except TypeError:  # torch < 2.5
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                              v.repeat_interleave(rep, 1), attn_mask=mask,
                                              is_causal=mask is None)
