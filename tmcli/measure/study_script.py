"""The study script's own arithmetic (``--window-method study``), quirk for quirk.

snimu/token-merge ``ablations.py`` measured each completion ``g`` (n ids) with transformers:

- whole sequence: ``tokenizer(tokenizer.batch_decode([g], skip_special_tokens=True)[0])`` — the
  text decoded by the tokenizer's decoder with special tokens dropped, re-encoded *out of context*
  by the tokenizer as transformers calls it: special-token strings in the text become special ids
  and the tokenizer's own specials (a BOS) are added. ``(n - len(c)) / n``.
- windows: ``for i in range(0, n, W)`` each slice ``g[i:i+W]`` decoded and re-encoded alone the
  same way, scored ``(W - len(c)) / W`` — the *full* window size as numerator and denominator,
  also for a short last window (a last window of L canonical ids scores ``(W - L) / W``). The
  script's ``if not window_text: break`` tests the list ``batch_decode`` returns, which always
  holds one string, so it never stops the loop: an empty window text scores ``(W - len(c)) / W``.
- ``plot_results.py`` averages windows after cutting every sample's list to the shortest one of
  its model and temperature, and computes the centre of gravity per sample: the mean window
  index (0, 1, ...) weighted by that sample's *positive* window compressions; samples without a
  positive window are dropped; the centre is the mean of the per-sample centres, in window
  units, with its standard error.

transformers may also clean up spaces on decode depending on its version and the tokenizer's
config (``clean_up_tokenization_spaces``); tmcli decodes with the tokenizer's own decoder and no
clean-up. Everything else is the script's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def study_metrics(vocab, samples: Sequence[Sequence[int]], window: int) -> list[dict]:
    """``study_compression`` and ``study_window_compression`` of each completion."""
    tok = vocab.study_tokenizer()
    size = vocab.size
    texts, layout = [], []
    for g in samples:
        g = [int(i) for i in g if 0 <= i < size]  # ids the tokenizer lacks decode to nothing
        chunks = [g[i : i + window] for i in range(0, len(g), window)]
        layout.append(len(chunks))
        texts.append(g)
        texts.extend(chunks)
    decoded = tok.decode_batch(texts, skip_special_tokens=True) if texts else []
    lengths = [len(e.ids) for e in tok.encode_batch_fast(decoded, add_special_tokens=True)]
    out, k = [], 0
    for g, n_windows in zip(samples, layout):
        n = len(g)
        whole = lengths[k]
        windows = lengths[k + 1 : k + 1 + n_windows]
        k += 1 + n_windows
        out.append({
            "study_compression": (n - whole) / n if n else math.nan,
            "study_window_compression": [(window - c) / window for c in windows],
        })
    return out


def truncated(lists: Sequence[Sequence[float]]) -> np.ndarray:
    """The window lists cut to the shortest one, as a (samples x windows) matrix."""
    lists = [list(x) for x in lists if x is not None]
    if not lists:
        return np.zeros((0, 0))
    width = min(len(x) for x in lists)
    return np.array([x[:width] for x in lists], dtype=float).reshape(len(lists), width)


def sample_centres(matrix: np.ndarray) -> np.ndarray:
    """Per sample: the mean window index weighted by its positive window compressions (NaN for
    a sample with no positive window)."""
    positions = np.arange(matrix.shape[1], dtype=float)
    weights = np.where(matrix > 0, matrix, 0.0)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * positions).sum(axis=1) / total, np.nan)
