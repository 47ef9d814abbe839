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

Exact, and cheap. On a CPU each runs on one thread (numpy, and torch's softmax one row at a time):
a batched torch op between numpy's one-threaded steps would wake torch's second thread, whose
idle spinning afterwards costs more CPU time than the op saves, so the sampler around them
(`sampler._race`) then divides, subtracts the noise and takes the argmax in numpy too (the same
floats). top-k is one numpy partition (`torch.topk` elsewhere), only on rows that ask for it;
min-p is one softmax per row. top-p (`tmcli.generation.top_p`) sorts each row's values (numpy's
SIMD sort), gives them transformers' own softmax, and places the cut with float64 block sums
(the cumulative sum itself only where rounding could put a token on the other side); after a
top-k it decides from the few scores left with a rigorous error bound on transformers'
softmax, sorting only the rows that bound leaves undecided. Only where the cut falls inside a
run of tied scores does the order of ties decide which of them stay; that row is then cut
exactly as transformers cuts it (the same `torch.sort`). Every drop to -inf is branch-free
(`top_p.drop_rows`). Measured by `benchmarks/bench_generate.py --sections truncation` (32 rows
of SmolLM2's logits, 2 cores), the sampler's extra CPU time per step is about 2.5 ms for top-k
50, 1.5 ms for min-p 0.05, 12 ms for top-p 0.95 (half of it the sort) and 4 ms for top-k 50 +
top-p 0.9, each under 5% of a decode step (README, "Cost").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tmcli.errors import TmcliError, one_line


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
    from tmcli.generation.top_p import top_p_

    vocab = scores.shape[1]
    k_rows = [i for i, s in enumerate(settings) if 0 < s.top_k < vocab]
    left = {}  # row -> the scores top-k left, highest first, where it saw all of them
    if k_rows:
        left = _top_k(scores, k_rows, [settings[i].top_k for i in k_rows])
    p_rows = [i for i, s in enumerate(settings) if s.top_p < 1]
    if p_rows:
        top_p_(scores, p_rows, [settings[i].top_p for i in p_rows], left)
    m_rows = [i for i, s in enumerate(settings) if s.min_p > 0]
    if m_rows:
        _min_p(scores, m_rows, [settings[i].min_p for i in m_rows])
    return scores


def _top_k(scores, rows: list[int], ks: list[int]) -> dict:
    """Top-k on ``rows``; returns {row: the scores it left, highest first, then -inf} for the
    rows where the k + 1 highest scores it looked at hold all of them (no tie runs past)."""
    import numpy as np
    import torch

    from tmcli.generation.top_p import drop_below, on_cpu, put_rows, take_rows

    sub, index = take_rows(scores, rows)
    n = sub.shape[1]
    width = min(max(ks) + 1, n)
    if on_cpu(sub):  # numpy's SIMD selection, on one thread
        highest = np.partition(sub.numpy(), n - width, axis=1)[:, n - width:]
        top = torch.from_numpy(np.ascontiguousarray(np.sort(highest, axis=1)[:, ::-1]))
    else:
        top = torch.topk(sub, width).values
    k = torch.tensor(ks, dtype=torch.long, device=top.device)
    kth = top.gather(1, (k - 1)[:, None])
    drop_below(sub, kth)
    put_rows(scores, sub, index)
    # a row's finite scores are those >= its k-th: all in `top` unless its last one still is
    last = top[:, -1:]
    whole = ((last < kth) | (last == float("-inf"))).squeeze(1) | (width == n)
    kept = top.masked_fill_(top < kth, float("-inf"))
    return {r: kept[i] for i, r in enumerate(rows) if bool(whole[i])}


def _min_p(scores, rows: list[int], ms: list[float]) -> None:
    import numpy as np
    import torch

    from tmcli.generation.top_p import drop_rows, on_cpu, put_rows, softmax_rows, take_rows

    sub, index = take_rows(scores, rows)
    probs = softmax_rows(sub)
    if on_cpu(sub):  # the top token always stays (m <= 1)
        p = probs.numpy()
        floor = np.float32(ms) * p.max(axis=1)  # float32 products, as transformers'
        drop_rows(sub.numpy(), range(len(rows)), floor, keys=p)
    else:
        top = probs.amax(dim=-1, keepdim=True)
        m = torch.tensor(ms, dtype=probs.dtype, device=sub.device)[:, None]
        sub.masked_fill_(probs < m * top, float("-inf"))
    put_rows(scores, sub, index)


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
