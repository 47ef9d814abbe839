"""Tokens/s of each `generate --canonical` mode relative to `off`, per engine, in one run, same
rows and seeds.

For each engine (loaded once, outside the timing), each mode generates the same prompts x
temperatures into its own file; the modes run in turn, twice (off, constrain, retokenize, off,
constrain, retokenize, on the two halves of the prompts), so a change in machine load shows in
every mode, and each mode's rate is its tokens over its decoding seconds in both rounds. Tokens
per CPU-second of this process are printed too (vLLM decodes in worker processes, so for it that
column says little). Also printed: how often constrain masked a candidate and how often retokenize
rewrote a completion. vLLM runs no retokenize (not supported there). Goal: constrain <= 1.15x the
cost of off on each engine.

    python benchmarks/bench_canonical.py
    python benchmarks/bench_canonical.py --n-prompts 4 --max-new-tokens 32 --temperatures 0,2
    python benchmarks/bench_canonical.py --engines fused,vllm
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


def run_engine(name: str, args, prompts, temps) -> None:
    from tmcli import generate
    from tmcli.generation.engines import EngineOptions, load_engine

    lengths_hint = args.max_new_tokens + 512
    eng = load_engine(name, args.model, EngineOptions(device="cpu", threads=args.threads,
                                                      max_model_len=lengths_hint))
    modes = [m for m in MODES if not (name == "vllm" and m == "retokenize")]
    seconds = {m: 0.0 for m in modes}
    cpu = {m: 0.0 for m in modes}
    tokens = {m: 0 for m in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for half in (prompts[0::2], prompts[1::2]):
                for mode in modes:
                    out = Path(tmp) / f"{mode}.jsonl"
                    cpu0 = time.process_time()
                    s = generate(args.model, half, out, temperatures=temps,
                                 max_new_tokens=args.max_new_tokens, engine=eng, canonical=mode)
                    cpu[mode] += time.process_time() - cpu0
                    seconds[mode] += s.seconds
                    tokens[mode] += s.new_tokens
            stats = {m: [json.loads(line).get("canonical_stats") or {} for line in
                         (Path(tmp) / f"{m}.jsonl").read_text().splitlines()] for m in modes}
    finally:
        eng.close()
    rows = len(prompts) * len(temps)
    print(f"{args.model} on {name}: {len(prompts)} prompts x {len(temps)} temperatures ({rows} "
          f"rows) x {args.max_new_tokens} tokens per mode, load average {os.getloadavg()[0]:.2f}")
    base = tokens["off"] / seconds["off"]
    base_cpu = tokens["off"] / cpu["off"]
    for m in modes:
        rate = tokens[m] / seconds[m]
        print(f"  {m:<11} {rate:8.1f} tok/s  cost vs off {base / rate:5.2f}x   "
              f"per CPU-second {tokens[m] / cpu[m]:7.1f} (ratio {tokens[m] / cpu[m] / base_cpu:.2f})")
    rejected = sum(s.get("rejected", 0) for s in stats["constrain"])
    line = f"  constrain masked {rejected} candidates"
    if "retokenize" in stats:
        rewrites = sum(s.get("rewrites", 0) for s in stats["retokenize"])
        rolled = sum(s.get("rolled_back", 0) for s in stats["retokenize"])
        line += f"; retokenize rewrote {rewrites} times ({rolled} cached tokens rolled back)"
    print(line + f" over {rows} rows", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation_options(ap, n_prompts=8, temperatures="0,1,1.6,2", max_new_tokens=96)
    ap.add_argument("--engines", default="fused,transformers,vllm")
    args = ap.parse_args()

    from tmcli import load_model, parse_temperatures, read_prompts
    from tmcli.generation.engines import vllm_installed

    temps = parse_temperatures(args.temperatures)
    prompts = read_prompts(args.prompts, min_chars=args.min_chars, n_prompts=args.n_prompts)
    load_model(args.model, "cpu")  # convert/cache before timing
    for name in args.engines.split(","):
        if name == "vllm" and not vllm_installed():
            print("vllm: not installed, skipped")
            continue
        run_engine(name, args, prompts, temps)


if __name__ == "__main__":
    main()
