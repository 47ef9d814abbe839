"""Causal test behind RESULTS.md §4: the study script's whole-sequence measure on Gemma-3 greedy
and low-temperature completions, with one change only: whether text spelling ``<unk>`` is parsed
as the special id (transformers' ``tokenizer(text)``, what the script did) or encoded as text.

    HF_HUB_OFFLINE=1 .venv/bin/python results/causal_study_unk.py study_out/scored.jsonl

Prints JSON (also written to results/causal_study_unk.json).
"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer

from tmcli.sources.tokenizers import load_tokenizer


def main(path: str) -> dict:
    base = load_tokenizer("gemma3-270m")
    arms = {}
    for name, split in (("special parsed (the script)", False), ("special as text", True)):
        tok = Tokenizer.from_str(base.to_str())
        tok.encode_special_tokens = split
        arms[name] = tok
    out = {}
    for line in Path(path).open(encoding="utf-8"):
        r = json.loads(line)
        if r["model"] != "gemma3-270m" or r["canonical"] != "off" or r["temperature"] > 0.8:
            continue
        g = r["token_ids"]
        row = out.setdefault(str(r["temperature"]), {k: 0 for k in arms} | {"n": 0, "holding <unk> text": 0})
        row["n"] += 1
        row["holding <unk> text"] += "<unk>" in r["completion"]
        for name, tok in arms.items():
            text = tok.decode(g, skip_special_tokens=True)
            c = tok.encode(text, add_special_tokens=True).ids
            row[name] += (len(g) - len(c)) / len(g) > 0
    return {"measure": "samples with whole-sequence study compression > 0", "by_temperature": out}


if __name__ == "__main__":
    result = main(sys.argv[1] if len(sys.argv) > 1 else "study_out/scored.jsonl")
    text = json.dumps(result, indent=2)
    Path(__file__).with_name("causal_study_unk.json").write_text(text + "\n")
    print(text)
