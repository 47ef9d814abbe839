"""Cost of `tmcli.check_ids` per 1,000-token rollout, against baselines measured in the same run.

An RL loop would call it on every rollout, so the question is what it adds to a training step.
Prints, per tokenizer, the median time per 1,000-token rollout of:
  check_ids        one call per rollout (in context of a 64-id prompt; verdict, spans, causes);
                   its first pass over the rollouts apart (the tokenizer's own BPE word cache still cold)
  check_ids_batch  one call per GRPO group of --group rollouts, divided by the group size
  naive            what a pipeline does to notice drift: decode the ids, re-encode the text with
                   the `tokenizers` library and compare (no alignment, no prompt context, no cause)
and the ratios check_ids/naive and batch/naive (goal: within a small factor of naive).

Data: WikiText paragraphs (or sample_data/prompts.txt) encoded canonically, cut into 1,024-id
rollouts after 64-id prompts; in every other rollout ~2% of tokens are split into two real
tokens, so half the rollouts are non-canonical.

    python benchmarks/bench_check_ids.py [--n 200] [--group 16] [--tokenizer gpt2 ...]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
LENGTH = 1000


def rollouts(spec: str, n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) pairs; every other completion has ~2% split tokens."""
    from tmcli.measure.token_bytes import vocab_for

    vocab = vocab_for(spec)
    rng = random.Random(seed)
    text = WIKITEXT.read_text(encoding="utf-8") if WIKITEXT.exists() else (
        ROOT / "sample_data" / "prompts.txt").read_text(encoding="utf-8") * 200
    stream = vocab.original.encode(text[:3_000_000], add_special_tokens=False).ids
    table = vocab.bytes_to_id()
    out = []
    for i in range(n):
        start = rng.randrange(0, len(stream) - 2 * LENGTH)
        prompt, g = stream[start : start + 64], []
        for t in stream[start + 64 :]:
            if len(g) >= LENGTH:
                break
            b = vocab.token_bytes[t]
            if i % 2 and rng.random() < 0.02 and len(b) > 1 and b[:1] in table and b[1:] in table:
                g += [table[b[:1]], table[b[1:]]]
            else:
                g.append(t)
        out.append((prompt, g[:LENGTH]))
    return out


def per_rollout_ms(fn, items, repeat: int = 3) -> float:
    """Median over ``repeat`` passes of the mean time per item, in ms (per 1,000 tokens)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(items)
        times.append((time.perf_counter() - t) / len(items) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="rollouts per tokenizer")
    ap.add_argument("--group", type=int, default=16, help="rollouts per check_ids_batch call")
    ap.add_argument("--tokenizer", action="append", help="alias or path (repeatable); "
                    "default: smollm2-135m and gpt2")
    args = ap.parse_args()
    from tmcli.measure.rollout_check import check_ids, check_ids_batch, reencoder_for

    for spec in args.tokenizer or ["smollm2-135m", "gpt2"]:
        items = rollouts(spec, args.n)
        tok = reencoder_for(spec).vocab.original
        check_ids(spec, items[0][1], items[0][0])  # tables built once, outside the timing

        def one(batch, spec=spec):
            for p, g in batch:
                check_ids(spec, g, p)

        def grouped(batch, spec=spec):
            for k in range(0, len(batch), args.group):
                part = batch[k : k + args.group]
                check_ids_batch(spec, [g for _p, g in part], [p for p, _g in part])

        def naive(batch, tok=tok):
            for _p, g in batch:
                text = tok.decode(g, skip_special_tokens=False)
                _ = tok.encode(text, add_special_tokens=False).ids != g

        t_cold = per_rollout_ms(one, items, repeat=1)  # words the tokenizer's BPE cache has not seen
        t_one, t_group, t_naive = (per_rollout_ms(f, items) for f in (one, grouped, naive))
        bad = sum(not check_ids(spec, g, p).canonical for p, g in items)
        print(f"{spec}: {len(items)} rollouts of {LENGTH} tokens, {bad} non-canonical")
        print(f"  check_ids, first pass  {t_cold:8.3f} ms per 1,000-token rollout")
        print(f"  check_ids              {t_one:8.3f} ms per 1,000-token rollout")
        print(f"  check_ids_batch ({args.group:>2})   {t_group:8.3f} ms per 1,000-token rollout")
        print(f"  naive decode+encode    {t_naive:8.3f} ms per 1,000-token rollout")
        print(f"  ratio first pass/naive {t_cold / t_naive:8.2f}")
        print(f"  ratio check_ids/naive  {t_one / t_naive:8.2f}")
        print(f"  ratio batch/naive      {t_group / t_naive:8.2f}")


if __name__ == "__main__":
    main()
