"""Tokens/s of `tmcli generate` against the study-style loop, in one run, same model and inputs.

The study's script generated one prompt at a time: ``model.generate(ids, do_sample=True,
temperature=T, min_new_tokens=N, max_new_tokens=N)`` per (prompt, temperature). Here that loop
runs (with pure temperature sampling, top_k=0, as tmcli does) on a spread of the same rows
tmcli generates (every temperature, several prompts). One-at-a-time throughput does not depend on
how many rows there are, so the subset measures it; ``--baseline-rows 0`` runs the loop on every
row. The two alternate (loop, tmcli on half the prompts, loop, tmcli, loop) so that a change in
machine load shows in both; tokens per CPU-second are printed too, as a check on a shared machine.
Model loading is excluded on both sides (printed apart for tmcli).

    python benchmarks/bench_generate.py                  # wikitext prompts if ../shared is there
    python benchmarks/bench_generate.py --max-new-tokens 64 --n-prompts 8 --baseline-rows 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import generation_options  # also puts the repo on sys.path, offline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation_options(ap, n_prompts=16, temperatures="0:2:0.2", max_new_tokens=128)
    ap.add_argument("--baseline-rows", type=int, default=11, help="0: every row")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print where a decode step's time goes")
    args = ap.parse_args()

    import torch

    from tmcli import generate, load_model, parse_temperatures, read_prompts
    from tmcli.loading import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    temps = parse_temperatures(args.temperatures)
    prompts = read_prompts(args.prompts, min_chars=args.min_chars, n_prompts=args.n_prompts)
    rows = [(p, t) for p in prompts for t in temps]
    if args.baseline_rows <= 0 or args.baseline_rows >= len(rows):
        base_rows = rows
    else:  # temperatures in turn, prompts spread over the list
        n = args.baseline_rows
        base_rows = [(prompts[i * len(prompts) // n], temps[i % len(temps)]) for i in range(n)]
    lm = load_model(args.model, "cpu")
    tok = load_tokenizer(lm.tokenizer)
    N = args.max_new_tokens
    lengths = [len(tok.encode(p.text).ids) for p in prompts]
    print(f"model {args.model}, {len(prompts)} prompts ({min(lengths)}-{max(lengths)} tokens) x "
          f"{len(temps)} temperatures = {len(rows)} rows x {N} new tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")

    greedy_ref: dict[int, list[int]] = {}

    cpu = {"loop": 0.0, "tmcli": 0.0}

    def baseline(chunk) -> tuple[int, float]:
        tokens, started, cpu0 = 0, time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for p, t in chunk:
                ids = torch.tensor([tok.encode(p.text).ids])
                kw = dict(do_sample=True, temperature=t, top_k=0, top_p=1.0) if t > 0 else \
                    dict(do_sample=False)
                out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=N,
                                        max_new_tokens=N, pad_token_id=lm.eos_ids[0], **kw)
                new = out[0, ids.shape[1]:].tolist()
                tokens += len(new)
                if t == 0:
                    greedy_ref[p.index] = new
        cpu["loop"] += time.process_time() - cpu0
        return tokens, time.perf_counter() - started

    # Alternate: baseline, tmcli on half the prompts, baseline, tmcli on the other half,
    # baseline, so that both see the same changes in machine load.
    halves = [prompts[: len(prompts) // 2], prompts[len(prompts) // 2 :]]
    cuts = [0, len(base_rows) // 3, 2 * len(base_rows) // 3, len(base_rows)]
    base, ours, wall, phases = [0, 0.0], [0, 0.0], 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        for k in range(3):
            tokens, seconds = baseline(base_rows[cuts[k] : cuts[k + 1]])
            base[0] += tokens
            base[1] += seconds
            phases.append(f"loop {tokens / seconds:.1f}" if seconds else "")
            if k == 2:
                break
            started, cpu0 = time.perf_counter(), time.process_time()
            summary = generate(args.model, halves[k], out, temperatures=temps, max_new_tokens=N,
                               device="cpu", batch_size=args.batch_size, threads=args.threads)
            wall += time.perf_counter() - started
            cpu["tmcli"] += time.process_time() - cpu0  # includes model loading (~1-2 s)
            ours[0] += summary.new_tokens
            ours[1] += summary.seconds
            phases.append(f"tmcli {summary.tokens_per_second:.1f}")
        import orjson

        records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    base_rate, rate = base[0] / base[1], ours[0] / ours[1]
    same = sum(r["token_ids"] == greedy_ref[r["prompt_index"]] for r in records
               if r["temperature"] == 0 and r["prompt_index"] in greedy_ref)
    print(f"study-style loop (model.generate, one row at a time, {len(base_rows)} rows): "
          f"{base[0]} tokens in {base[1]:.1f} s = {base_rate:.1f} tok/s")
    print(f"tmcli generate (batch {records[0]['batch_size']}, {records[0]['engine']}, "
          f"{len(records)} rows): {ours[0]} tokens in {ours[1]:.1f} s = {rate:.1f} tok/s "
          f"(with model loading: {ours[0] / wall:.1f} tok/s)")
    print(f"tok/s by phase, in order: {', '.join(p for p in phases if p)}")
    cpu_ratio = (ours[0] / cpu["tmcli"]) / (base[0] / cpu["loop"])
    print(f"tokens per CPU-second (insensitive to other processes): loop "
          f"{base[0] / cpu['loop']:.1f}, tmcli {ours[0] / cpu['tmcli']:.1f}, ratio {cpu_ratio:.1f}x")
    print(f"speed-up: {rate / base_rate:.1f}x   greedy rows identical to model.generate: "
          f"{same}/{len(greedy_ref)}   load average {os.getloadavg()[0]:.2f}")
    if args.profile:
        profile(lm, tok, prompts, temps, N, args.batch_size or 128)


def profile(lm, tok, prompts, temps, n, batch) -> None:
    """Top operators of 4 decode steps at full batch, after a warm-up."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tmcli.decoders import make_decoder
    from tmcli.sampler import RowNoise, sample

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
