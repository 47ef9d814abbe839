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

import array

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
from tmcli.measure.columns import MetricsBatch
from tmcli.measure.metrics import SampleMetrics, form_metrics
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
        try:  # the common case in one C loop: unsigned 32-bit, and below 2**31
            if int(np.frombuffer(array.array("I", ids), dtype=np.uint32).max()) < MAX_ID:
                return None
        except (OverflowError, TypeError):
            pass
        return next(int(i) for i in ids if not 0 <= i < MAX_ID)

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
        """Per-sample metrics. ``method='study'`` adds the study script's figures. Ids must be
        token ids (0 <= id < 2**31, see `invalid_id`); ids the tokenizer lacks are measured."""
        return self.measure_batch(samples, method=method)[0].rows()

    def measure_batch(self, samples: list[Sample], *,
                      method: str = "aligned") -> tuple[MetricsBatch, list[bytes]]:
        """The samples' metrics as columns, and each completion's exact bytes (its ids'
        spellings; specials spell nothing), from which the text-quality proxies are read.

        One encode call for the batch. A sample whose ids are all plain text tokens (after the
        prompt's leading specials, a BOS) is spelled and encoded whole, and when its ids equal
        the encoding, the usual case, that comparison is its whole measurement; only samples
        that differ, or hold specials, ids the tokenizer lacks or invalid UTF-8, are planned and
        aligned (`plan`, `form_metrics`)."""
        if method not in WINDOW_METHODS:
            raise ValueError(f"window method must be one of {WINDOW_METHODS}")
        vocab = self.vocab
        get, join = vocab.plain_bytes().__getitem__, b"".join
        special, size = vocab.special, vocab.size
        fulls, prompt_lens, jobs, texts, datas = [], [], [], [], []
        for s in samples:
            prompt = list(s.prompt_ids or []) if self.context else []
            ids = list(s.token_ids)
            full = prompt + ids
            lead = 0
            while lead < len(prompt) and 0 <= prompt[lead] < size and special[prompt[lead]]:
                lead += 1
            try:
                data = join(map(get, ids))
                text = (join(map(get, prompt[lead:])) + data).decode("utf-8")
            except (TypeError, IndexError, UnicodeDecodeError):  # not plain text: plan it
                plan = self.plan(full)
                texts.extend(it[3] for it in plan[0] if it[0] == TEXT)
                jobs.append(plan)
                data = vocab.spell(ids)
            else:
                texts.append(text)
                jobs.append(lead)
            fulls.append(full)
            prompt_lens.append(len(prompt))
            datas.append(data)
        encoded = vocab.encode_texts(texts)
        batch = MetricsBatch([len(f) - p for f, p in zip(fulls, prompt_lens)], self.window)
        k = 0
        for i, (full, p, job) in enumerate(zip(fulls, prompt_lens, jobs)):
            if isinstance(job, int):  # plain text after `job` leading specials
                canon = encoded[k]
                k += 1
                if canon == (full[job:] if job else full):
                    continue
                arr = np.asarray(full, dtype=np.int64)
                items = [(SPECIAL, j, j + 1) for j in range(job)]
                items.append((TEXT, job, len(full), texts[k - 1]))
                form = self._assemble(arr, items, vocab.lengths[arr], [canon], 0, 0)
            else:
                items, lengths, invalid, cut = job
                text_items = [it for it in items if it[0] == TEXT]
                parts = encoded[k : k + len(text_items)]
                k += len(text_items)
                if not invalid and all(it[0] != UNKNOWN for it in items) and all(
                        c == full[it[1] : it[2]] for it, c in zip(text_items, parts)):
                    batch.cut_bytes[i] = cut  # canonical; a character cut at the very end
                    continue
                form = self._assemble(full, items, lengths, parts, invalid, cut)
            batch.set(i, form_metrics(form, p, self.window))
        if method == "study":
            from tmcli.measure.study_script import study_metrics

            figures = study_metrics(vocab, [s.token_ids for s in samples], self.window)
            for name in ("study_compression", "study_window_compression"):
                batch.set_column(name, [f[name] for f in figures])
        return batch, datas
