"""Group keys and their names: how a record was sampled (`SAMPLING_KEYS`), which columns of a
summary are its keys, and the label a group or series gets in tables and figures.
"""

from __future__ import annotations

import polars as pl

# How a record was sampled beside its temperature: arms that differ here are never pooled.
SAMPLING_KEYS = ("top_k", "top_p", "min_p")
ARMS = ("canonical", *SAMPLING_KEYS)  # what makes an arm of a sweep, beside the model


def group_keys(groups: pl.DataFrame) -> list[str]:
    """The key columns of a `summarise` frame: those before ``n``."""
    return groups.columns[:groups.columns.index("n")] if "n" in groups.columns else []


def series_keys(keys) -> list[str]:
    """The group keys that make a series (a line drawn against temperature): all but it."""
    return [k for k in keys if k != "temperature"]


def truncation_label(top_k, top_p, min_p) -> str:
    """``top-k 50``, ``top-p 0.95 min-p 0.05``, ``pure`` (nothing truncates), ``?`` (unknown)."""
    if top_k is None and top_p is None and min_p is None:
        return "?"
    parts = [f"top-k {top_k}" if top_k else "", f"top-p {top_p:g}" if top_p not in (None, 1) else "",
             f"min-p {min_p:g}" if min_p else ""]
    return " ".join(p for p in parts if p) or "pure"


def group_label(row: dict, keys) -> str:
    """A group (or series) named by its keys: the model first, then the rest in brackets:
    ``smollm2-135m (canonical constrain, top-k 50, step=100)``."""
    keys = list(keys)
    parts = []
    if any(k in keys for k in SAMPLING_KEYS):
        parts.append(truncation_label(*(row.get(k) if k in keys else None for k in SAMPLING_KEYS)))
    for k in keys:
        if k in ("model", "temperature", *SAMPLING_KEYS):
            continue
        value = row.get(k)
        parts.append(f"canonical {value}" if k == "canonical" else f"{k}={value}")
    head = str(row.get("model")) if "model" in keys else ""
    rest = ", ".join(parts)
    if head and rest:
        return f"{head} ({rest})"
    return head or rest or "all"

