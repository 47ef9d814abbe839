"""The measurement engine: how a completion's canonical re-encoding differs from the generated ids.

Exact by construction: the canonical ids of a text are the tokenizer's own ``encode`` of it (a
copy of the tokenizer that adds no prefix space and never parses special-token strings; see
`token_bytes.py`). Nothing here re-implements a tokenizer rule, nothing is cached across samples, so a
sample's verdict never depends on what else is in the file.

Both tokenizations spell the same bytes, so they are aligned exactly by byte offsets: the offsets
where both sequences have a token boundary cut the text into segments, and a segment differs when
the ids there differ. Every difference is a *span* (position, generated ids, canonical ids,
kind), and the per-sample, per-window and per-token figures are sums over spans, so windows add
up to the whole sequence exactly.

What has no canonical form is kept as generated and flagged, never re-spelled:
- special (control) tokens: kept in place, the text on each side encoded on its own, as the
  tokenizer does; they are not differences;
- ids the tokenizer lacks (unused embedding rows real models sample at high temperature):
  non-canonical, spans of kind ``unknown_id``;
- tokens that spell invalid UTF-8 inside the text: no text encodes to them, so they are
  non-canonical, spans of kind ``invalid_utf8``;
- a character cut by the length limit at the very end (a valid but incomplete UTF-8 prefix in
  the last tokens): not the model's doing, so not a difference; counted in ``cut_bytes``.
A normaliser that rewrites text (NFC: U+F905 -> U+4E32, whatever the byte length) makes the
canonical ids spell other bytes: the sample is flagged ``normalized`` and aligned through the
tokenizer's own character offsets.

Context: the prompt's ids are prepended before re-encoding, so a completion is judged as part of
the document it continues. Spans wholly inside the completion are the model's; a span that
straddles the prompt/completion boundary (a merge the model could not undo) is reported apart.
"""

from __future__ import annotations

import math

import numpy as np

from tmcli.measure.alignment import (
    _FLAGGED,
    CUT,
    INVALID,
    MAX_ID,
    SPECIAL,
    TEXT,
    UNKNOWN,
    WINDOW_METHODS,
    Canonical,
    Sample,
    _invalid_ranges,
    _runs,
)
from tmcli.measure.metrics import DiffSpan, SampleMetrics
from tmcli.measure.token_bytes import Vocab


class Reencoder:
    """Measures samples in batches; one instance per tokenizer (building it reads the vocab)."""

    def __init__(self, vocab: Vocab, *, window: int = 64, context: bool = True):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.vocab = vocab
        self.window = window
        self.context = context

    # -- validation -------------------------------------------------------------------------
    @staticmethod
    def invalid_id(ids) -> int | None:
        """The first value that cannot be a token id (negative, or >= 2**31), else None. Ids the
        tokenizer lacks are not invalid: they are measured as non-canonical ``unknown_id``."""
        if not len(ids):
            return None
        try:
            arr = np.asarray(ids, dtype=np.int64)
        except OverflowError:
            return next(i for i in ids if not 0 <= i < MAX_ID)
        bad = (arr < 0) | (arr >= MAX_ID)
        return int(arr[bad][0]) if bad.any() else None

    # -- canonical re-encoding --------------------------------------------------------------
    def _classes(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per token: spelled length, special?, unknown?"""
        vocab = self.vocab
        inside = arr < vocab.size
        idx = np.where(inside, arr, 0)
        unknown = ~inside | ~vocab.known[idx]
        special = vocab.special[idx] & ~unknown
        lengths = np.where(unknown, 1, vocab.lengths[idx])
        return lengths, special, unknown

    def plan(self, ids: list[int]) -> tuple[list[tuple], np.ndarray, int, int]:
        """Split one id sequence into items (kind, start, end[, text]): text to re-encode, and
        tokens kept verbatim (special, unknown, invalid, cut). Also the per-token byte lengths,
        the invalid byte count and the cut byte count."""
        arr = np.asarray(ids, dtype=np.int64)
        lengths, special, unknown = self._classes(arr)
        items: list[tuple] = []
        invalid = cut = 0
        barrier = special | unknown
        if not barrier.any():
            runs = [(0, len(arr))] if len(arr) else []
        else:
            runs = _runs(~barrier)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        pos = 0
        for r0, r1 in [*runs, (len(arr), len(arr))]:
            k = pos
            while k < r0:  # kept tokens: each special alone, unknown ids by runs
                j = k + 1
                while unknown[k] and j < r0 and unknown[j]:
                    j += 1
                items.append((UNKNOWN if unknown[k] else SPECIAL, k, j))
                k = j
            if r1 > r0:
                text_items, bad, chopped = self._text_items(ids, r0, r1, starts, ends,
                                                            r1 == len(arr))
                items.extend(text_items)
                invalid += bad
                cut += chopped
            pos = r1
        return items, lengths, invalid, cut

    def _text_items(self, ids, r0, r1, starts, ends, at_end) -> tuple[list[tuple], int, int]:
        """Items of one run of text tokens [r0, r1): valid UTF-8 is text; tokens overlapping
        invalid bytes are kept (a cut character at the very end of the sequence apart)."""
        data = self.vocab.spell(ids[r0:r1])
        try:
            return [(TEXT, r0, r1, data.decode("utf-8"))], 0, 0
        except UnicodeDecodeError:
            pass
        base = int(starts[r0])
        s, e = starts[r0:r1] - base, ends[r0:r1] - base
        kept = np.zeros(r1 - r0, dtype=np.int8)  # 0 text, 1 invalid, 2 cut
        bad_ranges = _invalid_ranges(data)
        while bad_ranges:
            for b0, b1, tail in bad_ranges:  # tokens overlapping [b0, b1)
                hit = (s < b1) & (e > b0)
                kept[hit] = np.maximum(kept[hit], 1 if not (tail and at_end) else 2)
            bad_ranges = []
            for t0, t1 in _runs(kept == 0):  # text between kept tokens may now be cut mid-char
                chunk = data[s[t0] : e[t1 - 1]]
                off = int(s[t0])
                bad_ranges += [(off + x0, off + x1, tail and off + x1 == len(data))
                               for x0, x1, tail in _invalid_ranges(chunk)]
        items: list[tuple] = []
        invalid = cut = 0
        k = 0
        n = r1 - r0
        while k < n:
            j = k
            while j < n and kept[j] == kept[k]:
                j += 1
            if kept[k] == 0:
                items.append((TEXT, r0 + k, r0 + j, data[s[k] : e[j - 1]].decode("utf-8")))
            else:
                size = int(e[j - 1] - s[k])
                if kept[k] == 2:
                    cut += size
                else:
                    invalid += size
                items.append((CUT if kept[k] == 2 else INVALID, r0 + k, r0 + j))
            k = j
        return items, invalid, cut

    def canonical_forms(self, ids_list: list[list[int]]) -> list[Canonical]:
        """Each id sequence with its canonical form, aligned (one batched encode call)."""
        plans = [self.plan(ids) for ids in ids_list]
        texts = [it[3] for items, *_ in plans for it in items if it[0] == TEXT]
        encoded = self.vocab.encode_texts(texts)
        out = []
        k = 0
        for ids, (items, lengths, invalid, cut) in zip(ids_list, plans):
            n_text = sum(1 for it in items if it[0] == TEXT)
            out.append(self._assemble(ids, items, lengths, encoded[k : k + n_text], invalid, cut))
            k += n_text
        return out

    def canonical(self, ids_list: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """Canonical ids for each id sequence (kept tokens in place), and invalid-byte counts."""
        forms = self.canonical_forms(ids_list)
        return [f.canon.tolist() for f in forms], [f.invalid_bytes for f in forms]

    def _assemble(self, ids, items, lengths, encoded, invalid, cut) -> Canonical:
        vocab = self.vocab
        arr = np.asarray(ids, dtype=np.int64)
        ends_a = np.cumsum(lengths)
        starts_a = ends_a - lengths
        canon_parts, end_parts, flagged = [], [], []
        normalized = False
        k = 0
        for item in items:
            kind, i0, i1 = item[0], item[1], item[2]
            if kind != TEXT:
                canon_parts.append(arr[i0:i1])
                end_parts.append(ends_a[i0:i1])
                if kind in _FLAGGED:
                    flagged.append((i0, i1, _FLAGGED[kind]))
                continue
            c = np.asarray(encoded[k], dtype=np.int64)
            k += 1
            base = int(starts_a[i0])
            size = int(ends_a[i1 - 1]) - base
            ce = np.cumsum(vocab.lengths[c]) if len(c) else np.zeros(0, dtype=np.int64)
            if not len(ce) or ce[-1] != size:
                ce = self._offset_ends(item[3], c, size)
                normalized |= ce is None or vocab.spell(c.tolist()) != item[3].encode("utf-8")
                if ce is None:
                    ce = np.full(len(c), size, dtype=np.int64)
            canon_parts.append(c)
            end_parts.append(ce + base)
        canon = np.concatenate(canon_parts) if canon_parts else np.zeros(0, dtype=np.int64)
        ends_b = np.concatenate(end_parts) if end_parts else np.zeros(0, dtype=np.int64)
        form = Canonical(arr, canon, ends_a, ends_b, flagged, invalid, cut, normalized)
        if not normalized and vocab.rewrites:
            # equal byte length but other bytes (a normaliser rewrite such as NFC): compare the
            # spellings of the differing segments, the only places where they can differ
            spell = vocab.spell
            form.normalized = any(spell(arr[a0:a1].tolist()) != spell(canon[b0:b1].tolist())
                                  for a0, a1, b0, b1 in form.segments())
        return form

    def _offset_ends(self, text: str, canon: np.ndarray, size: int) -> np.ndarray | None:
        """End of each canonical token in the *generated* bytes, from the tokenizer's own
        character offsets (for texts its normaliser rewrote). None if they do not line up."""
        enc = self.vocab.encoder.encode(text, add_special_tokens=False)
        if enc.ids != canon.tolist():
            return None
        byte_at = np.zeros(len(text) + 1, dtype=np.int64)
        byte_at[1:] = np.cumsum([len(ch.encode("utf-8")) for ch in text])
        ends = np.array([e for _s, e in enc.offsets], dtype=np.int64)
        if len(ends) and (ends.max() > len(text) or np.any(np.diff(ends) < 0)):
            return None
        out = byte_at[ends] if len(ends) else ends
        if len(out):
            out[-1] = size
        return out

    # -- measurement --------------------------------------------------------------------------
    def measure(self, samples: list[Sample], *, method: str = "aligned") -> list[SampleMetrics]:
        """Per-sample metrics. ``method='study'`` adds the study script's figures."""
        if method not in WINDOW_METHODS:
            raise ValueError(f"window method must be one of {WINDOW_METHODS}")
        fulls, prompt_lens = [], []
        for s in samples:
            prompt = list(s.prompt_ids or []) if self.context else []
            fulls.append(prompt + list(s.token_ids))
            prompt_lens.append(len(prompt))
        forms = self.canonical_forms(fulls)
        results = [self._summarise(f, p) for f, p in zip(forms, prompt_lens)]
        if method == "study":
            from tmcli.measure.study_script import study_metrics

            for r, m in zip(results, study_metrics(self.vocab, [s.token_ids for s in samples],
                                                   self.window)):
                r.update(m)
        return results

    def spans(self, form: Canonical, p: int) -> tuple[list[DiffSpan], dict | None, bool]:
        """The completion's spans (positions relative to the completion), the boundary span if
        a difference straddles the prompt/completion boundary, and whether the prompt itself
        holds a difference."""
        a, b = form.ids, form.canon
        raw = [(a0, a1, b0, b1, None) for a0, a1, b0, b1 in form.segments()]
        raw += [(i0, i1, None, None, kind) for i0, i1, kind in form.flagged]
        raw.sort(key=lambda r: r[0])
        spans, boundary, prompt_nc = [], None, False
        for a0, a1, b0, b1, kind in raw:
            if a1 <= p:
                prompt_nc = True
                continue
            before = a[a0:a1].tolist()
            after = before if kind else b[b0:b1].tolist()
            if a0 < p:
                boundary = {"before": before, "after": after}
                continue
            if kind is None:
                d = len(before) - len(after)
                kind = "merged" if d > 0 else "lengthened" if d < 0 else "resegmented"
            spans.append({"position": a0 - p, "before": before, "after": after, "kind": kind})
        return spans, boundary, prompt_nc

    def _summarise(self, form: Canonical, p: int) -> SampleMetrics:
        spans, boundary, prompt_nc = self.spans(form, p)
        n = len(form.ids) - p
        W = self.window
        nw = max(1, math.ceil(n / W))
        win_delta = np.zeros(nw, dtype=np.float64)
        win_nc = np.zeros(nw, dtype=np.int64)
        delta_sum = nc_tokens = n_unknown = 0
        if spans:  # a span's saving is spread over the tokens it replaces
            k = np.array([len(sp["before"]) for sp in spans])
            delta = k - np.array([len(sp["after"]) for sp in spans])
            starts = np.repeat(np.array([sp["position"] for sp in spans]), k)
            q = (starts + np.arange(len(starts)) - np.repeat(np.cumsum(k) - k, k)) // W
            win_delta += np.bincount(q, np.repeat(delta / k, k), minlength=nw)[:nw]
            win_nc += np.bincount(q, minlength=nw)[:nw]
            delta_sum, nc_tokens = int(delta.sum()), int(k.sum())
            n_unknown = sum(len(sp["before"]) for sp in spans if sp["kind"] == "unknown_id")
        win_tokens = np.full(nw, W, dtype=np.int64)
        win_tokens[-1] = n - W * (nw - 1) if n > 0 else 0
        kinds = {s["kind"] for s in spans}
        if "unknown_id" in kinds:
            kind = "unknown_id"
        elif "invalid_utf8" in kinds:
            kind = "invalid_utf8"
        elif not spans:
            kind = "canonical"
        else:
            kind = "merged" if delta_sum > 0 else "lengthened" if delta_sum < 0 else "resegmented"
        with np.errstate(invalid="ignore", divide="ignore"):
            win_comp = np.where(win_tokens > 0, win_delta / np.maximum(win_tokens, 1), np.nan)
        return SampleMetrics(
            n_tokens=n,
            n_reencoded=n - delta_sum,
            compression=delta_sum / n if n else float("nan"),
            noncanonical=bool(spans),
            kind=kind,
            n_spans=len(spans),
            noncanonical_tokens=nc_tokens,
            token_rate=nc_tokens / n if n else float("nan"),
            first_divergence=spans[0]["position"] if spans else None,
            boundary_merge=boundary is not None,
            boundary_span=boundary,
            prompt_noncanonical=prompt_nc,
            byte_exact=not (form.normalized or form.invalid_bytes or form.cut_bytes),
            normalized=form.normalized,
            invalid_bytes=form.invalid_bytes,
            cut_bytes=form.cut_bytes,
            unknown_ids=n_unknown,
            spans=spans,
            window_delta=win_delta.tolist(),
            window_tokens=win_tokens.tolist(),
            window_compression=win_comp.tolist(),
            window_noncanonical=win_nc.tolist(),
        )
