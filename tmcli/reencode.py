"""The measurement engine: how a completion's canonical re-encoding differs from the generated ids.

Both tokenizations spell the same bytes, so they are aligned exactly by byte offsets: the offsets
where both sequences have a token boundary cut the text into segments, and a segment differs when
either side has more than one token there or the single ids differ. Every difference is therefore
a *span* (position, generated ids, canonical ids), and the per-sample, per-window and per-token
figures are sums over spans, so windows add up to the whole sequence exactly.

Context: the prompt's ids are prepended before re-encoding, so a completion is judged as part of
the document it continues. Spans wholly inside the completion are the model's; a span that
straddles the prompt/completion boundary (a merge the model could not undo) is reported apart.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np

from tmcli.vocab import Vocab

KINDS = ("canonical", "merged", "lengthened", "resegmented")
WINDOW_METHODS = ("aligned", "study")


@dataclass
class Sample:
    """One completion: the generated ids and, when known, the prompt ids it continued."""

    token_ids: list[int]
    prompt_ids: list[int] | None = None


def _invalid_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of ``data`` that are not valid UTF-8."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            out.append((pos + exc.start, pos + exc.end))
            pos += exc.end
    return out


def _text_plan(ids: list[int], vocab: Vocab) -> tuple[list, int]:
    """Split a run of non-special ids into text to re-encode and tokens kept verbatim.

    Valid UTF-8 is re-encoded. Tokens that spell invalid UTF-8 (a character cut by the end of
    generation, or stray byte tokens) have no canonical form, so they are kept as generated and
    only counted: the text between them is re-encoded as usual.
    """
    data = vocab.spell(ids)
    try:
        return [data.decode("utf-8")], 0
    except UnicodeDecodeError:
        pass
    bad_ranges = _invalid_ranges(data)
    invalid = sum(e - s for s, e in bad_ranges)
    ends = np.cumsum(vocab.lengths[np.asarray(ids, dtype=np.int64)])
    starts = ends - vocab.lengths[np.asarray(ids, dtype=np.int64)]
    verbatim = np.zeros(len(ids), dtype=bool)
    while bad_ranges:
        for s, e in bad_ranges:  # tokens overlapping [s, e)
            verbatim[(starts < e) & (ends > s)] = True
        bad_ranges = []
        for seg_start, seg_end in _runs(~verbatim):
            chunk = data[starts[seg_start] : ends[seg_end - 1]]
            offset = int(starts[seg_start])
            bad_ranges += [(offset + s, offset + e) for s, e in _invalid_ranges(chunk)]
    plan: list = []
    pos = 0
    for seg_start, seg_end in _runs(~verbatim):
        if seg_start > pos:
            plan.append([int(i) for i in ids[pos:seg_start]])
        plan.append(data[starts[seg_start] : ends[seg_end - 1]].decode("utf-8"))
        pos = seg_end
    if pos < len(ids):
        plan.append([int(i) for i in ids[pos:]])
    return plan, invalid


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in ``mask``."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


class Reencoder:
    """Measures samples in batches; one instance per tokenizer (building it reads the vocab)."""

    def __init__(self, vocab: Vocab, *, window: int = 64, context: bool = True):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.vocab = vocab
        self.window = window
        self.context = context

    # -- validation -------------------------------------------------------------------------
    def invalid_id(self, ids) -> int | None:
        """The first id that is not in the vocabulary, else None."""
        if not len(ids):
            return None
        size = self.vocab.size
        try:
            arr = np.asarray(ids, dtype=np.int64)
        except OverflowError:
            return next(i for i in ids if not -(2**63) <= i < 2**63)
        bad = (arr < 0) | (arr >= size)
        if not bad.any():
            bad = ~self.vocab.known[arr]
        return int(arr[bad][0]) if bad.any() else None

    # -- canonical re-encoding --------------------------------------------------------------
    def canonical(self, ids_list: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """Canonical ids for each id sequence (specials kept in place), and invalid-byte counts."""
        vocab = self.vocab
        special = vocab.special
        plans: list[list] = []
        texts: list[str] = []
        invalid_counts: list[int] = []
        for ids in ids_list:
            plan: list = []
            invalid = 0
            arr = np.asarray(ids, dtype=np.int64)
            sp = special[arr] if len(arr) else np.zeros(0, dtype=bool)
            cuts = np.flatnonzero(sp)
            start = 0
            for cut in [*cuts.tolist(), len(ids)]:
                if cut > start:
                    pieces, bad = _text_plan(ids[start:cut], vocab)
                    invalid += bad
                    for piece in pieces:
                        if isinstance(piece, str):
                            plan.append(len(texts))
                            texts.append(piece)
                        else:
                            plan.append(piece)
                if cut < len(ids):
                    plan.append([int(ids[cut])])
                start = cut + 1
            plans.append(plan)
            invalid_counts.append(invalid)
        encoded = vocab.encode_texts(texts)
        out = []
        for plan in plans:
            c: list[int] = []
            for item in plan:
                c.extend(encoded[item] if isinstance(item, int) else item)
            out.append(c)
        return out, invalid_counts

    # -- measurement --------------------------------------------------------------------------
    def measure(self, samples: list[Sample], *, method: str = "aligned") -> list[dict]:
        """Per-sample metrics. ``method='study'`` adds the study's per-window figures."""
        if method not in WINDOW_METHODS:
            raise ValueError(f"window method must be one of {WINDOW_METHODS}")
        fulls = []
        prompt_lens = []
        for s in samples:
            prompt = list(s.prompt_ids or []) if self.context else []
            fulls.append(prompt + list(s.token_ids))
            prompt_lens.append(len(prompt))
        canon, invalid = self.canonical(fulls)
        results = [
            self._compare(full, c, p, bad)
            for full, c, p, bad in zip(fulls, canon, prompt_lens, invalid)
        ]
        if method == "study":
            for r, s in zip(results, samples):
                r.update(self._study(list(s.token_ids)))
        return results

    def segments(self, full: list[int], c: list[int]) -> tuple[list[tuple[int, int, int, int]], bool]:
        """Where ``full`` and its canonical form ``c`` differ: (a_start, a_end, b_start, b_end)
        per differing segment, ends exclusive, and whether byte offsets aligned them (else an
        id-level diff did)."""
        lengths = self.vocab.lengths
        a = np.asarray(full, dtype=np.int64)
        b = np.asarray(c, dtype=np.int64)
        la, lb = lengths[a], lengths[b]
        A, B = np.cumsum(la), np.cumsum(lb)
        aligned = len(a) > 0 and len(b) > 0 and A[-1] == B[-1] and la.min() > 0 and lb.min() > 0
        if aligned:
            return self._byte_segments(a, b, A, B), True
        return self._diff_segments(full, c), False

    def _compare(self, full: list[int], c: list[int], p: int, invalid: int) -> dict:
        segments, aligned = self.segments(full, c)
        a = np.asarray(full, dtype=np.int64)
        b = np.asarray(c, dtype=np.int64)
        return self._summarise(a, b, segments, p, invalid, aligned)

    @staticmethod
    def _byte_segments(a, b, A, B):
        """Differing segments as (a_start, a_end, b_start, b_end), ends exclusive."""
        common = np.intersect1d(A, B, assume_unique=True)
        ia = np.searchsorted(A, common)
        ib = np.searchsorted(B, common)
        sa = np.concatenate(([0], ia[:-1] + 1))
        sb = np.concatenate(([0], ib[:-1] + 1))
        same = (ia == sa) & (ib == sb) & (a[ia] == b[ib])
        k = np.flatnonzero(~same)
        return list(zip(sa[k].tolist(), (ia[k] + 1).tolist(), sb[k].tolist(), (ib[k] + 1).tolist()))

    @staticmethod
    def _diff_segments(full, c):
        """Fallback when byte spellings do not line up (normalisers, <unk>): an id-level diff."""
        sm = difflib.SequenceMatcher(None, full, c, autojunk=False)
        return [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]

    def _summarise(self, a, b, segments, p, invalid, aligned) -> dict:
        n = len(a) - p
        W = self.window
        nw = max(1, math.ceil(n / W))
        spans = []
        win_delta = np.zeros(nw, dtype=np.float64)
        win_nc = np.zeros(nw, dtype=np.int64)
        delta_sum = 0
        nc_tokens = 0
        boundary = None
        prompt_nc = False
        for a0, a1, b0, b1 in segments:
            if a1 <= p:
                prompt_nc = True
                continue
            if a0 < p:
                boundary = {"before": a[a0:a1].tolist(), "after": b[b0:b1].tolist()}
                continue
            pos = a0 - p
            before, after = a[a0:a1].tolist(), b[b0:b1].tolist()
            delta = len(before) - len(after)
            spans.append({"position": pos, "before": before, "after": after})
            delta_sum += delta
            nc_tokens += len(before)
            share = delta / len(before)  # a span's saving is spread over the tokens it replaces
            for q in range(pos, pos + len(before)):
                win_delta[q // W] += share
                win_nc[q // W] += 1
        win_tokens = np.full(nw, W, dtype=np.int64)
        win_tokens[-1] = n - W * (nw - 1) if n > 0 else 0
        if not spans:
            kind = "canonical"
        elif delta_sum > 0:
            kind = "merged"
        elif delta_sum < 0:
            kind = "lengthened"
        else:
            kind = "resegmented"
        with np.errstate(invalid="ignore", divide="ignore"):
            win_comp = np.where(win_tokens > 0, win_delta / np.maximum(win_tokens, 1), np.nan)
        return {
            "n_tokens": n,
            "n_reencoded": n - delta_sum,
            "compression": delta_sum / n if n else float("nan"),
            "noncanonical": bool(spans),
            "kind": kind,
            "n_spans": len(spans),
            "noncanonical_tokens": nc_tokens,
            "token_rate": nc_tokens / n if n else float("nan"),
            "first_divergence": spans[0]["position"] if spans else None,
            "boundary_merge": boundary is not None,
            "boundary_span": boundary,
            "prompt_noncanonical": prompt_nc,
            "byte_exact": bool(aligned and invalid == 0),
            "invalid_bytes": invalid,
            "spans": spans,
            "window_delta": win_delta.tolist(),
            "window_tokens": win_tokens.tolist(),
            "window_compression": win_comp.tolist(),
            "window_noncanonical": win_nc.tolist(),
        }

    # -- the study's method ---------------------------------------------------------------
    def _study(self, g: list[int]) -> dict:
        """Exactly the study script's arithmetic: decode, re-encode alone, divide by the window.

        Quirks kept on purpose: merges across window edges are missed, multi-byte characters cut
        at an edge decode to U+FFFD, the last short window is still divided by the full window
        size, special tokens are dropped from the text but counted, and SentencePiece tokenizers
        add their prefix space to each window. (The study's transformers version also cleaned up
        spaces on decode; tmcli never does.)
        """
        tok = self.vocab.original
        W = self.window
        chunks = [g[i : i + W] for i in range(0, len(g), W)] or [[]]
        texts = tok.decode_batch([g, *chunks], skip_special_tokens=True)
        encs = tok.encode_batch_fast(texts, add_special_tokens=False)
        n = len(g)
        whole = len(encs[0].ids)
        return {
            "study_compression": (n - whole) / n if n else float("nan"),
            "study_window_compression": [
                (len(ch) - len(e.ids)) / W for ch, e in zip(chunks, encs[1:])
            ],
        }
