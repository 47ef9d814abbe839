"""What the generation benchmarks share: the repo on sys.path, offline hub, and the options that
pick a model, prompts and lengths (WikiText prompts if ../shared is there, else the sample ones)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


def generation_options(ap: argparse.ArgumentParser, *, n_prompts: int, temperatures: str,
                       max_new_tokens: int) -> None:
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default=str(WIKITEXT if WIKITEXT.exists()
                                             else ROOT / "sample_data" / "prompts.txt"))
    ap.add_argument("--min-chars", type=int, default=640 if WIKITEXT.exists() else 0)
    ap.add_argument("--n-prompts", type=int, default=n_prompts)
    ap.add_argument("--temperatures", default=temperatures)
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--threads", type=int, default=None)
