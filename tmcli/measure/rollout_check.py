"""`check_ids`: the in-loop check an RL or evaluation loop makes on every sampled rollout.

A training loop that re-tokenizes sampled text trains on ids it never sampled ("retokenization
drift"). `check_ids(tokenizer, token_ids, prompt_ids)` answers, for one rollout, whether its ids
are the tokenizer's canonical encoding of their own text, and if not, where and why: the same
measurement as `tmcli analyze` (in context of the prompt, byte-exact), with no file, no
statistics and no process pool, so it costs about one tokenizer encode of the completion.

The tokenizer is an alias or path (as ``--tokenizer``), a `tokenizers.Tokenizer`, or a
transformers fast tokenizer; its tables are built once and kept for the next call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from tmcli.errors import TmcliError
from tmcli.measure.causes import sample_causes

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8


@dataclass
class Span:
    """One difference: at completion token ``position``, the model sampled ``generated`` where
    the tokenizer would write ``canonical``; ``cause`` is one of `tmcli.measure.causes.CAUSES`."""

    position: int
    generated: list[int]
    canonical: list[int]
    cause: str


@dataclass
class IdsCheck:
    """The verdict on one rollout. ``canonical`` is False when any span differs; ``kind`` is
    canonical, merged, lengthened, resegmented, invalid_utf8 or unknown_id; ``canonical_ids`` is
    the completion as the tokenizer would encode it (in context), what a pipeline that
    re-tokenizes will train on (ids with no canonical form, unknown ids and invalid UTF-8, kept
    as sampled)."""

    canonical: bool
    kind: str
    n_tokens: int
    spans: list[Span] = field(default_factory=list)
    canonical_ids: list[int] = field(default_factory=list)
    boundary_merge: bool = False

    def __bool__(self) -> bool:  # `if check_ids(...)`: the rollout is canonical
        return self.canonical


def reencoder_for(tokenizer, *, context: bool = True):
    """The (cached) `Reencoder` for an alias/path, `tokenizers.Tokenizer` or transformers
    tokenizer."""
    from tmcli.measure.reencode import Reencoder

    if isinstance(tokenizer, Reencoder):
        return tokenizer
    key = (tokenizer if isinstance(tokenizer, str) else id(tokenizer), context)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit[1]
    from tmcli.measure.token_bytes import build_vocab, vocab_for

    if isinstance(tokenizer, str):
        vocab = vocab_for(tokenizer)
    else:
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not hasattr(backend, "to_str"):
            raise TmcliError(f"cannot use a {type(tokenizer).__name__} as a tokenizer",
                             hint="pass an alias or path, a tokenizers.Tokenizer or a fast "
                             "transformers tokenizer")
        vocab = build_vocab(backend)
    enc = Reencoder(vocab, context=context)
    _CACHE[key] = (tokenizer, enc)  # the object is kept, so its id cannot be reused
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return enc


def _as_list(ids) -> list[int]:
    """Plain ints from a list, numpy array or torch tensor of ids."""
    return [int(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def _apply(ids: list[int], spans: list[dict]) -> list[int]:
    """``ids`` with every span's generated ids replaced by its canonical ids."""
    out: list[int] = []
    pos = 0
    for sp in spans:
        out.extend(ids[pos : sp["position"]])
        out.extend(sp["after"])
        pos = sp["position"] + len(sp["before"])
    out.extend(ids[pos:])
    return out


def check_ids_batch(tokenizer, token_ids: list[list[int]],
                    prompt_ids: list[list[int] | None] | list[int] | None = None,
                    *, context: bool = True) -> list[IdsCheck]:
    """`check_ids` for a group of rollouts (a GRPO group): one tokenizer call for all of them.
    ``prompt_ids`` is one prompt shared by all, or one per rollout."""
    from tmcli.measure.alignment import Sample

    enc = reencoder_for(tokenizer, context=context)
    if prompt_ids is None or not len(prompt_ids) or not hasattr(prompt_ids[0], "__len__"):
        prompts = [prompt_ids] * len(token_ids)  # one prompt (ids) shared by all rollouts
    else:
        prompts = list(prompt_ids)
        if len(prompts) != len(token_ids):
            raise TmcliError(f"{len(token_ids)} rollouts but {len(prompts)} prompts",
                             hint="give one prompt for all, or one per rollout")
    out: list[IdsCheck | None] = [None] * len(token_ids)
    todo: list = []
    for k, (ids, prompt) in enumerate(zip(token_ids, prompts)):
        ids = _as_list(ids)
        prompt = None if prompt is None else _as_list(prompt)
        for what, seq in (("ids", ids), ("prompt ids", prompt or [])):
            bad = enc.invalid_id(seq)
            if bad is not None:  # ids the tokenizer lacks are measured (unknown_id), not refused
                raise TmcliError(f"{what} of rollout {k} hold {bad}, which cannot be a token id",
                                 hint="token ids are integers from 0 to 2**31 - 1")
        todo.append((k, Sample(ids, prompt)))
    metrics = enc.measure([s for _k, s in todo]) if todo else []
    for (k, smp), m in zip(todo, metrics):
        causes = sample_causes(enc.vocab, m)
        spans = [Span(sp["position"], sp["before"], sp["after"], c)
                 for sp, c in zip(m.spans, causes)]
        out[k] = IdsCheck(not m.noncanonical, m.kind, m.n_tokens, spans,
                          _apply(smp.token_ids, m.spans), m.boundary_merge)
    return out  # type: ignore[return-value]


def check_ids(tokenizer, token_ids: list[int], prompt_ids: list[int] | None = None,
              *, context: bool = True) -> IdsCheck:
    """Whether one rollout's sampled ids are canonical, and each span where they are not.

    ``prompt_ids`` (recommended) are the ids the completion continued: the completion is judged
    in context, as the tokenizer would encode prompt + completion, and a merge across the
    prompt/completion boundary is reported apart (``boundary_merge``), not as a span.
    """
    return check_ids_batch(tokenizer, [token_ids], prompt_ids, context=context)[0]
