"""`score --merge slerp`: seed 001's merge of consecutive hidden states, measured like a
non-canonical span (`compare.compare`, the unmerged model as the reference).

The forward runs the model's layers up to and including layer ``L`` (the "layer cut", 0-based,
as the seed's ``if i == cutoff``) on the whole sequence, then merges its hidden states pairwise
and runs the remaining layers on the shorter sequence; the last position's next-token
distribution is compared with the unmerged model's.

The seed's padding rule (its code; its README states the odd and even cases the other way
round, which could not be paired): a sequence of n <= 3 states is kept as it is; an even n gets
a null (zero) state at both ends, ``[0, x1 .. xn, 0]``; an odd n one at the start, before the
last state and at the end, ``[0, x1 .. x(n-1), 0, xn, 0]``. Consecutive states then form pairs,
each merged by SLERP at t = 0.5, except a pair holding a null state, which takes the other
state whole (t = 1 when the null comes first, 0 when it comes second). So the first and last
states are never merged: the last position still predicts the next token from its own state,
and n states become n/2 + 1 (even n) or (n + 3)/2 (odd n).

SLERP is per vector (the seed normalises by the norm of the whole tensor, every position of
the batch at once, which is not spherical interpolation of the pairs); nearly colinear pairs
(|cos| > 0.9995) are interpolated linearly, as mergekit does.

What the seed leaves open, decided here:
- **attention mask**: causal over the merged sequence (a merged state sees the merged states at
  or before it; no state sees a later pair, so nothing of the future leaks in);
- **positions** (RoPE): ``interpolate`` (default) gives a merged state the position of its pair
  interpolated with the same t, so kept states keep their own positions (the last one included)
  and a merged pair sits between its two tokens; ``renumber`` numbers the merged sequence
  0, 1, 2, ... as the seed's forward did (it passed no position ids).
"""

from __future__ import annotations

from tmcli.errors import TmcliError
from tmcli.scoring.compare import METRICS, compare

METHODS = ("slerp",)
POSITIONS = ("interpolate", "renumber")
DEFAULT_LENGTHS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
N_DEFAULT_CUTS = 8


def slerp(v0, v1, t, dot_threshold: float = 0.9995, eps: float = 1e-8):
    """Spherical linear interpolation between the vectors of ``v0`` and ``v1`` (last dim) at
    ``t`` (broadcast over the leading dims): v0 at t = 0, v1 at t = 1, exactly."""
    import torch

    t = torch.as_tensor(t, dtype=v0.dtype, device=v0.device)
    n0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=eps)
    n1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=eps)
    dot = (n0 * n1).sum(-1).clamp(-1.0, 1.0)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    colinear = dot.abs() > dot_threshold
    safe = torch.where(colinear, torch.ones_like(sin), sin)
    s0 = torch.where(colinear, 1 - t, torch.sin(theta - t * theta) / safe)
    s1 = torch.where(colinear, t, torch.sin(t * theta) / safe)
    return s0[..., None] * v0 + s1[..., None] * v1


def pair_plan(n: int) -> tuple[list[int], list[int], list[float]] | None:
    """The seed's pairs of an n-state sequence: (first index, second index, t) per merged state,
    -1 for a null state; None when the sequence is kept as it is (n <= 3)."""
    if n <= 3:
        return None
    inner = list(range(n)) if n % 2 == 0 else [*range(n - 1), -1, n - 1]
    padded = [-1, *inner, -1]
    a, b = padded[0::2], padded[1::2]
    t = [1.0 if i < 0 else 0.0 if j < 0 else 0.5 for i, j in zip(a, b)]
    return a, b, t


def merge_states(h, positions, mode: str = "interpolate"):
    """Merged hidden states [m, hidden] and their positions [m] from ``h`` [n, hidden] and
    ``positions`` [n] (float); the inputs themselves when the seed keeps the sequence."""
    import torch

    found = pair_plan(h.shape[0])
    if found is None:
        return h, positions
    a, b, t = found
    ia = torch.tensor([i if i >= 0 else j for i, j in zip(a, b)], device=h.device)
    ib = torch.tensor([j if j >= 0 else i for i, j in zip(a, b)], device=h.device)
    zero_a = torch.tensor([i < 0 for i in a], device=h.device)[:, None]
    zero_b = torch.tensor([j < 0 for j in b], device=h.device)[:, None]
    v0 = h.index_select(0, ia).masked_fill(zero_a, 0.0)
    v1 = h.index_select(0, ib).masked_fill(zero_b, 0.0)
    tt = torch.tensor(t, dtype=h.dtype, device=h.device)
    merged = slerp(v0, v1, tt)
    if mode == "renumber":
        return merged, torch.arange(len(t), dtype=positions.dtype, device=h.device)
    tp = tt.to(positions.dtype)
    return merged, (1 - tp) * positions.index_select(0, ia) + tp * positions.index_select(0, ib)


class FusedStack:
    """The layers of tmcli's fused Llama decoder, one sequence at a time."""

    name = "fused"

    def __init__(self, lm):
        from tmcli.generation.engines.llama_decoder import LlamaDecoder

        self.dec = LlamaDecoder(lm.model)
        self.n_layers = len(self.dec.layers)
        self.device = self.dec.device

    def embed(self, ids):
        import torch.nn.functional as F

        return F.embedding(ids[None], self.dec.embed)

    def rope(self, positions):
        return self.dec.rope(positions[None])

    def layer(self, li, h, rope):
        from tmcli.scoring.forward import _attention

        T = h.shape[1]
        return self.dec.layer(li, h, *rope, lambda _li, q, k, v: _attention(q, k, v, None)
                              .transpose(1, 2).reshape(1, T, -1))

    def logits(self, h_last):
        return self.dec.final(h_last)


class TransformersStack:
    """The model's own modules (embedding, rotary embedding, decoder layers, norm, head), run
    layer by layer under an explicit causal mask."""

    name = "transformers"

    def __init__(self, lm):
        self.model = lm.model
        self.inner = lm.model.model
        self.n_layers = len(self.inner.layers)
        self.device = lm.device

    def embed(self, ids):
        return self.inner.embed_tokens(ids[None])

    def rope(self, positions):
        probe = self.inner.embed_tokens.weight[:1][None]
        return self.inner.rotary_emb(probe, position_ids=positions[None].float())

    def layer(self, li, h, rope):
        import torch

        T = h.shape[1]
        mask = torch.full((T, T), float("-inf"), dtype=h.dtype, device=h.device).triu_(1)
        out = self.inner.layers[li](h, attention_mask=mask[None, None], position_embeddings=rope)
        return out[0] if isinstance(out, tuple) else out

    def logits(self, h_last):
        return self.model.lm_head(self.inner.norm(h_last)).float()


STACKS = {"fused": FusedStack, "transformers": TransformersStack}


def load_stack(engine: str, lm):
    """The layer stack of ``lm`` on ``engine`` (fused or transformers), for Llama-architecture
    models only (the merge rewrites their forward between two layers)."""
    from tmcli.generation.engines.llama_decoder import LlamaDecoder

    if engine not in STACKS:
        raise TmcliError(f"--merge runs on the fused or transformers engine, not {engine}",
                         hint="use --engine fused or --engine transformers")
    if not LlamaDecoder.supports(lm.model):
        kind = getattr(lm.model.config, "model_type", "?")
        raise TmcliError(f"--merge supports Llama-architecture models, not {lm.spec} "
                         f"(model type {kind})", hint="use SmolLM2, Llama, Mistral or Qwen2")
    return STACKS[engine](lm)


def parse_cuts(text: str | None, n_layers: int) -> list[int]:
    """``--layer``: 'L', 'L1,L2', 'all'; None: `N_DEFAULT_CUTS` cuts spread over the depth."""
    if text is None:
        k = min(N_DEFAULT_CUTS, n_layers)
        return sorted({round(i * (n_layers - 1) / max(k - 1, 1)) for i in range(k)})
    if text.strip() == "all":
        return list(range(n_layers))
    try:
        cuts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise TmcliError(f"--layer must be layer numbers separated by commas, got '{text}'",
                         hint="e.g. --layer 4,12,20 or --layer all") from None
    bad = [c for c in cuts if not 0 <= c < n_layers]
    if not cuts or bad:
        raise TmcliError(f"--layer {text}: the model has layers 0 to {n_layers - 1}",
                         hint=f"pick cuts from 0 to {n_layers - 1}")
    return cuts


def merged_vs_reference(stack, ids: list[int], cuts: list[int], mode: str = "interpolate"):
    """Log-probabilities after ``ids`` of the unmerged model and, per cut, of the merged one
    (float32 [vocab] each), and the merged length."""
    import torch

    from tmcli.scoring.compare import log_softmax

    x = torch.tensor(ids, dtype=torch.long, device=stack.device)
    positions = torch.arange(len(ids), dtype=torch.float32, device=stack.device)
    rope = stack.rope(positions)
    h = stack.embed(x)
    saved = {}
    for li in range(stack.n_layers):
        h = stack.layer(li, h, rope)
        if li in cuts:
            saved[li] = h
    ref = log_softmax(stack.logits(h[0, -1:]))[0]
    merged: dict[int, object] = {}
    length = len(ids)
    for cut in cuts:
        state = saved[cut][0]
        hm, pm = merge_states(state, positions, mode)
        length = hm.shape[0]
        if hm is state:  # kept as it is: the same forward, the same prediction
            merged[cut] = ref
            continue
        hm, rope_m = hm[None], stack.rope(pm)
        for li in range(cut + 1, stack.n_layers):
            hm = stack.layer(li, hm, rope_m)
        merged[cut] = log_softmax(stack.logits(hm[0, -1:]))[0]
    return ref, merged, length


def merge_many(stack, items: list[list[int]], cuts: list[int], lengths: list[int],
               mode: str = "interpolate") -> list[list[dict]]:
    """Per id sequence: one row per (length that fits, cut) with `compare.METRICS`; the NLL is
    that of the sequence's next id after the first ``length`` ids, where there is one."""
    import torch

    out = []
    with torch.inference_mode():
        for ids in items:
            rows = []
            for n in (n for n in lengths if n <= len(ids)):
                ref, merged, m = merged_vs_reference(stack, ids[:n], cuts, mode)
                nxt = [ids[n] if n < len(ids) else -1]
                for cut in cuts:
                    values = compare(ref[None], merged[cut][None], nxt)
                    rows.append({"layer": cut, "length": n, "merged_length": m,
                                 **{k: values[k][0] for k in METRICS}})
            out.append(rows)
    return out
