"""A sequence and its canonical form aligned by byte offsets (`Canonical`), the span kinds, and
the samples the re-encoder measures (`Sample`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("canonical", "merged", "lengthened", "resegmented", "invalid_utf8", "unknown_id")


SPAN_KINDS = ("merged", "lengthened", "resegmented", "invalid_utf8", "unknown_id")


WINDOW_METHODS = ("aligned", "study")


MAX_ID = 2**31  # ids at or above this (or negative) are not token ids: the record is invalid


# Item kinds of a sequence's plan (see `Reencoder.plan`)
TEXT, SPECIAL, UNKNOWN, INVALID, CUT = "text", "special", "unknown", "invalid", "cut"


_FLAGGED = {UNKNOWN: "unknown_id", INVALID: "invalid_utf8"}


@dataclass
class Sample:
    """One completion: the generated ids and, when known, the prompt ids it continued."""

    token_ids: list[int]
    prompt_ids: list[int] | None = None


@dataclass
class Canonical:
    """A sequence and its canonical form, aligned: ``ends_a``/``ends_b`` are the end offsets of
    each token in the byte spelling of the generated sequence (specials and unknown ids occupy
    one placeholder byte), so equal offsets are common boundaries."""

    ids: np.ndarray  # generated (int64)
    canon: np.ndarray  # canonical (int64)
    ends_a: np.ndarray
    ends_b: np.ndarray
    flagged: list[tuple[int, int, str]]  # (start, end, span kind) of kept non-canonical tokens
    invalid_bytes: int = 0
    cut_bytes: int = 0
    normalized: bool = False

    def segments(self) -> list[tuple[int, int, int, int]]:
        """Differing segments (a_start, a_end, b_start, b_end), ends exclusive."""
        a, b, A, B = self.ids, self.canon, self.ends_a, self.ends_b
        if len(a) == len(b) and np.array_equal(a, b):
            return []
        # common boundaries: the last token of each side ending at an offset both sides end at
        ia = np.searchsorted(A, B, side="right") - 1
        hit = (ia >= 0) & (A[np.maximum(ia, 0)] == B)
        hit[:-1] &= B[1:] != B[:-1]  # several canonical tokens may end at one offset
        ib = np.flatnonzero(hit)
        ia = ia[hit]
        sa = np.concatenate(([0], ia[:-1] + 1))
        sb = np.concatenate(([0], ib[:-1] + 1))
        single = (ia == sa) & (ib == sb)
        same = single & (a[ia] == b[ib])
        out = []
        for k in np.flatnonzero(~same).tolist():
            a0, a1, b0, b1 = int(sa[k]), int(ia[k]) + 1, int(sb[k]), int(ib[k]) + 1
            if not single[k] and a1 - a0 == b1 - b0 and np.array_equal(a[a0:a1], b[b0:b1]):
                continue  # several tokens per boundary on both sides, the same ids
            out.append((a0, a1, b0, b1))
        return out


def _invalid_ranges(data: bytes) -> list[tuple[int, int, bool]]:
    """Byte ranges of ``data`` that are not valid UTF-8, and whether each is an incomplete
    character at the very end (a valid prefix cut short)."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            start, end = pos + exc.start, pos + exc.end
            out.append((start, end, exc.reason == "unexpected end of data" and end == len(data)))
            pos = end
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in ``mask``."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))
