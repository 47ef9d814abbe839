"""One comparison of two next-token distributions, shared by `divergence` (the generated vs the
canonical context of the same text) and `merge` (the unmerged vs the merged model).

``ref`` is the distribution taken as the reference (the context the model actually saw; the
unmerged model) and ``alt`` the other one (the canonical context; the merged model). Per row:

- ``kl``: KL(ref ‖ alt) in nats; ``kl_rev``: KL(alt ‖ ref);
- ``top1``: 1 when both put the same token first; ``top3``/``top5``: 1 when ref's first token
  is among alt's first 3/5 (seed 001's top-k accuracy of the merged model against the base);
- ``overlap5``: the share of ref's 5 most likely tokens that are also among alt's 5;
- ``nll_ref``/``nll_alt``: the NLL of the token that actually came next under each (absent where
  none did: the end of a completion);
- ``entropy_ref``/``entropy_alt``: each distribution's entropy (nats).

Two identical contexts need no forward pass: `IDENTICAL` holds the exact values they give.
"""

from __future__ import annotations

from tmcli.measure.scored import COMPARISON_METRICS as METRICS

# What two identical distributions give, exactly (no NLL or entropy without a forward pass)
IDENTICAL = {"kl": 0.0, "kl_rev": 0.0, "top1": 1.0, "top3": 1.0, "top5": 1.0, "overlap5": 1.0,
             "nll_ref": None, "nll_alt": None, "entropy_ref": None, "entropy_alt": None}


def log_softmax(logits, softcap: float | None = None):
    """Log-probabilities (float32) from raw logits, after the model's final soft-capping if any
    (Gemma's ``final_logit_softcapping``), as its own forward applies it."""
    import torch

    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


ROWS_AT_ONCE = 16  # rows compared together (float64 copies of 16 x 262k-token rows: 34 MB each)


def compare(ref, alt, next_ids=None) -> dict[str, list]:
    """Per row of ``ref`` and ``alt`` (log-probabilities, [rows, vocab]): the `METRICS`.
    ``next_ids``: the token that came next after each row (-1 or None where none did)."""
    out: dict[str, list] = {m: [] for m in METRICS}
    for s in range(0, ref.shape[0], ROWS_AT_ONCE):
        part = None if next_ids is None else list(next_ids)[s : s + ROWS_AT_ONCE]
        for m, values in _compare(ref[s : s + ROWS_AT_ONCE], alt[s : s + ROWS_AT_ONCE],
                                  part).items():
            out[m] += values
    return out


def _compare(ref, alt, next_ids) -> dict[str, list]:
    import torch

    n = ref.shape[0]
    ref64, alt64 = ref.double(), alt.double()
    p, q = ref64.exp(), alt64.exp()
    diff = ref64 - alt64
    zero = torch.zeros((), dtype=torch.float64, device=ref.device)
    # 0 * log 0 is 0: a token impossible under one side contributes nothing to its KL
    kl = torch.where(p > 0, p * diff, zero).sum(-1).clamp_(min=0.0)
    kl_rev = torch.where(q > 0, -q * diff, zero).sum(-1).clamp_(min=0.0)
    ent_ref = -torch.where(p > 0, p * ref64, zero).sum(-1)
    ent_alt = -torch.where(q > 0, q * alt64, zero).sum(-1)
    del ref64, alt64, p, q, diff
    k = min(5, ref.shape[1])
    top_ref = ref.topk(k, dim=-1).indices
    top_alt = alt.topk(k, dim=-1).indices
    first = top_ref[:, :1]
    top1 = (first[:, 0] == top_alt[:, 0]).double()
    top3 = (top_alt[:, :3] == first).any(-1).double()
    top5 = (top_alt[:, :5] == first).any(-1).double()
    overlap = (top_ref[:, :, None] == top_alt[:, None, :]).any(-1).sum(-1).double() / k
    out = {"kl": kl, "kl_rev": kl_rev, "top1": top1, "top3": top3, "top5": top5,
           "overlap5": overlap, "entropy_ref": ent_ref, "entropy_alt": ent_alt}
    out = {name: t.tolist() for name, t in out.items()}
    if next_ids is None:
        out["nll_ref"] = out["nll_alt"] = [None] * n
    else:
        ids = torch.as_tensor(next_ids, dtype=torch.long, device=ref.device)
        safe = ids.clamp(min=0)[:, None]
        nll_ref = (-ref.gather(1, safe)[:, 0].double()).tolist()
        nll_alt = (-alt.gather(1, safe)[:, 0].double()).tolist()
        has = (ids >= 0).tolist()
        out["nll_ref"] = [v if h else None for v, h in zip(nll_ref, has)]
        out["nll_alt"] = [v if h else None for v, h in zip(nll_alt, has)]
    return {m: out[m] for m in METRICS}


def mean_of(values: list) -> float | None:
    """The mean of the values present (None: none is)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
