"""`LlamaDecoder`: tmcli's fused forward pass for Llama-architecture models (SmolLM2, Llama,
Mistral without sliding window, Qwen2), with a KV cache, one token per row per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tmcli.generation.engines import FUSED_TYPES


class _Linear:
    """``F.linear`` with its neighbouring elementwise op fused where possible. On CPU in float32
    the weight is prepacked for oneDNN, which runs the decode-step GEMMs (M = batch rows)
    1.2-1.6x faster than the default BLAS here, and applies SiLU, a residual add or a product
    on the output without another pass over memory."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias, self.packed = weight, bias, None
        mkldnn = getattr(torch.ops, "mkldnn", None)
        if (weight.device.type == "cpu" and weight.dtype == torch.float32
                and torch.backends.mkldnn.is_available()
                and hasattr(mkldnn, "_reorder_linear_weight")):
            try:
                self.packed = mkldnn._reorder_linear_weight(weight, 64)
                self.op = mkldnn._linear_pointwise
            except RuntimeError:
                self.packed = None

    def __call__(self, x):
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return self.op(x, self.packed, self.bias, "none", [], "")

    def silu(self, x):
        if self.packed is None:
            return F.silu(F.linear(x, self.weight, self.bias))
        return self.op(x, self.packed, self.bias, "swish", [], "")

    def add(self, x, other):
        """``other + linear(x)``, e.g. the residual stream."""
        if self.packed is None:
            return other + F.linear(x, self.weight, self.bias)
        return self.op.binary(x, other, self.packed, self.bias, "add")

    def mul(self, x, other):
        if self.packed is None:
            return other * F.linear(x, self.weight, self.bias)
        return self.op.binary(x, other, self.packed, self.bias, "mul")


class LlamaDecoder:
    """Fused, cache-in-place forward for Llama-style decoder-only models (see the module docstring)."""

    name = "fused"

    @staticmethod
    def supports(model) -> bool:
        cfg = model.config
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        inner = getattr(model, "model", None)
        return (
            getattr(cfg, "model_type", None) in FUSED_TYPES
            and type(model).__name__.endswith("ForCausalLM")
            and inner is not None and hasattr(inner, "rotary_emb") and hasattr(inner, "layers")
            and getattr(cfg, "hidden_act", None) == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1
            and not getattr(cfg, "mlp_bias", False)
            # sliding windows and length-dependent RoPE change the maths: leave them to transformers
            and not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))
            and rope.get("rope_type", rope.get("type", "default")) not in ("dynamic", "longrope")
        )

    def __init__(self, model):
        cfg = model.config
        inner = model.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.head = _Linear(model.lm_head.weight, getattr(model.lm_head, "bias", None))
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scale = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        self.layers = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            projs = [att.q_proj, att.k_proj, att.v_proj]
            bias = torch.cat([p.bias for p in projs]) if att.q_proj.bias is not None else None
            self.layers.append((
                layer.input_layernorm.weight,
                _Linear(torch.cat([p.weight for p in projs]), bias),
                _Linear(att.o_proj.weight, att.o_proj.bias),
                layer.post_attention_layernorm.weight,
                _Linear(mlp.gate_proj.weight),
                _Linear(mlp.up_proj.weight),
                _Linear(mlp.down_proj.weight),
            ))
        self.dtype = self.embed.dtype
        self.device = self.embed.device

    def _norm(self, x, weight):
        if x.dtype == torch.float32 and hasattr(F, "rms_norm"):  # one kernel, same arithmetic
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _rope(self, positions):
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None]
        sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None]
        return cos, sin

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def layer(self, li: int, h, cos, sin, attend):
        """Decoder layer ``li`` on hidden states ``h`` (B, T, hidden) at the rotary angles
        ``cos``/``sin`` (`rope`); ``attend(layer, q, k, v)`` returns the attention output
        (B, T, H*D), storing k/v if it keeps a cache. Also what `tmcli.scoring` runs its
        whole-sequence forwards (and merges between layers) with."""
        B, T = h.shape[:2]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        n1, qkv_proj, o_proj, n2, gate, up, down = self.layers[li]
        qkv = qkv_proj(self._norm(h, n1))
        q = qkv[..., : H * D].view(B, T, H, D).transpose(1, 2)
        k = qkv[..., H * D : (H + KV) * D].view(B, T, KV, D).transpose(1, 2)
        v = qkv[..., (H + KV) * D :].view(B, T, KV, D).transpose(1, 2)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        h = o_proj.add(attend(li, q, k, v), h)
        x = self._norm(h, n2)
        return down.add(up.mul(x, gate.silu(x)), h)

    def rope(self, positions):
        """Rotary cos/sin for ``positions`` (B, T); fractional positions are allowed."""
        return self._rope(positions)

    def final(self, h):
        """Logits (float32) from last-layer hidden states: the final norm, then the head."""
        return self.head(self._norm(h, self.final_norm)).float()

    def _forward(self, ids, positions, attend):
        """Run ``ids`` (B, T); ``attend(layer, q, k, v)`` stores k/v and returns the attention
        output (B, T, H*D). Returns the logits of the last position only."""
        cos, sin = self._rope(positions)
        h = F.embedding(ids, self.embed)
        for li in range(len(self.layers)):
            h = self.layer(li, h, cos, sin, attend)
        return self.final(h[:, -1])

    # The cache has two parts. The prompt part holds each prompt once ([P, KV, W, D], prompts
    # left-padded to W), shared by all rows (temperatures) of that prompt; the generated part
    # holds each row's own tokens ([B, KV, max_new, D]). A decode step attends to both and merges
    # them by their log-sum-exp, so a prompt's keys are read once per step, not once per row.

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Prompts one at a time (no padding computed), causal attention, into the prompt cache."""
        P, W = ids.shape
        KV, D = self.n_kv, self.head_dim
        kw = dict(dtype=self.dtype, device=self.device)
        self.pk = [torch.zeros((P, KV, W, D), **kw) for _ in self.layers]
        self.pv = [torch.zeros((P, KV, W, D), **kw) for _ in self.layers]
        self.pbias = torch.zeros((P, 1, 1, W), **kw).masked_fill_(~mask[:, None, None, :], float("-inf"))
        self.max_new = max_new_tokens
        self.n_new = 0
        lengths = mask.sum(1).tolist()
        logits = []
        for p, n in enumerate(lengths):
            def attend(li, q, k, v, p=p, n=n):
                self.pk[li][p, :, W - n :] = k[0]
                self.pv[li][p, :, W - n :] = v[0]
                return _causal_attention(q, k, v).transpose(1, 2).reshape(1, n, -1)

            positions = torch.arange(n, device=self.device)[None]
            logits.append(self._forward(ids[p : p + 1, W - n :], positions, attend))
        self.last = torch.tensor(lengths, device=self.device) - 1
        self.owner = torch.arange(P, device=self.device)
        self._new_rows_cache(P)
        return torch.cat(logits)

    def _new_rows_cache(self, rows: int) -> None:
        shape = (rows, self.n_kv, self.max_new, self.head_dim)
        self.gk = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.gv = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.gvalid = None  # per (row, slot) once a rollback has happened; None: all valid
        self._regroup()

    def rollback(self, rows, counts) -> None:
        """Forget the last ``counts[i]`` generated tokens of decoder row ``rows[i]`` (canonical
        retokenization): their slots are masked out of attention and the row's next position
        moves back. Steps stay in lockstep, so the slots are not reused."""
        if self.gvalid is None:
            self.gvalid = torch.ones((len(self.last), self.gk[0].shape[2]), dtype=torch.bool,
                                     device=self.device)
        for i, k in zip(rows, counts):
            kept = self.gvalid[i, : self.n_new].nonzero().squeeze(1)
            self.gvalid[i, kept[len(kept) - k:]] = False
            self.last[i] -= k

    def _grow(self) -> None:
        """Double the generated-token cache (retokenization can take more steps than tokens)."""
        def bigger(t, dim=2):
            shape = list(t.shape)
            shape[dim] *= 2
            out = torch.empty(shape, dtype=t.dtype, device=t.device)
            out.narrow(dim, 0, t.shape[dim]).copy_(t)
            return out

        self.gk = [bigger(k) for k in self.gk]
        self.gv = [bigger(v) for v in self.gv]
        if self.gvalid is not None:
            grown = bigger(self.gvalid, 1)
            grown[:, self.gvalid.shape[1]:] = True
            self.gvalid = grown

    def _regroup(self) -> None:
        """Index maps between rows and (prompt, slot) for the grouped prompt-cache attention."""
        P = self.pbias.shape[0]
        counts = torch.bincount(self.owner, minlength=P)
        self.group = int(counts.max())
        order = torch.argsort(self.owner, stable=True)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order), device=self.device) - first[self.owner[order]]
        self.row_slot = torch.empty_like(self.owner)
        self.row_slot[order] = self.owner[order] * self.group + slot
        self.slot_row = torch.zeros(P * self.group, dtype=torch.long, device=self.device)
        self.slot_row[self.row_slot] = torch.arange(len(order), device=self.device)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        B = ids.shape[0]
        P, G = self.pbias.shape[0], self.group
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        rep = H // KV
        s = self.n_new
        if s == self.gk[0].shape[2]:
            self._grow()
        self.n_new += 1
        self.last = self.last + 1
        gbias = None
        if self.gvalid is not None:
            gbias = torch.zeros((B, 1, 1, s + 1), dtype=self.dtype, device=self.device)
            gbias.masked_fill_(~self.gvalid[:, None, None, : s + 1], float("-inf"))

        def attend(li, q, k, v):
            self.gk[li][:, :, s] = k[:, :, 0]
            self.gv[li][:, :, s] = v[:, :, 0]
            # grouped-query attention without repeating K/V: a KV head's `rep` query heads
            # become `rep` query rows of that head
            qr = q.reshape(B, KV, rep, D)
            qp = qr.index_select(0, self.slot_row).view(P, G, KV, rep, D).transpose(1, 2)
            op, lp = _attention(qp.reshape(P, KV, G * rep, D), self.pk[li], self.pv[li], self.pbias)
            op = op.view(P, KV, G, rep, D).transpose(1, 2).reshape(P * G, KV, rep, D)
            lp = lp.view(P, KV, G, rep).transpose(1, 2).reshape(P * G, KV, rep)
            og, lg = _attention(qr, self.gk[li][:, :, : s + 1], self.gv[li][:, :, : s + 1], gbias)
            w = torch.sigmoid(lp.index_select(0, self.row_slot) - lg)[..., None].to(og.dtype)
            o = og + (op.index_select(0, self.row_slot) - og) * w
            return o.reshape(B, 1, H * D)

        return self._forward(ids[:, None], self.last[:, None], attend)

    def select(self, rows: torch.Tensor) -> None:
        self.owner = self.owner.index_select(0, rows)
        self.last = self.last.index_select(0, rows)
        if self.n_new == 0:
            self._new_rows_cache(len(rows))
            return
        self.gk = [k.index_select(0, rows) for k in self.gk]
        self.gv = [v.index_select(0, rows) for v in self.gv]
        if self.gvalid is not None:
            self.gvalid = self.gvalid.index_select(0, rows)
        self._regroup()


def _causal_attention(q, k, v):
    """Causal self-attention of one unpadded sequence; K/V heads shared by groups of Q heads."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    except TypeError:  # torch < 2.5
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                              v.repeat_interleave(rep, 1), is_causal=True)


def _attention(q, k, v, bias):
    """Attention output and its log-sum-exp (to merge attention over two key sets)."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    lse = torch.logsumexp(scores, -1)
    return torch.matmul(torch.exp(scores - lse[..., None]).to(v.dtype), v), lse
