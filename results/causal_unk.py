"""Causal test behind RESULTS.md's correction: is Gemma-3's greedy non-canonical output a property
of the model, or of how the prompts were encoded?

The same 32 WikiText prompts (the study's), greedy, two arms that differ only in how the prompt
text ``<unk>`` (in every study prompt) is encoded:
  as text      ``▁<``, ``unk``, ``>`` (tmcli now; `tmcli.sources.tokenizers.encode_prompt`)
  as special   the control token ``<unk>`` (id 3), which is what tmcli did before: the tokenizer
               parsed special-token strings in prompt text.
Each completion is measured in context by the same engine. Writes results/causal_unk.json.

    python results/causal_unk.py [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    from tmcli.generation.engines.decoders import make_decoder
    from tmcli.generation.engines.transformers import decode_batch
    from tmcli.generation.prompts import read_prompts
    from tmcli.measure.alignment import Sample
    from tmcli.measure.reencode import Reencoder
    from tmcli.measure.token_bytes import vocab_for
    from tmcli.sources.models import load_model
    from tmcli.sources.tokenizers import encode_prompt, load_tokenizer, prompt_tokenizer

    prompts = read_prompts(str(PROMPTS), min_chars=640, n_prompts=args.n_prompts, shuffle=True,
                           seed=0)
    lm = load_model(args.model, "cpu")
    as_text = [encode_prompt(prompt_tokenizer(lm.tokenizer), p.text) for p in prompts]
    parsing = load_tokenizer(lm.tokenizer)  # the shared copy parses "<unk>" as id 3
    assert not parsing.encode_special_tokens
    as_special = [parsing.encode(p.text, add_special_tokens=True).ids for p in prompts]
    unk = parsing.token_to_id("<unk>")
    reencoder = Reencoder(vocab_for(lm.tokenizer))
    out = {"model": args.model, "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
           "unk_id": unk, "arms": {}}
    for arm, ids in (("as text", as_text), ("as special", as_special)):
        decoder = make_decoder(lm.model)
        rows = list(range(len(ids)))
        gens = decode_batch(decoder, ids, rows, [0.0] * len(ids), [0] * len(ids),
                            max_new_tokens=args.max_new_tokens, eos_ids=lm.eos_ids)
        measured = reencoder.measure([Sample(g, p) for (g, _r), p in zip(gens, ids)])
        lone = sum(1 for m in measured for s in m.spans
                   if reencoder.vocab.spell(s["before"][:1]) == b" ")
        spans = sum(m.n_spans for m in measured)
        out["arms"][arm] = {
            "prompts_holding_unk_id": sum(unk in p for p in ids),
            "noncanonical": sum(m.noncanonical for m in measured),
            "n": len(measured),
            "noncanonical_tokens": sum(m.noncanonical_tokens for m in measured),
            "tokens": sum(m.n_tokens for m in measured),
            "spans": spans,
            "spans_starting_with_a_lone_space": lone,
        }
        print(arm, json.dumps(out["arms"][arm]), flush=True)
    path = ROOT / "results" / "causal_unk.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
