"""Regenerate `tests/data/smollm2_generations.jsonl`: real SmolLM2-135M samples for report tests.

Sampling a model takes minutes on CPU, too slow for every test run, so a small set is generated
once with this script and committed: pure temperature sampling (no top-k/top-p), forced length.
The prompts are the project's own sentences. Run:
``HF_HUB_OFFLINE=1 PYTHONPATH=. python tests/make_generations.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

PROMPTS = [
    "The history of the old lighthouse on the northern coast begins in",
    "When the committee published its final report, the first thing readers noticed was",
    "In the spring of that year the river flooded the lower town, and",
    "The recipe calls for three kinds of flour, which",
    "Our team measured the temperature of the lake every morning because",
    "The museum's new wing, designed by a young architect, contains",
    "After the match the coach explained to reporters that",
    "A short guide to repairing a bicycle chain: first,",
]
TEMPERATURES = (0.0, 0.8, 1.4, 2.0)
N_PER_PROMPT = 4
NEW_TOKENS = 64
OUT = Path(__file__).with_name("data") / "smollm2_generations.jsonl"


def main(out: Path = OUT) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from tmcli.sources.locate import resolve_source
    from tmcli.sources.tokenizers import load_tokenizer

    source = resolve_source("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(str(source.directory), gguf_file=source.gguf_file,
                                                 torch_dtype=torch.float32)
    model.eval()
    tok = load_tokenizer("smollm2-135m")
    prompts = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    pad = model.config.eos_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with open(out, "wb") as fh:
        for t in TEMPERATURES:
            reps = 1 if t == 0 else N_PER_PROMPT  # greedy repeats itself
            sampling = ({"do_sample": False} if t == 0 else
                        {"do_sample": True, "temperature": t, "top_k": 0, "top_p": 1.0})
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.repeat(reps, 1), attention_mask=mask.repeat(reps, 1),
                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=pad,
                    **sampling)
            for row, seq in enumerate(gen[:, width:].tolist()):
                k = row % len(prompts)
                rec = {"id": f"smollm2-T{t:g}-{row}", "model": "smollm2-135m",
                       "tokenizer": "smollm2-135m", "temperature": t, "prompt": PROMPTS[k],
                       "prompt_token_ids": prompts[k], "completion": tok.decode(seq,
                       skip_special_tokens=False), "token_ids": seq,
                       "sampling": {**sampling, "max_new_tokens": NEW_TOKENS,
                                    "min_new_tokens": NEW_TOKENS}}
                fh.write(orjson.dumps(rec) + b"\n")
            print(f"T={t:g}: {len(gen)} samples", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
