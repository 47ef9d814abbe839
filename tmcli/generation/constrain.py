"""Canonical generation: sample only token sequences that re-encoding would leave unchanged.

Two modes of ``tmcli generate --canonical`` (``off`` is plain sampling, `sampler.py`):

- ``constrain`` -- canonical sampling (Chatzi et al. 2025; Vieira et al. 2025): at each step a token
  that would make the sequence non-canonical gets probability zero and the rest are renormalised.
  Sampling is a Gumbel-max race (`sampler.sample`), so masking a rejected candidate and taking
  the next-best score *with the same noise* draws exactly from the renormalised distribution; only
  the few candidates actually reached are checked, never the whole vocabulary.
- ``retokenize`` -- sample freely, and after every step (or every ``k`` steps) re-encode the text
  and continue from its canonical ids. The KV cache is rolled back only to the first changed
  position; the replacement ids are then fed one per step.

What "canonical" means is the measurement engine's definition (`reencode.Reencoder`): the prompt's
ids followed by the completion's, re-encoded from their exact bytes in context. ``constrain``
keeps the whole sequence canonical, so it produces no merge across the prompt/completion boundary
either; ``retokenize`` cannot rewrite the prompt's ids, so a merge across the boundary stays (the
analysis reports those apart) and everything after it is canonical.

Exactness. A token is masked when no continuation could make the sequence canonical again. For
BPE the canonical token strings are prefix-closed (Vieira et al. 2025), so "the sequence with this
token is canonical as it stands" decides it -- except where the pre-tokenizer looks ahead: in
GPT-2-style regexes a run of whitespace is split by ``\\s+(?!\\S)`` according to the character
that follows, so ``[" ", "\\n"]`` is non-canonical at the end of a text (``" \\n"`` is one token)
but canonical once a letter follows. tmcli therefore also accepts a sequence that becomes
canonical, up to its current end, after one of a few probe continuations (a letter, a digit, a
punctuation mark, a space + letter, a newline), which covers every class the byte-level regexes
distinguish. The last token of a completion must be canonical as it stands. Tokens spelling
invalid UTF-8 (a character split over several byte tokens) are kept verbatim by the engine and so
are judged when the character is complete. For SentencePiece BPE without a regex pre-tokenizer
(Gemma) the check is the same re-encoding and is exact under the prefix-closure property; a
tokenizer whose normaliser changes text falls back to an id-level comparison, which is
conservative (it may mask a token that a continuation would have made canonical).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tmcli.measure.alignment import Canonical
from tmcli.measure.reencode import Reencoder
from tmcli.measure.token_bytes import Vocab

CANONICAL_MODES = ("off", "retokenize", "constrain")
# Continuations tried when a sequence is not canonical as it stands: a witness among them proves
# it viable (one that makes it canonical up to its current end). One character of each class the
# pre-tokenizers distinguish (letters of several scripts, digits, punctuation, symbols, emoji,
# whitespace), alone and after a space: byte-level BPE may or may not merge a space with what
# follows (SmolLM2 keeps "Ġ" apart from a 4-byte character).
_PROBE_CHARS = ("a", "é", "Ω", "б", "ب", "中", "ㄱ", "𝔸", "1", "١", "二", ".", "!", "«", "、", "©",
                "😀", "♽", "_", "'")
PROBES = (*_PROBE_CHARS, *(" " + c for c in _PROBE_CHARS), "\n", "\t", " ", "\u3000", "\r\n")
MAX_REJECTIONS = 256  # candidates tried per row and step before giving up on that step


class Oracle:
    """Canonicality checks for one tokenizer, batched (one re-encoding call per round).

    A sequence is viable when nothing can be wrong with it for good: no id the tokenizer lacks,
    no invalid UTF-8 inside the text (no text encodes to either), and its ids are canonical as
    they stand or become so, up to their current end, after some continuation. An incomplete
    character at the very end is viable only if some completion of it keeps the ids canonical
    up to there. Viability is proven by a witness (a continuation or completion that works);
    where none of those tried works the token is masked, which can only make the output more
    conservative, never non-canonical.
    """

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.reencoder = Reencoder(vocab)
        self.probe_ids = [vocab.encode_texts([p])[0] for p in PROBES]
        # ids that can never be part of a canonical sequence: the tokenizer lacks them
        self.banned_ids = [i for i in range(vocab.size) if not vocab.known[i]]

    @staticmethod
    def _first_difference(form: Canonical, skip_before: int):
        """The first difference (a_start, a_end, b_start | None) that does not start before
        ``skip_before``: a differing segment, or kept non-canonical tokens (b_start None)."""
        best = None
        for a0, a1, b0, _b1 in form.segments():
            if a0 >= skip_before:
                best = (a0, a1, b0)
                break
        for i0, i1, _kind in form.flagged:
            if i0 >= skip_before and (best is None or i0 < best[0]):
                best = (i0, i1, None)
                break
        return best

    @classmethod
    def _canonical_up_to(cls, form: Canonical, skip_before: int, end: int) -> bool:
        """Whether ``form`` (a sequence plus a continuation) has no difference starting in
        [skip_before, end): the first ``end`` ids are canonical, as the continuation shows."""
        first = cls._first_difference(form, skip_before)
        return first is None or first[0] >= end

    def viable(self, fulls: list[list[int]], strict: Sequence[bool], skip_before: Sequence[int]
               ) -> list[bool]:
        """Whether each sequence is canonical (ignoring differences that start before
        ``skip_before``), or, unless ``strict``, becomes so up to its end after some probe."""
        return self.check(fulls, strict, skip_before)[0]

    def check(self, fulls: list[list[int]], strict: Sequence[bool], skip_before: Sequence[int]
              ) -> tuple[list[bool], list[list[int]]]:
        """`viable`, and the canonical form of each sequence as it stands (for rewriting)."""
        forms = self.reencoder.canonical_forms(fulls)
        ok = [False] * len(fulls)
        todo, cut = [], []
        for i, (form, skip) in enumerate(zip(forms, skip_before)):
            first = self._first_difference(form, skip)
            if first is not None and first[2] is None:
                continue  # an unknown id or invalid UTF-8: no continuation repairs it
            if form.cut_bytes:
                cut.append(i)
            elif first is None:
                ok[i] = True
            elif not strict[i]:
                todo.append(i)
        self._probe(fulls, skip_before, ok, todo, [[p] for p in self.probe_ids])
        for i in cut:
            ok[i] = self._completable(fulls[i], forms[i], skip_before[i])
        return ok, [f.canon.tolist() for f in forms]

    def _probe(self, fulls, skip_before, ok, todo, continuations) -> None:
        """Mark ``ok`` the sequences of ``todo`` that some continuation (a list of id lists
        appended in turn) makes canonical up to their current end."""
        for cont in continuations:
            if not todo:
                return
            tail = [t for part in cont for t in part]
            forms = self.reencoder.canonical_forms([fulls[i] + tail for i in todo])
            still = []
            for i, form in zip(todo, forms):
                if self._canonical_up_to(form, skip_before[i], len(fulls[i])):
                    ok[i] = True
                else:
                    still.append(i)
            todo = still

    def _completable(self, full: list[int], form: Canonical, skip_before: int) -> bool:
        """Whether some completion of the character cut at the end (as single-byte tokens),
        alone or followed by a probe, leaves the ids canonical up to their current end: a
        witness proves it; without one the token is masked (conservative)."""
        vocab = self.vocab
        spelled = vocab.spell(full[-8:])
        need = _missing_bytes(spelled)
        if not need:
            return False
        tails = []
        for rest in _completions(spelled, need):
            ids = [vocab.byte_ids[b] for b in rest]
            if None not in ids:
                tails.append(ids)
        start, size = 0, 64  # a witness is almost always among the first 64
        while start < len(tails):
            if self._any_witness(full, skip_before, [[t] for t in tails[start : start + size]]):
                return True
            start, size = start + size, COMPLETION_BATCH
        for tail in tails[:8]:  # a completed character may need what follows (lookahead)
            if self._any_witness(full, skip_before, [[tail, p] for p in self.probe_ids]):
                return True
        return False

    def _any_witness(self, full: list[int], skip_before: int, continuations) -> bool:
        """Whether one of ``continuations`` (lists of id lists) makes ``full`` canonical up to
        its end (one batched re-encoding)."""
        tails = [[t for part in cont for t in part] for cont in continuations]
        forms = self.reencoder.canonical_forms([full + tail for tail in tails])
        return any(self._canonical_up_to(form, skip_before, len(full)) for form in forms)

    def rewrite(self, full: list[int], canon: list[int], skip_before: int):
        """(position in ``full``, replacement ids) for the first difference, else None. Kept
        non-canonical tokens (unknown ids, invalid UTF-8) have no canonical form: they are
        dropped, and the text after them continues from its canonical ids."""
        form = self.reencoder.canonical_forms([full])[0]
        first = self._first_difference(form, skip_before)
        if first is None:
            return None
        a0, a1, b0 = first
        if b0 is None:  # the canonical form keeps them in place: skip over them
            b0 = int(np.searchsorted(form.ends_b, form.ends_a[a1 - 1], side="right"))
        return a0, form.canon[b0:].tolist()


COMPLETION_BATCH = 512  # completions of a cut character re-encoded per batch


def _missing_bytes(data: bytes) -> int:
    """How many bytes the incomplete UTF-8 character at the end of ``data`` lacks (0 if none)."""
    for k in range(1, min(4, len(data)) + 1):
        lead = data[-k]
        if lead < 0x80:
            return 0
        if lead >= 0xC0:
            size = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return size - k if size > k else 0
    return 0


def _completions(data: bytes, need: int):
    """Byte strings that complete the character cut at the end of ``data``: every valid value
    of the first two missing bytes (the last of three missing bytes fixed), so at most 4,096."""
    lead_at = max(i for i in range(len(data)) if not 0x80 <= data[i] < 0xC0)
    prefix = data[lead_at:]
    free = min(need, 2)
    for combo in itertools.product(range(0x80, 0xC0), repeat=free):
        rest = bytes(combo) + bytes([0x80] * (need - free))
        try:
            (prefix + rest).decode("utf-8")
        except UnicodeDecodeError:
            continue
        yield rest


@dataclass
class RowStats:
    """What canonical generation did to one row (recorded as ``canonical_stats``)."""

    rejected: int = 0  # constrain: candidates masked
    gave_up: int = 0  # constrain: steps where MAX_REJECTIONS candidates were all rejected
    rewrites: int = 0  # retokenize: times the ids were replaced by their canonical form
    rolled_back: int = 0  # retokenize: cached tokens discarded
    steps: int = 0  # decoder steps this row took part in
    # constrain with truncation: steps where truncation kept no canonical token, so the token
    # was drawn from the canonical tokens of the whole (untruncated) distribution
    untruncated: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RowState:
    prompt: list[int]
    seq: list[int] = field(default_factory=list)
    fed: int = 0  # ids of seq in the KV cache
    rollback: int = 0  # cached ids to discard before the next step
    done: bool = False
    reason: str = "length"
    stats: RowStats = field(default_factory=RowStats)


def constrain_tokens(oracle: Oracle, rows: list[RowState], scores, tokens, N: int,
                     untruncated=None):
    """Replace each row's candidate by its best-scoring viable token (masking and retrying).

    Ids the tokenizer lacks (unused rows of a larger embedding) can never be canonical: they are
    masked up front, which draws from the same renormalised distribution as rejecting them.

    With truncation, ``scores`` are -inf outside each row's kept set, so the draw is from the
    canonical tokens of the kept set, renormalised. A row whose kept set holds no canonical
    token at all then draws, with the same noise, from the canonical tokens of the whole
    distribution (``untruncated``: the race scores before truncation), and counts the step in
    ``stats.untruncated``: the constraint wins over truncation, so the sequence stays
    canonical."""
    import torch

    tokens = tokens.clone()
    size = oracle.vocab.size
    kept = torch.isfinite(scores) if untruncated is not None else None
    if scores.shape[1] > size or oracle.banned_ids:
        for s in (scores, untruncated) if untruncated is not None else (scores,):
            s[:, size:] = float("-inf")
            if oracle.banned_ids:
                banned = torch.tensor(oracle.banned_ids, dtype=torch.long, device=s.device)
                s.index_fill_(1, banned, float("-inf"))
        tokens = scores.argmax(-1)
    pending = list(range(len(rows)))
    fell_back: set[int] = set()
    tries = 0
    while pending:
        if untruncated is not None:  # kept sets with nothing canonical left in them
            for i in pending:
                if i not in fell_back and scores[i, tokens[i]] == float("-inf"):
                    fell_back.add(i)
                    scores[i] = untruncated[i].masked_fill(kept[i], float("-inf"))
                    tokens[i] = scores[i].argmax()
                    rows[i].stats.untruncated += 1
        fulls = [rows[i].prompt + rows[i].seq + [int(tokens[i])] for i in pending]
        strict = [len(rows[i].seq) + 1 >= N for i in pending]
        ok = oracle.viable(fulls, strict, [0] * len(pending))
        bad = [i for i, good in zip(pending, ok) if not good]
        tries += 1
        if not bad:
            break
        for i in bad:
            rows[i].stats.rejected += 1
            scores[i, tokens[i]] = float("-inf")
        if tries >= MAX_REJECTIONS:
            for i in bad:  # keep the last candidate; recorded, and the analysis will show it
                rows[i].stats.gave_up += 1
            break
        sub = scores[bad]
        tokens[bad] = sub.argmax(-1)
        pending = bad
    return tokens


def retokenize_rows(oracle: Oracle, rows: list[RowState], N: int, every: int) -> None:
    """Replace a row's ids from the first difference on by their canonical form, when the
    difference is there to stay (not viable) or the row is complete; trim to N ids."""
    check = [r for r in rows if len(r.seq) % every == 0 or len(r.seq) >= N]
    while check:
        fulls = [r.prompt + r.seq for r in check]
        strict = [len(r.seq) >= N for r in check]
        skip = [len(r.prompt) for r in check]
        ok, canon = oracle.check(fulls, strict, skip)
        bad = [(r, f, s, c) for r, f, s, c, good in zip(check, fulls, skip, canon, ok) if not good]
        if not bad:
            return
        again = []
        for r, full, skip_before, c in bad:
            change = oracle.rewrite(full, c, skip_before)
            if change is None:
                continue
            at, ids = change
            keep = at - len(r.prompt)
            r.seq = r.seq[:keep] + list(ids)
            r.stats.rewrites += 1
            if keep < r.fed:
                r.stats.rolled_back += r.fed - keep
                r.rollback += r.fed - keep
                r.fed = keep
            if len(r.seq) > N:  # a lengthening rewrite past the end: cut, and check the cut
                r.seq = r.seq[:N]
                again.append(r)
        check = again
