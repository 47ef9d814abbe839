"""Cheap text-quality proxies of one completion, from its exact text.

Used to compare canonical generation modes with free generation: a mode that forces canonical
tokens should not make the text worse. The text is the completion's exact bytes (each id's
vocabulary spelling, special tokens spell nothing) decoded as UTF-8 with replacement, so it is
the text the model wrote, with no tokenizer decoder clean-up. Words are whitespace-separated.

- ``n_chars``: characters of that text; ``chars_per_token``: n_chars / generated ids.
- ``distinct_2``: unique word bigrams / word bigrams (1 = no bigram repeats); null with fewer
  than 2 words (no bigram).
- ``repetition_4``: 1 − unique word 4-grams / word 4-grams (0 = no 4-gram repeats); null with
  fewer than 4 words (no 4-gram).
"""

from __future__ import annotations

QUALITY_COLUMNS = ("n_chars", "chars_per_token", "distinct_2", "repetition_4", "nll_token",
                   "nll_char")


def distinct_n(words: list[str], n: int) -> float | None:
    """Unique word n-grams / word n-grams; None when there is no n-gram."""
    count = len(words) - n + 1
    if count <= 0:
        return None
    return len(set(zip(*(words[k:] for k in range(n))))) / count


def repetition_n(words: list[str], n: int) -> float | None:
    """1 − unique word n-grams / word n-grams; None when there is no n-gram."""
    d = distinct_n(words, n)
    return None if d is None else 1.0 - d


def text_metrics(data: bytes, n_tokens: int) -> dict:
    """The per-sample proxies of one completion's exact bytes, generated as ``n_tokens`` ids."""
    text = data.decode("utf-8", errors="replace")
    words = text.split()
    return {
        "n_chars": len(text),
        "chars_per_token": len(text) / n_tokens if n_tokens else None,
        "distinct_2": distinct_n(words, 2),
        "repetition_4": repetition_n(words, 4),
    }


def text_columns(datas: list[bytes], n_tokens: list[int]) -> dict[str, list]:
    """`text_metrics` of a batch of completions, as one list per proxy."""
    cols: dict[str, list] = {"n_chars": [], "chars_per_token": [], "distinct_2": [],
                             "repetition_4": []}
    n_chars, per_token = cols["n_chars"].append, cols["chars_per_token"].append
    d2, r4 = cols["distinct_2"].append, cols["repetition_4"].append
    for data, n in zip(datas, n_tokens):
        text = data.decode("utf-8", errors="replace")
        words = text.split()
        n_chars(len(text))
        per_token(len(text) / n if n else None)
        count = len(words) - 1
        bigrams = len(set(zip(words, words[1:]))) if count > 0 else 0
        d2(bigrams / count if count > 0 else None)
        if count < 3:
            r4(None)
        elif bigrams == count:  # no bigram repeats, so no 4-gram can
            r4(0.0)
        else:
            r4(repetition_n(words, 4))
    return cols


def record_float(value) -> float | None:
    """A finite number from a record field (an NLL), else None (absent, null, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None
