"""The time seed 001's merge saves: a forward with the hidden states merged after layer L against
the unmerged forward of the same ids, in one run, per prefix length and layer cut.

Both run the same layer-by-layer code (`scoring.merge`, fused or transformers) and produce the
last position's logits only; the merged one runs layers 0..L on n states, merges them (SLERP)
and runs the rest on about n/2. Runs alternate (unmerged, merged at each cut, repeated), the
best of ``--repeat`` is kept, so load spikes do not land on one side only.

    python benchmarks/bench_merge.py
    python benchmarks/bench_merge.py --lengths 256,1024 --engine transformers
"""

from __future__ import annotations

import argparse
import os
import time

from common import WIKITEXT  # also puts the repo on sys.path, offline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--engine", default="fused", choices=("fused", "transformers"))
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--cuts", default=None, help="layer cuts (default: 8 spread over the depth)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from tmcli.scoring.merge import load_stack, merge_states, parse_cuts
    from tmcli.sources.models import load_model
    from tmcli.sources.tokenizers import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, "cpu")
    stack = load_stack(args.engine, lm)
    cuts = parse_cuts(args.cuts, stack.n_layers)
    lengths = [int(x) for x in args.lengths.split(",")]
    text = WIKITEXT.read_text(encoding="utf-8") if WIKITEXT.exists() else "The cat sat. " * 2000
    ids = load_tokenizer(lm.tokenizer).encode(text[:20000], add_special_tokens=False).ids
    if len(ids) < max(lengths):
        raise SystemExit(f"only {len(ids)} ids of text for lengths up to {max(lengths)}")

    def forward(x, cut):
        positions = torch.arange(len(x), dtype=torch.float32)
        rope = stack.rope(positions)
        h = stack.embed(torch.tensor(x))
        for li in range(stack.n_layers):
            h = stack.layer(li, h, rope)
            if li == cut:
                merged, pm = merge_states(h[0], positions)
                h, rope = merged[None], stack.rope(pm)
        return stack.logits(h[0, -1:])

    print(f"{args.model} on {args.engine}, {stack.n_layers} layers, {torch.get_num_threads()} "
          f"threads, best of {args.repeat}, load average {os.getloadavg()[0]:.2f}")
    print("length  cut  merged length  unmerged s  merged s  time saved")
    with torch.inference_mode():
        for n in lengths:
            x = ids[:n]
            best = {c: float("inf") for c in [None, *cuts]}
            for _ in range(args.repeat):
                for cut in best:
                    t0 = time.perf_counter()
                    forward(x, -1 if cut is None else cut)
                    best[cut] = min(best[cut], time.perf_counter() - t0)
            m = merge_states(torch.zeros(n, 1), torch.arange(n, dtype=torch.float32))[0].shape[0]
            for cut in cuts:
                saved = 1 - best[cut] / best[None]
                print(f"{n:6d} {cut:4d} {m:14d} {best[None]:11.3f} {best[cut]:9.3f} {saved:10.1%}")


if __name__ == "__main__":
    main()
