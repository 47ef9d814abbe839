"""`score --divergence`: how much a non-canonical span changes what the model predicts next.

The same text is fed to the model twice: as the ids it sampled (prompt + generated ids, the
reference) and as its canonical re-encoding (prompt + canonical ids from `check_ids`, the
alternative). Outside the differing spans the two id sequences are identical, so every token
boundary there is a boundary of both at the same byte offset: the *aligned positions*. At the
first ``k`` aligned positions after each span (``since`` = tokens since the end of the most
recent span, 0 = right after it) and at the end of the completion, the two next-token
distributions are compared with `compare.compare` (KL both ways, top-1/3/5, top-5 overlap, the
NLL of the token the model actually sampled next under each, entropies).

A sample whose re-encoding is its own ids (canonical, or only ids that have no canonical form:
unknown ids, invalid UTF-8, kept as generated) has two identical contexts: it gets exactly
KL 0 and agreement 1 without a forward pass. A span that ends the completion has no aligned
position after it: the sample says so in ``note`` (its end-of-completion comparison remains).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmcli.scoring.compare import IDENTICAL, METRICS, compare, mean_of
from tmcli.scoring.forward import Pair

DEFAULT_AFTER = 32
NO_POSITION = "the differing span(s) end the completion: no position after them to compare"
IDENTICAL_NOTE = "canonical: both contexts are the same ids, no forward pass"
KEPT_NOTE = ("only ids with no canonical form (kept as generated): both contexts are the same "
             "ids, no forward pass")


@dataclass
class Plan:
    """Where one sample's two contexts are compared. Rows index the full sequences (prompt +
    completion); the last entry of each row list is the end of the completion."""

    pair: Pair | None  # None: identical contexts
    since: list[int] = field(default_factory=list)
    next_ids: list[int] = field(default_factory=list)  # the sampled next token per position
    n_spans: int = 0
    end_since: int | None = None


def plan(prompt: list[int], generated: list[int], check, after: int = DEFAULT_AFTER) -> Plan:
    """The aligned positions of one completion from its `rollout_check.IdsCheck` (``check``
    must come from the same prompt and ids)."""
    spans = [s for s in check.spans if s.generated != s.canonical]  # kept ids change nothing
    if not spans:
        return Plan(None)
    p = len(prompt)
    ref = list(prompt) + list(generated)
    alt = list(prompt) + list(check.canonical_ids)
    ref_rows, alt_rows, since, next_ids = [], [], [], []
    shift = 0
    for k, s in enumerate(spans):
        end_a = p + s.position + len(s.generated)  # first ref index after the span
        shift += len(s.canonical) - len(s.generated)
        stop = p + spans[k + 1].position if k + 1 < len(spans) else len(ref) - 1
        # row r (the distribution after ids[: r + 1]) for r = end_a - 1 ... up to the row just
        # before the next span starts, at most `after` of them, never the last row (the end)
        for d in range(min(after, stop - end_a + 1)):
            r = end_a - 1 + d
            if r >= len(ref) - 1:
                break
            ref_rows.append(r)
            alt_rows.append(r + shift)
            since.append(d)
            next_ids.append(ref[r + 1])
    last_end = p + spans[-1].position + len(spans[-1].generated)
    ref_rows.append(len(ref) - 1)
    alt_rows.append(len(alt) - 1)
    prefix = p + spans[0].position
    return Plan(Pair(ref, alt, ref_rows, alt_rows, prefix), since, next_ids, len(spans),
                len(ref) - last_end)


def identical(kept: bool = False) -> dict:
    """The record field of a sample whose two contexts are the same ids (``kept``: it has
    spans, but only of ids kept as generated)."""
    return {"spans": 0, "positions": 0, "note": KEPT_NOTE if kept else IDENTICAL_NOTE, "since": [],
            **{m: [] for m in METRICS}, "mean": dict(IDENTICAL),
            "end": {"since": None, **IDENTICAL}}


def result(pl: Plan, ref_lp, alt_lp) -> dict:
    """The record field of one planned sample from its two contexts' log-probabilities."""
    n = len(pl.since)
    values = compare(ref_lp, alt_lp, pl.next_ids + [-1])
    end = {m: values[m][n] for m in METRICS}
    positions = {m: values[m][:n] for m in METRICS}
    mean = {m: mean_of(positions[m]) for m in METRICS}
    return {"spans": pl.n_spans, "positions": n, "note": None if n else NO_POSITION,
            "since": pl.since, **positions, "mean": mean,
            "end": {"since": pl.end_since, **end}}


def divergence_many(forward, reencoder, items: list[tuple[list[int], list[int]]],
                    after: int = DEFAULT_AFTER) -> list[dict]:
    """The ``divergence`` field of each (prompt ids, completion ids), computed with ``forward``
    (a `scoring.forward` forward) in one batch; canonical ids come from `check_ids_batch`."""
    from tmcli.measure.rollout_check import check_ids_batch

    prompts: list[list[int] | None] = [p for p, _g in items]
    checks = check_ids_batch(reencoder, [g for _p, g in items], prompts)
    plans = [plan(p, g, c, after) for (p, g), c in zip(items, checks)]
    out: list[dict | None] = [None] * len(items)
    todo = [i for i, pl in enumerate(plans) if pl.pair is not None]
    for i, pl in enumerate(plans):
        if pl.pair is None:
            out[i] = identical(bool(checks[i].spans))
    pairs = [plans[i].pair for i in todo]
    for k, ref_lp, alt_lp in forward.pair_logprobs(pairs):
        out[todo[k]] = result(plans[todo[k]], ref_lp, alt_lp)
    return out  # type: ignore[return-value]
