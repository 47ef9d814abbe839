"""Tokens/s of each `generate --canonical` mode relative to `off`, in one run, same rows and seeds.

Each mode generates the same prompts x temperatures into its own file; the modes run in turn,
twice (off, constrain, retokenize, off, constrain, retokenize), so a change in machine load
shows in every mode, and each mode's rate is its tokens over its decoding seconds in both
rounds. Tokens per CPU-second are printed too, as a check on a shared machine. The model is
loaded (and converted, on first use) before timing. Also printed: how often constrain masked a
candidate and how often retokenize rewrote a completion.

    python benchmarks/bench_canonical.py
    python benchmarks/bench_canonical.py --n-prompts 4 --max-new-tokens 32 --temperatures 0,2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import generation_options  # also puts the repo on sys.path, offline

MODES = ("off", "constrain", "retokenize")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation_options(ap, n_prompts=8, temperatures="0,1,1.6,2", max_new_tokens=96)
    args = ap.parse_args()

    from tmcli import generate, load_model, parse_temperatures, read_prompts

    temps = parse_temperatures(args.temperatures)
    prompts = read_prompts(args.prompts, min_chars=args.min_chars, n_prompts=args.n_prompts)
    halves = [prompts[0::2], prompts[1::2]]
    load_model(args.model, "cpu")  # convert/cache before timing
    seconds = {m: 0.0 for m in MODES}
    cpu = {m: 0.0 for m in MODES}
    tokens = {m: 0 for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for half in halves:
            for mode in MODES:
                out = Path(tmp) / f"{mode}.jsonl"
                cpu0 = time.process_time()
                s = generate(args.model, half, out, temperatures=temps,
                             max_new_tokens=args.max_new_tokens, device="cpu",
                             threads=args.threads, canonical=mode)
                cpu[mode] += time.process_time() - cpu0
                seconds[mode] += s.seconds
                tokens[mode] += s.new_tokens
        stats = {m: [json.loads(line).get("canonical_stats") or {}
                     for line in (Path(tmp) / f"{m}.jsonl").read_text().splitlines()] for m in MODES}
    rows = len(prompts) * len(temps)
    print(f"{args.model}: {len(prompts)} prompts x {len(temps)} temperatures ({rows} rows) x "
          f"{args.max_new_tokens} tokens per mode, load average {os.getloadavg()[0]:.2f}")
    base = tokens["off"] / seconds["off"]
    base_cpu = tokens["off"] / cpu["off"]
    for m in MODES:
        rate = tokens[m] / seconds[m]
        print(f"  {m:<11} {rate:8.1f} tok/s  ratio to off {rate / base:5.2f}   "
              f"per CPU-second {tokens[m] / cpu[m]:7.1f} (ratio {tokens[m] / cpu[m] / base_cpu:.2f})")
    rejected = sum(s.get("rejected", 0) for s in stats["constrain"])
    rewrites = sum(s.get("rewrites", 0) for s in stats["retokenize"])
    rolled = sum(s.get("rolled_back", 0) for s in stats["retokenize"])
    print(f"  constrain masked {rejected} candidates; retokenize rewrote {rewrites} times "
          f"({rolled} cached tokens rolled back) over {rows} rows")


if __name__ == "__main__":
    main()
