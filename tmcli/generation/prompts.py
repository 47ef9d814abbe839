"""Prompts for `generate`: read from a text file (one per line) or JSONL, filtered and sampled.

A prompt keeps its index in the file (counting the prompts read, before filtering), so the same
prompt gets the same record id however the file is filtered, shuffled or cut with ``n_prompts``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import orjson

from tmcli.errors import TmcliError


@dataclass(frozen=True)
class Prompt:
    index: int  # position among the file's prompts (0-based, before filtering)
    text: str


def _lines(path: str) -> tuple[list[str], str]:
    """The prompt file's lines, read once (stdin and FIFOs are waited on interruptibly)."""
    from tmcli.io.input_files import read_text

    if path != "-" and not os.path.lexists(path):
        raise TmcliError(f"prompt file not found: {path}", hint="check the --prompts path")
    if path != "-" and Path(path).is_dir():
        raise TmcliError(f"--prompts {path} is a directory", hint="give a text or JSONL file")
    text = read_text(path)  # not UTF-8, a symbolic link loop: one line naming it
    return text.removeprefix("\ufeff").splitlines(), "<stdin>" if path == "-" else path


def _is_jsonl(path: str, lines: list[str]) -> bool:
    if path.endswith((".jsonl", ".ndjson", ".json")):
        return True
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    return first.startswith("{")


def read_prompts(path: str, *, field: str = "text", min_chars: int = 0,
                 n_prompts: int | None = None, shuffle: bool = False, seed: int = 0) -> list[Prompt]:
    """Prompts from ``path`` (``-`` is stdin): one per non-blank line, or the ``field`` of each
    JSONL object. Keeps those with at least ``min_chars`` characters (the study used 640), then,
    if ``shuffle``, a seeded random order, then the first ``n_prompts``."""
    if min_chars < 0:
        raise TmcliError(f"--min-chars must be 0 or more, got {min_chars}")
    if n_prompts is not None and n_prompts <= 0:
        raise TmcliError(f"--n-prompts must be positive, got {n_prompts}")
    lines, source = _lines(path)
    texts: list[str] = []
    if _is_jsonl(path, lines):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise TmcliError(f"{source}:{number}: malformed JSON",
                                 hint="one JSON object per line, or a plain text file") from None
            value = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                raise TmcliError(f"{source}:{number}: no '{field}' string field",
                                 hint="name the prompt field with --prompt-field")
            texts.append(value.strip())
    else:
        texts = [line.strip() for line in lines if line.strip()]
    prompts = [Prompt(i, t) for i, t in enumerate(texts) if t]
    if not prompts:
        raise TmcliError(f"no prompts in {source}", hint="write one prompt per line (or JSONL)")
    kept = [p for p in prompts if len(p.text) >= min_chars]
    if not kept:
        longest = max(len(p.text) for p in prompts)
        raise TmcliError(f"no prompt in {source} has {min_chars} characters or more "
                         f"(the longest has {longest})", hint="lower --min-chars")
    if shuffle:
        random.Random(seed).shuffle(kept)
    return kept[:n_prompts] if n_prompts else kept
