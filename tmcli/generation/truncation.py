"""Truncated sampling: top-k, top-p and min-p, kept sets exactly as transformers' warpers make them.

A row's scores are its logits divided by its temperature (EOS already masked when the length is
forced), as transformers' warpers see them; `truncate_` sets every token outside the kept set to
-inf, in the order `generate()` applies them (`_get_logits_processor`): temperature, then top-k,
then top-p, then min-p, each on what the previous one kept. The seeded race
(`tmcli.generation.sampler`) then draws from the kept tokens, renormalised. Greedy rows (T=0)
and settings that truncate nothing (top-k 0, top-p 1, min-p 0) are never touched, so pure
sampling gives exactly the ids it gave before truncation existed.

What each one keeps (`transformers.generation.logits_process`, with ``min_tokens_to_keep`` 1):

- top-k ``k``: every token whose score is >= the k-th highest, so all tokens tied with it stay;
- top-p ``p``: sort ascending, softmax of the sorted scores, cumulative sum; drop tokens whose
  cumulative probability is <= 1 - p, never the last (the highest);
- min-p ``m``: drop tokens whose probability is < m times the top token's probability.

Exact, and cheap. top-k is one `torch.topk`, only on rows that ask for it. top-p needs the
cumulative sum over the whole sorted row: tmcli builds the same sorted values (which do not
depend on how ties are ordered) from `torch.topk` when few tokens are left (after top-k), else by
sorting the values alone (numpy's SIMD sort on a CPU, several times faster than `torch.sort` with
indices), and computes the same softmax and cumulative sum on them, so the kept set is
transformers' bit for bit. Only where the cut falls inside a run of tied scores does the order of
ties decide which of them stay; that row is then cut exactly as transformers cuts it (the same
`torch.sort`). min-p is one softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tmcli.errors import TmcliError, one_line

# Up to this many tokens left in a row (top-k), its sorted values come from `torch.topk`.
TOPK_SORT_MAX = 4096


@dataclass(frozen=True, order=True)
class Truncation:
    """One row's truncation settings; the defaults truncate nothing (pure sampling)."""

    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off

    def __post_init__(self):
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise TmcliError(f"top-k must be a whole number >= 0, got {self.top_k!r}",
                             hint="e.g. --top-k 50 (0 turns it off)")
        if not 0 <= self.top_p <= 1:
            raise TmcliError(f"top-p must be in [0, 1], got {self.top_p!r}",
                             hint="e.g. --top-p 0.95 (1 turns it off)")
        if not 0 <= self.min_p <= 1:
            raise TmcliError(f"min-p must be in [0, 1], got {self.min_p!r}",
                             hint="e.g. --min-p 0.05 (0 turns it off)")
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "min_p", float(self.min_p))

    @property
    def active(self) -> bool:
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0

    def as_dict(self) -> dict:
        return {"top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}

    def label(self) -> str:
        """``pure``, or what truncates: ``top-k 50``, ``top-p 0.95 min-p 0.05``..."""
        parts = [f"top-k {self.top_k}" if self.top_k else "",
                 f"top-p {self.top_p:g}" if self.top_p < 1 else "",
                 f"min-p {self.min_p:g}" if self.min_p else ""]
        return " ".join(p for p in parts if p) or "pure"

    def id_parts(self) -> tuple[str, str]:
        """What a record id adds for this setting: (to its digest's key, to its readable part,
        e.g. ``top_k50:top_p0.95:``); both empty when nothing truncates, so a pure-sampling
        record keeps the id it had before truncation existed."""
        if not self.active:
            return "", ""
        key = f"\0top_k={self.top_k}\0top_p={self.top_p!r}\0min_p={self.min_p!r}"
        label = "".join(part for part in (f"top_k{self.top_k}:" if self.top_k else "",
                                          f"top_p{self.top_p:g}:" if self.top_p < 1 else "",
                                          f"min_p{self.min_p:g}:" if self.min_p else ""))
        return key, label


NONE = Truncation()


def truncation_arg(settings: Sequence[Truncation]) -> dict:
    """The ``truncation=`` keyword of an engine's ``decode`` for rows with these ``settings``:
    asked only where a row truncates, so an engine registered before truncation existed still
    samples purely."""
    return {"truncation": list(settings)} if any(s.active for s in settings) else {}


def truncate_(scores, settings: Sequence[Truncation]):
    """Set the tokens outside each row's kept set to -inf, in place (``scores``: rows x vocab,
    float, logits already divided by the temperature); returns ``scores``. Rows whose setting
    truncates nothing are left as they are."""
    vocab = scores.shape[1]
    k_rows = [i for i, s in enumerate(settings) if 0 < s.top_k < vocab]
    if k_rows:
        _top_k(scores, k_rows, [settings[i].top_k for i in k_rows])
    p_rows = [i for i, s in enumerate(settings) if s.top_p < 1]
    if p_rows:
        # few tokens left in every such row only where a top-k of at most TOPK_SORT_MAX ran
        few = all(0 < settings[i].top_k <= TOPK_SORT_MAX for i in p_rows)
        _top_p(scores, p_rows, [settings[i].top_p for i in p_rows], few=few)
    m_rows = [i for i, s in enumerate(settings) if s.min_p > 0]
    if m_rows:
        _min_p(scores, m_rows, [settings[i].min_p for i in m_rows])
    return scores


def _rows(scores, rows: list[int]):
    """(the rows' scores, their index tensor or None when they are all the rows)."""
    import torch

    if len(rows) == scores.shape[0]:
        return scores, None
    index = torch.tensor(rows, dtype=torch.long, device=scores.device)
    return scores.index_select(0, index), index


def _put(scores, sub, index) -> None:
    if index is not None:
        scores.index_copy_(0, index, sub)


def _top_k(scores, rows: list[int], ks: list[int]) -> None:
    import torch

    sub, index = _rows(scores, rows)
    k = torch.tensor(ks, dtype=torch.long, device=scores.device)
    kth = torch.topk(sub, max(ks)).values.gather(1, (k - 1)[:, None])
    sub.masked_fill_(sub < kth, float("-inf"))
    _put(scores, sub, index)


def _sorted_values(sub, few: bool = True):
    """Each row's values in ascending order (what `torch.sort` returns as values), and the
    position before which every row holds only -inf. ``few``: the rows may hold few finite
    values (a top-k ran before); else they are sorted whole without counting them."""
    import numpy as np
    import torch

    most = int(torch.count_nonzero(torch.isfinite(sub), dim=1).max()) if few else sub.shape[1]
    if most <= TOPK_SORT_MAX:  # after top-k: the few finite values, the rest are -inf
        out = torch.full_like(sub, float("-inf"))
        out[:, sub.shape[1] - most:] = torch.topk(sub, most).values.flip(1)
        return out, sub.shape[1] - most
    if sub.device.type == "cpu" and sub.dtype == torch.float32:
        return torch.from_numpy(np.sort(sub.numpy(), axis=1)), 0
    return torch.sort(sub, dim=1).values, 0


def _top_p(scores, rows: list[int], ps: list[float], few: bool = True) -> None:
    import torch

    sub, index = _rows(scores, rows)
    ordered, start = _sorted_values(sub, few)
    # the softmax of the whole sorted row, as transformers computes it; its cumulative sum from
    # `start` on is the same (the -inf before add exact zeros), and only there can a token stay
    cumulative = ordered.softmax(dim=-1)[:, start:].cumsum(dim=-1)
    tail = ordered[:, start:]
    # transformers compares with the Python float 1 - top_p, cast to the scores' dtype
    limit = torch.tensor([1 - p for p in ps], dtype=cumulative.dtype, device=sub.device)[:, None]
    # tokens with cumulative <= limit are dropped, never the last; they are a prefix (a sum of
    # non-negative terms never falls), so their count is a binary search, not a pass over the row
    at = torch.searchsorted(cumulative, limit, right=True).clamp(max=cumulative.shape[1] - 1)
    first_kept = at.squeeze(1)
    lowest_kept = tail.gather(1, at)
    highest_dropped = tail.gather(1, (at - 1).clamp(min=0))
    tied = ((first_kept > 0) & (highest_dropped == lowest_kept).squeeze(1)).nonzero().flatten()
    # the cut splits tied scores: which of them stay is the sort's own order, so those rows are
    # cut by transformers' arithmetic itself
    exact = {r: _top_p_as_transformers(sub[r], ps[r]) for r in tied.tolist()}
    sub.masked_fill_(sub < lowest_kept, float("-inf"))
    for r, row in exact.items():
        sub[r] = row
    _put(scores, sub, index)


def _top_p_as_transformers(row, p: float):
    """One row cut by transformers' own arithmetic (`TopPLogitsWarper.__call__`)."""
    import torch

    row = row[None]
    ordered, order = torch.sort(row, descending=False)
    drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
    drop[..., -1:] = 0
    return row.masked_fill(drop.scatter(1, order, drop), float("-inf"))[0]


def _min_p(scores, rows: list[int], ms: list[float]) -> None:
    import torch

    sub, index = _rows(scores, rows)
    probs = sub.softmax(dim=-1)
    top = probs.amax(dim=-1, keepdim=True)
    m = torch.tensor(ms, dtype=probs.dtype, device=sub.device)[:, None]
    sub.masked_fill_(probs < m * top, float("-inf"))  # the top token always stays (m <= 1)
    _put(scores, sub, index)


# What `generate()` uses for a field the model's generation config leaves unset (transformers
# keeps this table in `GenerationConfig._get_default_generation_params`; these are its values
# in transformers 5.x and the constructor defaults of 4.x, used only if that method is gone).
_HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None}


def model_sampling_config(spec: str, *, trust_remote_code: bool = False) -> tuple[float, Truncation]:
    """(temperature, truncation) that ``model.generate()`` would sample ``spec`` with by default:
    its ``generation_config.json`` (none: transformers' own defaults), unset fields filled as
    transformers fills them (so a config that sets no top-k gets top-k 50, as the study's Pythia
    did). A config that does not sample (``do_sample`` false) is greedy: temperature 0 (its
    truncation then applies at the temperatures a user gives, as in ``generate(do_sample=True,
    temperature=t)``)."""
    from transformers import GenerationConfig

    from tmcli.sources.models import checkpoint_dir

    path = checkpoint_dir(spec, trust_remote_code=trust_remote_code)
    if path.is_dir() and not (path / "generation_config.json").is_file():
        config = GenerationConfig()  # none: what generate() starts from then
    else:
        try:
            config = GenerationConfig.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise TmcliError(f"cannot read the generation config of {spec}: {one_line(exc, 200)}",
                             hint="set --temperatures and --top-k/--top-p/--min-p yourself") \
                from None
    defaults = dict(_HF_DEFAULTS)
    table = getattr(GenerationConfig, "_get_default_generation_params", None)
    if callable(table):
        defaults.update({k: v for k, v in table().items() if k in defaults})

    def value(name: str):
        got = getattr(config, name, None)
        return defaults[name] if got is None else got

    try:
        cut = Truncation(int(value("top_k") or 0), float(value("top_p")),
                         float(value("min_p") or 0.0))
    except TmcliError as exc:
        raise TmcliError(f"{spec}'s generation config: {exc.message}",
                         hint="set --top-k/--top-p/--min-p yourself instead") from None
    return (float(value("temperature")) if value("do_sample") else 0.0), cut


def sampling_axes(spec: str, temperatures: Sequence[float] | None, cuts: list[Truncation],
                  sampling_config: str | None, *, trust_remote_code: bool = False,
                  note=None) -> tuple[list[float], list[Truncation]]:
    """The temperatures and truncation settings ``spec`` is sampled with: those given
    (temperatures default 1.0), or with ``sampling_config="model"`` the model's own
    (`model_sampling_config`; its temperature unless ``temperatures`` are given). ``note`` is
    told when the model is first converted to read its config."""
    if sampling_config != "model":
        return list(temperatures or [1.0]), cuts
    from tmcli.sources.models import needs_conversion

    if note is not None and needs_conversion(spec):
        note(f"converting {spec} to a checkpoint (first use, 20-90 s)")
    config_t, cut = model_sampling_config(spec, trust_remote_code=trust_remote_code)
    return list(temperatures or [config_t]), [cut]
