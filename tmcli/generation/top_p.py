"""Top-p's kept set as transformers' `TopPLogitsWarper` makes it, bit for bit, and the row work
`truncation` shares with it.

Transformers sorts a row ascending, takes the float32 softmax of the sorted scores and their
cumulative sum (on a CPU torch accumulates it in float64 and rounds each value to float32), and
drops the tokens whose value is <= float32(1 - p), never the last. The float32 softmax depends on
the order its sum adds the exps in, so the sorted row itself is needed to reproduce it; a row is
therefore sorted (values only: numpy's SIMD sort on a CPU) and given the same softmax, one row at
a time. The cumulative sum is not redone: float64 sums of blocks of 256 find the block the cut
falls in and a running sum inside it the position, decided where it is farther from the
threshold than the float64 rounding of either sum can reach (`_cut_blocks`); a row where it is
not gets transformers' cumulative sum itself. A row whose cut splits tied scores is cut by
transformers' own arithmetic, as the sort's order of the ties decides which of them stay.

After top-k only a few scores are left (their values are top-k's): such a row is decided from
those alone, with a rigorous bound on how far transformers' float32 softmax of the whole row can
be from this softmax of the few (`_top_p_few`); a row the bound leaves undecided is sorted.

On a CPU every step runs on one thread (numpy, and torch ops on one row at a time): between
numpy's one-threaded work, a batched torch op would wake torch's other thread, whose idle
spinning afterwards costs more CPU time than the op saves.
"""

from __future__ import annotations

_U32, _U64 = 2.0 ** -24, 2.0 ** -53  # the unit roundoffs of float32 and float64
BLOCK = 256  # tokens per float64 block sum when finding a cut
CHUNK = 8  # rows sorted at a time


def on_cpu(t) -> bool:
    """A contiguous CPU float32 tensor: numpy works on it in place, on one thread."""
    import torch

    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def take_rows(scores, rows: list[int]):
    """(the rows' scores, their indices, or None when they are all the rows)."""
    import torch

    if len(rows) == scores.shape[0]:
        return scores, None
    if on_cpu(scores):
        return torch.from_numpy(scores.numpy()[rows]), rows
    index = torch.tensor(rows, dtype=torch.long, device=scores.device)
    return scores.index_select(0, index), index


def put_rows(scores, sub, index) -> None:
    """Write rows `take_rows` took back into ``scores``."""
    if index is None:
        return
    if isinstance(index, list):
        scores.numpy()[index] = sub.numpy()
    else:
        scores.index_copy_(0, index, sub)


def drop_below(sub, floor) -> None:
    """Set each row's scores below its ``floor`` (rows x 1) to -inf, in place."""
    if on_cpu(sub) and on_cpu(floor):
        drop_rows(sub.numpy(), range(sub.shape[0]), floor.numpy()[:, 0])
    else:
        sub.masked_fill_(sub < floor, float("-inf"))


def drop_rows(a, rows, floors, keys=None) -> None:
    """Set row ``rows[i]`` of ``a`` (float32) to -inf where its ``keys[i]`` (the row itself by
    default) are below ``floors[i]``, in place, one row at a time (it stays in cache).

    Without a branch per token (a masked store costs several times more when the kept share is
    neither tiny nor huge): key - floor is negative exactly where key < floor (an IEEE
    difference keeps its sign and is zero only when they are equal), so times inf it is -inf
    there, and +inf or NaN (equal) elsewhere, and fmin with the row, which ignores NaN, drops
    just those. A CPU set to flush subnormals to zero could zero a tiny negative difference:
    there the comparison itself is used."""
    import numpy as np

    flush = np.float32(2.0 ** -126) * np.float32(0.5) == 0
    gap = np.empty(a.shape[1], dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for i, r in enumerate(rows):
            row = a[r]
            key = row if keys is None else keys[i]
            floor = np.float32(floors[i])
            if flush:
                np.copyto(row, -np.inf, where=key < floor)
                continue
            np.subtract(key, floor, out=gap)
            np.multiply(gap, np.float32(np.inf), out=gap)
            np.fmin(row, gap, out=row)


def softmax_rows(sub):
    """torch's softmax of each row (the kernel transformers uses), one row at a time on a CPU."""
    import numpy as np
    import torch

    if not on_cpu(sub):
        return sub.softmax(dim=-1)
    out = torch.from_numpy(np.empty(tuple(sub.shape), dtype=np.float32))
    for i in range(sub.shape[0]):
        torch.softmax(sub[i], 0, out=out[i])
    return out


def top_p_(scores, rows: list[int], ps: list[float], left: dict) -> None:
    """Top-p on ``rows`` of ``scores``, in place; ``left``: {row: the scores top-k left, highest
    first, then -inf} for rows a top-k ran on."""
    sub, index = take_rows(scores, rows)
    if on_cpu(sub):
        a = sub.numpy()
        few = [i for i, r in enumerate(rows) if r in left and bool(left[r][0] > float("-inf"))]
        decided = _top_p_few([left[rows[i]] for i in few], [ps[i] for i in few], few) \
            if few else {}
        drop_rows(a, list(decided), list(decided.values()))
        rest = [i for i in range(len(rows)) if i not in decided]
        if rest:
            _top_p_sorted(a, rest, [ps[i] for i in rest])
    else:
        _top_p_sorted_torch(sub, ps)
    put_rows(scores, sub, index)


def _midpoints(ps: list[float]):
    """float64 midpoints between each float32(1 - p), which transformers compares with (the
    Python float cast to the scores' dtype), and the next float32: a float64 running sum below
    it rounds to a float32 <= the limit, one above it to a float32 above."""
    import numpy as np

    low = np.float32([1 - p for p in ps])
    return (low.astype(np.float64) + np.nextafter(low, np.float32(2)).astype(np.float64)) / 2


def _top_p_few(values: list, ps: list[float], ids: list[int]) -> dict[int, float]:
    """Top-p on rows holding only a few finite scores (``values``: each row's, highest first,
    then -inf), decided without transformers' sort where an error bound allows: {ids[i]: the
    lowest score row i keeps} for the rows decided; the others go to `_top_p_sorted`.

    For the token of descending rank k, transformers' float64 running sum ``D`` is the mass of
    every token but the k - 1 highest: ``P = (total - top(k - 1)) / total`` exactly, computed here
    in float64 from this row's own float32 softmax. How far can ``D`` be from ``P``? The row has
    m finite scores, so at most m non-zero exps ``e_j`` (-inf gives an exact zero). Transformers'
    softmax is ``e_j / S`` rounded twice (2u, u = 2^-24), ``S`` its float32 sum of the exps in
    whatever order its kernel adds them: a term passes through at most m - 1 additions that
    round (an addition with a zero operand is exact), so ``S`` is within gamma(m - 1) =
    (m-1)u / (1 - (m-1)u) of the exact sum, whatever the order (Higham, Lemma 3.1). The same
    holds for the softmax here, whose ``S`` cancels in ``P``; the exps are of the same float32
    arguments, by the same kernel (at worst a few ulp apart). Its float64 running sum adds at
    most m 2^-53 (it adds the zeros exactly). So ``D = P (1 + d)`` with |d| <= gamma(m - 1) + 10u
    + m 2^-53; ``rel`` below is 4 (gamma(m - 1) + 16u), and ``eps`` 4x the float64 rounding of
    ``P`` and of that running sum (``P`` <= 1). A token is then kept
    for sure when ``P (1 - rel) - eps > mid`` and dropped for sure when ``P (1 + rel) + eps <
    mid`` (`_midpoints`). A row is decided when its lowest sure-kept token and the next are both
    sure and their scores differ (else the sort's order of the ties picks which stay): as ``D``
    falls with k, every token above is kept and every one below dropped, as transformers does."""
    import numpy as np
    import torch

    v = torch.stack(values)
    rows, width = v.shape
    a = v.numpy()
    probs = softmax_rows(v).numpy().astype(np.float64)
    finite = np.isfinite(a)
    m = finite.sum(axis=1)
    total = probs.sum(axis=1)
    # the mass of the k - 1 highest for k = 1, 2, ...: a float running sum never falls
    higher = np.cumsum(probs, axis=1)
    higher = np.concatenate([np.zeros((rows, 1)), higher[:, :-1]], axis=1)
    share = (total[:, None] - higher) / total[:, None]
    share[~finite] = 0.0  # below every finite score: an exact zero in transformers' sum
    gamma = (m - 1) * _U32 / (1 - (m - 1) * _U32)
    rel = (4 * (gamma + 16 * _U32))[:, None]
    eps = 4 * (3 * width + 4) * _U64  # this total and running sum, transformers' running sum
    mid = _midpoints(ps)[:, None]
    sure = share * (1 - rel) - eps > mid  # a prefix, as share never rises
    count = np.maximum(sure.sum(axis=1), 1)  # the highest token always stays
    at = np.arange(rows)
    after = np.minimum(count, width - 1)
    nxt = np.where(count < width, share[at, after], 0.0)
    gone = nxt * (1 + rel[:, 0]) + eps < mid[:, 0]
    lowest = a[at, count - 1]
    below = np.where(count < width, a[at, after], -np.inf)
    return {ids[i]: float(lowest[i]) for i in np.flatnonzero(gone & (lowest > below))}


def _top_p_sorted(a, rows: list[int], ps: list[float]) -> None:
    """Top-p by transformers' own arithmetic on ``rows`` of ``a`` (a CPU float32 array), in
    place, a few rows at a time (their sorted values and softmax stay in cache; the buffers are
    reused): each row sorted (values only: numpy's SIMD sort, several times torch.sort's speed),
    its softmax by torch's kernel as transformers computes it (the same floats), its cut found
    by `_cut_blocks` or, where that is unsure, by the cumulative sum itself."""
    import numpy as np
    import torch

    n = a.shape[1]
    mids = _midpoints(ps)
    size = min(CHUNK, len(rows))
    ordered = np.empty((size, n), dtype=np.float32)
    probs = np.empty((size, n), dtype=np.float32)
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        k = len(chunk)
        for j, r in enumerate(chunk):
            ordered[j] = a[r]
        ordered[:k].sort(axis=1)
        for j in range(k):  # one row at a time: a batch would be split over torch's threads
            torch.softmax(torch.from_numpy(ordered[j]), 0, out=torch.from_numpy(probs[j]))
        cut, sure = _cut_blocks(probs[:k], mids[start:start + k])
        for j in np.flatnonzero(~sure).tolist():  # the cumulative sum itself
            cumulative = torch.from_numpy(probs[j]).cumsum(dim=0)
            limit = torch.tensor([1 - ps[start + j]], dtype=torch.float32)
            cut[j] = min(int(torch.searchsorted(cumulative, limit, right=True)), n - 1)
        lowest = ordered[np.arange(k), cut]
        tied = (cut > 0) & (ordered[np.arange(k), np.maximum(cut - 1, 0)] == lowest)
        for j in np.flatnonzero(tied).tolist():  # the cut splits tied scores: the sort's own
            r = chunk[j]  # order picks which of them stay
            a[r] = _top_p_as_transformers(torch.from_numpy(a[r]), ps[start + j]).numpy()
        clear = np.flatnonzero(~tied).tolist()
        drop_rows(a, [chunk[j] for j in clear], lowest[clear])


def _top_p_sorted_torch(sub, ps: list[float]) -> None:
    """`_top_p_sorted` on any device, batched in torch: the same sorted values, softmax and
    cumulative sum as transformers."""
    import torch

    ordered = torch.sort(sub, dim=1).values
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    # transformers compares with the Python float 1 - top_p, cast to the scores' dtype
    limit = torch.tensor([1 - p for p in ps], dtype=cumulative.dtype, device=sub.device)[:, None]
    # tokens with cumulative <= limit are dropped, never the last: a prefix, a binary search
    at = torch.searchsorted(cumulative, limit, right=True).clamp(max=sub.shape[1] - 1)
    lowest_kept = ordered.gather(1, at)
    highest_dropped = ordered.gather(1, (at - 1).clamp(min=0))
    tied = ((at > 0) & (highest_dropped == lowest_kept)).squeeze(1).nonzero().flatten().tolist()
    exact = {r: _top_p_as_transformers(sub[r], ps[r]) for r in tied}
    sub.masked_fill_(sub < lowest_kept, float("-inf"))
    for r, row in exact.items():
        sub[r] = row


def _cut_blocks(probs, mid):
    """Each sorted row's cut (its first kept position) without the cumulative sum over the whole
    row: float64 sums of blocks of `BLOCK`, then a running sum inside the block the cut falls in;
    (the positions, whether each is sure).

    Transformers' value at a position is its float64 running sum ``D`` rounded to float32: <= the
    limit when ``D`` < ``mid`` (`_midpoints`), above it when ``D`` > ``mid``. The sums here add
    the same float32 terms in another order; both are within (n + BLOCK) 2^-53 of the exact sum
    (non-negative terms, any order), so a position farther than 4x twice that from ``mid`` is on
    the same side as transformers'. A row with the cut's neighbours nearer, or its cut outside
    the block (the two sums disagree on the block), is left unsure."""
    import numpy as np

    rows, n = probs.shape
    size = min(BLOCK, n)
    whole = n // size * size
    blocks = probs[:, :whole].reshape(rows, -1, size).sum(axis=2, dtype=np.float64)
    if whole < n:
        rest = probs[:, whole:].sum(axis=1, dtype=np.float64)
        blocks = np.concatenate([blocks, rest[:, None]], axis=1)
    ends = np.cumsum(blocks, axis=1)
    block = np.minimum((ends <= mid[:, None]).sum(axis=1), blocks.shape[1] - 1)
    first = block * size
    at = np.arange(rows)
    before = np.where(block > 0, ends[at, block - 1], 0.0)
    span = first[:, None] + np.arange(size)
    inside = np.where(span < n, probs[at[:, None], np.minimum(span, n - 1)], 0)
    # D from the position before the block on: [before, D(first), D(first + 1), ...]
    running = np.concatenate([before[:, None], before[:, None] + np.cumsum(
        inside, axis=1, dtype=np.float64)], axis=1)
    count = (running[:, 1:] <= mid[:, None]).sum(axis=1)
    cut = np.minimum(first + count, n - 1)  # never the last token
    slack = 8 * (n + size + 2) * _U64
    j = cut - first + 1  # D(cut) in running
    dropped = (cut == 0) | (running[at, np.maximum(j - 1, 0)] * (1 + slack) < mid)
    kept = (cut == n - 1) | ((j < size + 1) & (
        running[at, np.minimum(j, size)] * (1 - slack) > mid))
    return cut, dropped & kept


def _top_p_as_transformers(row, p: float):
    """One row cut by transformers' own arithmetic (`TopPLogitsWarper.__call__`)."""
    import torch

    row = row[None]
    ordered, order = torch.sort(row, descending=False)
    drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
    drop[..., -1:] = 0
    return row.masked_fill(drop.scatter(1, order, drop), float("-inf"))[0]
