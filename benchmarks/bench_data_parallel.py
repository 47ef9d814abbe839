"""2 data-parallel replicas on a local Ray against 1 process, in one run, on the same rows.

Three arms, all on the same rows, all writing the same records (checked: ids and token ids equal
as sets): one process with all the cores' threads (what `generate` does without Ray), one
process with one thread (what each replica runs, on a CPU: cores / N threads), and N replicas.
The rows are split in two halves run in the order A B C, C B A, so a drift in machine load falls
on every arm. Printed: decode tokens/s of each (model loading excluded), the speed-up of the
replicas over each single process and the efficiency (speed-up / N), then the end-to-end seconds
with loading and Ray's start-up, and the load average before and after.

On a dedicated CPU the replicas share the cores that the single process already uses with all
its threads, so expect about 1x over it (less Ray's overhead and the smaller batches of each
replica), and about Nx over one thread. On a shared, oversubscribed machine (load average above
the core count) a multi-threaded process loses far more than single-threaded ones: its threads
wait at every parallel region for a core another process holds, so the replicas can come out
ahead of it; that is the contention, not data parallelism, and the one-thread arm shows it. On a
GPU node each replica has its own GPU: expect ~Nx the tokens/s of one, less the driver's
writing (per batch, small).

    python benchmarks/bench_data_parallel.py                      # 8 prompts x 3 T x 64 tokens
    python benchmarks/bench_data_parallel.py --n-prompts 16 --replicas 2 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import generation_options  # also puts the repo on sys.path, offline


def _pairs(path: Path) -> set[tuple]:
    return {(r["id"], tuple(r["token_ids"]))
            for r in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation_options(ap, n_prompts=8, temperatures="0,1,2", max_new_tokens=64)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--engine", default="fused")
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()

    import ray

    from tmcli import generate, parse_temperatures, read_prompts

    prompts = read_prompts(args.prompts, min_chars=args.min_chars, n_prompts=args.n_prompts,
                           shuffle=True, seed=0)
    halves = [prompts[: len(prompts) // 2], prompts[len(prompts) // 2:]]
    kw = dict(temperatures=parse_temperatures(args.temperatures), engine=args.engine,
              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    print(f"{len(prompts)} prompts x {len(kw['temperatures'])} temperatures x "
          f"{args.max_new_tokens} tokens, {args.engine} engine, {cores} cores, load average "
          f"{load_before:.1f}")
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    arms = {"1 process": {"threads": cores}, "1 process, 1 thread": {"threads": 1},
            f"{args.replicas} replicas": {"data_parallel_size": args.replicas}}
    totals = {name: [0, 0.0, 0.0] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: Path(tmp) / f"{i}.jsonl" for i, name in enumerate(arms)}
        order = [(0, name) for name in arms] + [(1, name) for name in reversed(arms)]
        for half, name in order:
            s = generate(args.model, halves[half], out[name], **kw, **arms[name])
            totals[name][0] += s.new_tokens
            totals[name][1] += s.seconds
            totals[name][2] += s.seconds + s.load_seconds
            print(f"  half {half + 1}, {name:20}: {s.new_tokens / s.seconds:7.1f} tok/s decoding "
                  f"({s.seconds:.1f} s), loading {s.load_seconds:.1f} s", flush=True)
        pairs = [_pairs(path) for path in out.values()]
        same = all(p == pairs[0] for p in pairs)
    ray.shutdown()
    rate = {name: t / s for name, (t, s, _e) in totals.items()}
    for name, (_t, _s, e) in totals.items():
        extra = f" (+ {ray_start:.1f} s to start Ray, once)" if "replicas" in name else ""
        print(f"{name:20}: {rate[name]:7.1f} tok/s decoding, {e:.1f} s with loading{extra}")
    dp = rate[f"{args.replicas} replicas"]
    for name in ("1 process", "1 process, 1 thread"):
        print(f"{args.replicas} replicas vs {name:20}: speed-up {dp / rate[name]:.2f}x, "
              f"efficiency {dp / rate[name] / args.replicas:.2f}")
    print(f"records identical in all arms: {same} ({len(pairs[0])} records); {cores} cores; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
