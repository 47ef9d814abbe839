"""RESULTS.md's "Does it matter?" section, part 2: seed 001's curves on SmolLM2, the merged model's
agreement with the unmerged one against the layer cut and the prefix length.

Documents: ``--n-docs`` WikiText-2 test texts of at least 1,025 tokens (consecutive paragraphs
from a seeded random starting line, encoded as text by SmolLM2's tokenizer), written as records
(token ids only) to study_out/merge/docs.jsonl. Each is scored with
``tmcli score --merge slerp`` at the default layer cuts (8 spread over the 30 layers) and
prefix lengths 4, 8, ..., 1024, once per way of positioning merged states (interpolate, the
default; renumber, the seed's), then summarised per (cut, length) with `tmcli.merge_table`
into results/merge/curves_<positions>.csv, pooled over lengths (by_layer.csv) and over the cuts
before the last (by_length.csv), and drawn in results/figures/merge.png (with Chromium).
Resumable (records already scored are skipped).

    python results/merge_study.py [--n-docs 12]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RAW = ROOT / "study_out" / "merge"
OUT = ROOT / "results" / "merge"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
MODEL = "smollm2-135m"
LENGTH = 1024


def documents(n: int, seed: int = 0) -> list[list[int]]:
    """``n`` token sequences of LENGTH + 1 ids from consecutive WikiText paragraphs."""
    from tmcli.sources.tokenizers import encode_prompt, prompt_tokenizer

    tok = prompt_tokenizer(MODEL)
    lines = [line.strip() for line in WIKITEXT.read_text(encoding="utf-8").splitlines()]
    paragraphs = [line for line in lines if len(line) > 200 and not line.startswith("=")]
    starts = random.Random(seed).sample(range(len(paragraphs) - 40), n)
    docs = []
    for s in starts:
        text, k = "", s
        while True:
            text += ("\n" if text else "") + paragraphs[k]
            k += 1
            ids = encode_prompt(tok, text)
            if len(ids) > LENGTH:
                docs.append(ids[: LENGTH + 1])
                break
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-docs", type=int, default=12)
    ap.add_argument("--threads", default="1")
    args = ap.parse_args()
    RAW.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    docs = RAW / "docs.jsonl"
    if not docs.exists():
        docs.write_text("".join(json.dumps({"id": f"wikitext-{i}", "model": MODEL,
                                            "token_ids": ids}) + "\n"
                                for i, ids in enumerate(documents(args.n_docs))))
    lengths = ",".join(str(2 ** k) for k in range(2, 11))
    import polars as pl

    from tmcli.aggregate.merge import merge_rows, merge_table

    pooled_layer, pooled_length = [], []
    for positions in ("interpolate", "renumber"):
        scored = RAW / f"merged_{positions}.jsonl"
        cmd = [sys.executable, "-m", "tmcli", "score", str(docs), "--merge", "slerp",
               "--lengths", lengths, "--merge-positions", positions, "--device", "cpu",
               "--threads", args.threads, "-o", str(scored)]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        rows = merge_rows(str(scored))
        table = merge_table(rows)
        table.write_csv(OUT / f"curves_{positions}.csv")
        print(positions)
        print(table.select("layer", "length", "n", "top1", "top3", "top5", "overlap5", "kl"))
        # pooled: every length per cut; every cut but the last (unchanged by construction) per length
        pooled_layer.append(merge_table(rows.drop("length")))
        last = rows["layer"].max()
        pooled_length.append(merge_table(rows.filter(pl.col("layer") < last).drop("layer")))
    by_layer, by_length = pl.concat(pooled_layer), pl.concat(pooled_length)
    by_layer.write_csv(OUT / "by_layer.csv")
    by_length.write_csv(OUT / "by_length.csv")
    print(by_layer.select("positions", "layer", "n", "top1", "top1_lo", "top1_hi", "top5",
                          "overlap5", "kl"))
    print(by_length.select("positions", "length", "n", "top1", "top1_lo", "top1_hi", "kl"))
    from tmcli.present.figures.divergence import merge_curves
    from tmcli.present.png import find_chromium, write_png

    if find_chromium():
        write_png(merge_curves(by_layer, by_length), ROOT / "results" / "figures" / "merge.png")


if __name__ == "__main__":
    main()
