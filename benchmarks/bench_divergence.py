"""`score --divergence` throughput (non-canonical samples/s) against two plain forwards of the same
ids, in one run.

The baseline is what a direct implementation does per sample: the model's own forward
(``model(input_ids).logits``) on the generated ids and on the canonical ids, one call each.
`divergence_many` does the whole job (canonical ids from `check_ids`, aligned positions, the
forwards, every comparison) on the fused and the transformers forward. Each method runs twice
over the same samples, in turn (baseline, fused, transformers, baseline, ...), so a change in
machine load shows in every one; rates are samples over seconds of both rounds. Goal: >= 0.8x
the baseline. A mixed file (canonical samples too) is faster still: those need no forward.

    python benchmarks/bench_divergence.py                       # tests/data generations
    python benchmarks/bench_divergence.py --records study_out/divergence/outputs.jsonl --n 24
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import ROOT  # also puts the repo on sys.path, offline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default=str(ROOT / "tests" / "data" / "smollm2_generations.jsonl"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=16, help="non-canonical samples to score")
    ap.add_argument("--after", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch

    from tmcli.measure.rollout_check import check_ids_batch, reencoder_for
    from tmcli.scoring.divergence import divergence_many
    from tmcli.scoring.forward import load_forward
    from tmcli.sources.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in open(args.records, encoding="utf-8")]
    rows = [r for r in rows if r.get("model", args.model) == args.model]
    lm = load_model(args.model, "cpu")
    enc = reencoder_for(lm.tokenizer)
    checks = check_ids_batch(enc, [r["token_ids"] for r in rows],
                             [r.get("prompt_token_ids") or [] for r in rows])
    picked = [(r.get("prompt_token_ids") or [], r["token_ids"], c.canonical_ids)
              for r, c in zip(rows, checks)
              if any(s.generated != s.canonical for s in c.spans)][: args.n]
    if not picked:
        raise SystemExit("no non-canonical sample in the records")
    items = [(p, g) for p, g, _c in picked]
    forwards = {name: load_forward(name, lm) for name in ("fused", "transformers")}

    def baseline():
        with torch.inference_mode():
            for p, g, c in picked:
                for ids in (p + g, p + c):
                    lm.model(input_ids=torch.tensor([ids]))

    methods = {"two plain forwards (baseline)": baseline,
               **{f"divergence, {name}": (lambda f=f: divergence_many(f, enc, items, args.after))
                  for name, f in forwards.items()}}
    seconds = {m: 0.0 for m in methods}
    for _round in range(args.rounds):
        for name, run in methods.items():
            t0 = time.perf_counter()
            run()
            seconds[name] += time.perf_counter() - t0
    n = len(picked) * args.rounds
    tokens = sum(len(p) + len(g) for p, g, _c in picked) / len(picked)
    print(f"{args.model}: {len(picked)} non-canonical samples (mean {tokens:.0f} tokens with the "
          f"prompt), K={args.after}, {args.rounds} rounds, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    base = n / seconds["two plain forwards (baseline)"]
    for name in methods:
        rate = n / seconds[name]
        print(f"  {name:32s} {rate:7.2f} samples/s  {rate / base:5.2f}x the baseline")


if __name__ == "__main__":
    main()
