"""Tokens/s of each generation engine against the study-style loop, in one run, same rows.

The study's script generated one prompt at a time: ``model.generate(ids, do_sample=True,
temperature=T, min_new_tokens=N, max_new_tokens=N)`` per (prompt, temperature). That loop runs
here (pure temperature sampling, top_k=0, as tmcli does) on a spread of the rows tmcli generates
(one-at-a-time throughput does not depend on how many rows there are, so a subset measures it),
before and after the engines. Every engine (fused, transformers, vLLM) in every dtype is loaded
first (loading and a short warm-up run are excluded), then they take turns on the same halves
of the rows (prompts x temperatures): engine A on half 1, B on half 1, ..., A on half 2, B on
half 2, so a change in machine load shows in all of them. Printed per engine and dtype: tok/s,
the ratios to the loop and to vLLM in the same dtype, the share of non-canonical completions
(`tmcli analyze`), and how many greedy rows equal the first engine's.

The truncation section times the fused engine's decoding with each truncation setting (pure,
top-k 50, top-p 0.95, min-p 0.05, top-k 50 + top-p 0.9) on the same rows, in turns, and prints
each one's tokens/s and its cost against pure sampling in the same run (the goal: <= 5%).
Decoding only: a one-token run (the prefill) is timed in each turn and subtracted.

    python benchmarks/bench_generate.py                  # wikitext prompts if ../shared is there
    python benchmarks/bench_generate.py --n-prompts 8 --max-new-tokens 64 --dtypes float32
    python benchmarks/bench_generate.py --model gemma3-270m --engines transformers,vllm
    python benchmarks/bench_generate.py --sections truncation --truncation-rows 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import generation_options  # also puts the repo on sys.path, offline


def study_loop(lm, tok, rows, n: int) -> tuple[int, float]:
    """The study's one-row-at-a-time ``model.generate`` loop; (tokens, seconds)."""
    import torch

    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for p, t in rows:
            ids = torch.tensor([tok.encode(p.text).ids])
            kw = dict(do_sample=True, temperature=t, top_k=0, top_p=1.0) if t > 0 else \
                dict(do_sample=False)
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=n,
                                    max_new_tokens=n, pad_token_id=lm.eos_ids[0], **kw)
            tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation_options(ap, n_prompts=16, temperatures="0:2:0.2", max_new_tokens=128)
    ap.add_argument("--baseline-rows", type=int, default=6, help="rows timed for the study loop")
    ap.add_argument("--engines", default="fused,transformers,vllm")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print where a decode step's time goes")
    ap.add_argument("--sections", default="engines,truncation")
    ap.add_argument("--truncation-rows", type=int, default=64, help="rows decoded together")
    ap.add_argument("--truncation-rounds", type=int, default=3)
    args = ap.parse_args()
    if "truncation" in args.sections:
        truncation_cost(args)
    if "engines" in args.sections:
        engines(args)


def truncation_cost(args) -> None:
    """What truncation adds to a decode step of the fused engine, two ways in one run: the
    sampler alone on a batch of the model's real logits (each setting against pure sampling,
    CPU time, many repeats: stable on a loaded machine), and whole decodes with each setting in
    turns (tok/s: what a user sees, noisier)."""
    import torch

    from tmcli import read_prompts
    from tmcli.generation import sampler
    from tmcli.generation.engines import EngineOptions, load_engine
    from tmcli.generation.truncation import NONE, Truncation
    from tmcli.sources.tokenizers import encode_prompt, prompt_tokenizer

    settings = {"pure": NONE, "top-k 50": Truncation(top_k=50),
                "top-p 0.95": Truncation(top_p=0.95), "min-p 0.05": Truncation(min_p=0.05),
                "top-k 50 + top-p 0.9": Truncation(50, 0.9)}
    eng = load_engine("fused", args.model, EngineOptions(device="cpu", threads=args.threads))
    ptok = prompt_tokenizer(eng.tokenizer)
    prompts = read_prompts(args.prompts, min_chars=args.min_chars, n_prompts=args.n_prompts)
    ids = [encode_prompt(ptok, p.text) for p in prompts]
    n, rows = args.max_new_tokens, args.truncation_rows
    index = [i % len(ids) for i in range(rows)]
    seen = []  # the last step's logits, captured from the decode loop itself
    real = sampler.sample

    def watch(logits, temps, noise, truncation=None):
        seen[:] = [(logits.clone(), temps.clone(), noise.clone())]
        return real(logits, temps, noise, truncation)

    def run(cut, steps):
        started, cpu = time.perf_counter(), time.process_time()
        eng.decode(ids, index, [1.0] * rows, list(range(rows)), mode="off", max_new_tokens=steps,
                   stop_at_eos=False, truncation=[cut] * rows if cut.active else None)
        return time.perf_counter() - started, time.process_time() - cpu

    print(f"truncation cost: fused engine, {rows} rows (T=1) x {n} new tokens, torch "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    sampler.sample = watch
    try:
        run(NONE, 2)  # warm-up, and a batch of real logits
    finally:
        sampler.sample = real
    # each setting's best round (the least disturbed by the machine's other load)
    wall = dict.fromkeys(settings, float("inf"))
    cpu = dict.fromkeys(settings, float("inf"))
    for _ in range(args.truncation_rounds):
        for name, cut in settings.items():
            w0, c0 = run(cut, 1)  # the prefill and one step: subtracted
            w, c = run(cut, n)
            wall[name] = min(wall[name], w - w0)
            cpu[name] = min(cpu[name], c - c0)
    steps = n - 1
    step_ms = 1000 * cpu["pure"] / steps  # one decode step of pure sampling, CPU time
    logits, temps, noise = seen[0]
    sample_ms = {}
    for name, cut in settings.items():
        cuts = [cut] * rows if cut.active else None
        sampler.sample(logits, temps, noise, cuts)
        started = time.process_time()
        for _ in range(20):
            sampler.sample(logits, temps, noise, cuts)
        sample_ms[name] = 1000 * (time.process_time() - started) / 20
    print(f"one decode step (pure sampling): {step_ms:.0f} ms of CPU")
    print(f"{'truncation':<22} {'sampler ms':>10} {'cost/step':>9} {'decode tok/s':>12} "
          f"{'cost':>7} {'tok/cpu-s':>10} {'cost':>7}")
    tokens = rows * steps
    for name in settings:
        extra = sample_ms[name] - sample_ms["pure"]
        print(f"{name:<22} {sample_ms[name]:10.1f} {extra / step_ms:+9.1%} "
              f"{tokens / wall[name]:12.1f} {wall[name] / wall['pure'] - 1:+7.1%} "
              f"{tokens / cpu[name]:10.1f} {cpu[name] / cpu['pure'] - 1:+7.1%}", flush=True)
    print("goal: each truncation costs <= 5% of a decode step (cost/step: the sampler's extra "
          "CPU time on the step's real logits over the step's CPU time; the decode columns time "
          "whole decodes in turns, wall clock and CPU, each setting's best of the rounds, and move with "
          "the machine's load)")
    eng.close()


def engines(args) -> None:
    import orjson
    import torch

    from tmcli import generate, load_model, parse_temperatures, read_prompts
    from tmcli.aggregate.analysis import analyze_file
    from tmcli.generation.engines import EngineOptions, load_engine, vllm_installed
    from tmcli.sources.tokenizers import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    temps = parse_temperatures(args.temperatures)
    prompts = read_prompts(args.prompts, min_chars=args.min_chars, n_prompts=args.n_prompts)
    n_rows = len(prompts) * len(temps)
    k = max(1, min(args.baseline_rows, n_rows))
    base_rows = [(prompts[i * len(prompts) // k], temps[i % len(temps)]) for i in range(k)]
    lm = load_model(args.model, "cpu")
    tok = load_tokenizer(lm.tokenizer)
    N = args.max_new_tokens
    lengths = [len(tok.encode(p.text).ids) for p in prompts]
    print(f"model {args.model}, {len(prompts)} prompts ({min(lengths)}-{max(lengths)} tokens) x "
          f"{len(temps)} temperatures = {n_rows} rows x {N} new tokens; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    half = len(base_rows) // 2 or 1
    loop = list(study_loop(lm, tok, base_rows[:half], N))
    print(f"study loop (first half): {loop[0] / loop[1]:.1f} tok/s", flush=True)
    engines = [e for e in args.engines.split(",") if e != "vllm" or vllm_installed()]
    loaded, results = {}, {}
    for dtype in args.dtypes.split(","):
        for name in engines:
            started = time.perf_counter()
            try:
                loaded[name, dtype] = load_engine(name, args.model, EngineOptions(
                    device="cpu", dtype=dtype, threads=args.threads,
                    max_model_len=max(lengths) + N + 8))
            except Exception as exc:  # noqa: BLE001 - print and go on with the others
                print(f"{name} {dtype}: not run ({exc})", flush=True)
                continue
            print(f"  loaded {name} {dtype} in {time.perf_counter() - started:.0f} s", flush=True)
            with tempfile.TemporaryDirectory() as scratch:  # one-time costs out of the timing
                generate(args.model, prompts[:2], Path(scratch) / "warm.jsonl",
                         temperatures=temps[:2], max_new_tokens=8, engine=loaded[name, dtype])
    stats = {key: [0, 0.0] for key in loaded}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for part in (prompts[0::2], prompts[1::2]):
                for key, eng in loaded.items():
                    s = generate(args.model, part, Path(tmp) / f"{key[0]}-{key[1]}.jsonl",
                                 temperatures=temps, max_new_tokens=N, engine=eng,
                                 batch_size=args.batch_size)
                    stats[key][0] += s.new_tokens
                    stats[key][1] += s.seconds
                    print(f"  {key[0]:<12} {key[1]:<9} {s.tokens_per_second:8.1f} tok/s on "
                          f"{len(part)} prompts", flush=True)
        finally:
            for eng in loaded.values():
                eng.close()
        for key in loaded:
            out = Path(tmp) / f"{key[0]}-{key[1]}.jsonl"
            recs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
            noncanon = analyze_file(str(out)).samples["noncanonical"].mean()
            results[key] = (stats[key][0] / stats[key][1], 0.0, noncanon, recs)
    tokens, seconds = study_loop(lm, tok, base_rows[half:], N)
    loop[0] += tokens
    loop[1] += seconds
    base = loop[0] / loop[1]
    print(f"study loop (model.generate, one row at a time, {len(base_rows)} rows): "
          f"{base:.1f} tok/s")
    first = next(iter(results), None)  # the reference for greedy rows: the first engine run
    ref = {(r["prompt_index"], r["temperature"]): r["token_ids"]
           for r in (results[first][3] if first else [])}
    title = f"greedy = {first[0]} {first[1]}" if first else "greedy"
    print(f"{'engine':<12} {'dtype':<9} {'tok/s':>8} {'x loop':>7} {'x vllm':>7} "
          f"{'non-canonical':>13} {title:>26}")
    for (name, dtype), (rate, _load, noncanon, recs) in results.items():
        vllm = results.get(("vllm", dtype))
        greedy = [r for r in recs if r["temperature"] == 0]
        same = sum(r["token_ids"] == ref.get((r["prompt_index"], 0.0)) for r in greedy)
        print(f"{name:<12} {dtype:<9} {rate:8.1f} {rate / base:7.1f} "
              f"{rate / vllm[0] if vllm else float('nan'):7.2f} {noncanon:13.1%} "
              f"{f'{same}/{len(greedy)}' if ref else '-':>26}")
    print("goals on this CPU: default engine >= 2x vllm in float32, >= 30x the study loop; "
          f"load average {os.getloadavg()[0]:.2f} (a shared machine moves every figure)")
    if args.profile:
        profile(lm, tok, prompts, temps, N, args.batch_size or 128)


def profile(lm, tok, prompts, temps, n, batch) -> None:
    """Top operators of 4 decode steps at full batch, after a warm-up."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tmcli.generation.engines.decoders import make_decoder
    from tmcli.generation.sampler import RowNoise, sample

    dec = make_decoder(lm.model)
    ids = [tok.encode(p.text).ids for p in prompts]
    width = max(map(len, ids))
    rows = [i % len(ids) for i in range(batch)]
    x = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, p in enumerate(ids):
        x[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), True
    noise = RowNoise(range(batch), "cpu")
    t = torch.tensor([temps[i % len(temps)] for i in range(batch)])
    with torch.inference_mode():
        logits = dec.prefill(x, mask, n)
        dec.select(torch.tensor(rows))
        logits = logits[rows]
        for _ in range(n // 2):  # a context halfway through the completion
            logits = dec.step(sample(logits, t, noise.draw(range(batch), logits.shape[1])))
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(4):
                logits = dec.step(sample(logits, t, noise.draw(range(batch), logits.shape[1])))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
