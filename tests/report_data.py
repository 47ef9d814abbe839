"""Realistic outputs for the report tests, built from real text and real tokenizers.

`tmcli generate` is too slow for a test suite, so completions are WikiText continuations encoded
canonically with a real tokenizer and then perturbed the way models do it: a token is emitted as
two real vocabulary tokens (merged on re-encoding), or a two-token word is cut at another place
(re-segmented). The share of perturbed samples rises as a sigmoid in temperature and differs per
model, so every figure has a real shape; the numbers themselves come from the real `analyze_file`.

Run as a script to write a demo file: ``python tests/report_data.py out.jsonl``.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import orjson

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-test.txt"
TEMPERATURES = (0.0, 0.4, 0.8, 1.2, 1.6, 2.0)
# model name -> (tokenizer alias, sigmoid midpoint of the perturbed share)
MODELS = {"smollm2-135m": ("smollm2-135m", 1.0), "gpt2": ("gpt2", 1.4)}
REAL = Path(__file__).with_name("data") / "smollm2_generations.jsonl"  # make_generations.py
REAL_MODEL = "SmolLM2-135M-Instruct"
SCRIPT_TEXT = ' The page printed <script>alert(1)</script> and then </div> before the table.'


def _lines(n: int) -> list[str]:
    out = []
    with open(WIKITEXT, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if len(line) > 1100 and not line.startswith("="):
                out.append(line)
                if len(out) == n:
                    break
    return out


class _Perturber:
    """Splits and re-segments tokens of one real tokenizer."""

    def __init__(self, spec: str):
        from tmcli.measure.token_bytes import build_vocab
        from tmcli.sources.tokenizers import load_tokenizer

        self.tok = load_tokenizer(spec)
        self.vocab = build_vocab(self.tok)
        self.table = self.vocab.bytes_to_id()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def canonical_prefix(self, ids: list[int]) -> list[int]:
        """Drop trailing ids until the sequence is its own re-encoding."""
        while ids and self.encode(self.tok.decode(ids, skip_special_tokens=False)) != ids:
            ids = ids[:-1]
        return ids

    def split(self, tid: int, rng: random.Random) -> list[int] | None:
        b = self.vocab.token_bytes[tid]
        cuts = [k for k in range(1, len(b)) if b[:k] in self.table and b[k:] in self.table]
        if not cuts:
            return None
        k = rng.choice(cuts)
        return [self.table[b[:k]], self.table[b[k:]]]

    def recut(self, ids: list[int], rng: random.Random) -> list[int] | None:
        """The bytes of ``ids`` as two other real tokens (None when no such cut exists)."""
        whole = self.vocab.spell(ids)
        if whole in self.table:
            return None
        first = len(self.vocab.token_bytes[ids[0]])
        cuts = [k for k in range(1, len(whole)) if k != first
                and whole[:k] in self.table and whole[k:] in self.table]
        if not cuts:
            return None
        k = rng.choice(cuts)
        return [self.table[whole[:k]], self.table[whole[k:]]]

    def spell(self, ids: list[int]) -> list[int]:
        """Every byte its own token: the most non-canonical way to write a text."""
        data = self.vocab.spell(ids)
        return [self.table[data[i:i + 1]] for i in range(len(data))]


def perturb(p: _Perturber, ids: list[int], temperature: float, rng: random.Random) -> list[int]:
    """Non-canonical edits, more of them at higher temperature and later in the sequence.

    Most samples get splits (merged on re-encoding); some only re-segmentations, some only
    two tokens where the canonical form has three (lengthened), so all three kinds occur.
    """
    out = list(ids)
    mode = rng.choices(["split", "resegment", "lengthen"], weights=[70, 15, 15])[0]
    n_edits = 1 + int(rng.expovariate(1.0) * (0.5 + 1.5 * temperature))
    for _ in range(n_edits):
        for _attempt in range(50):
            pos = int(len(out) * rng.random() ** (1 / (1 + temperature)))
            pos = min(pos, len(out) - 3)
            width = {"split": 1, "resegment": 2, "lengthen": 3}[mode]
            new = (p.split(out[pos], rng) if mode == "split"
                   else p.recut(out[pos:pos + width], rng))
            if new:
                out[pos:pos + width] = new
                break
    return out


def build_outputs(path: str | Path, *, per_group: int = 32, n_tokens: int = 192,
                  few: dict | None = None, seed: int = 0, real: bool = True) -> Path:
    """Write tmcli records: MODELS × TEMPERATURES, ``per_group`` each (``few`` overrides some
    groups' counts, to exercise the too-few-samples warnings), plus one record whose text holds
    HTML and a script, spelled byte by byte so it ranks among the example completions.

    With ``real``, the committed real SmolLM2 samples follow as a third model, `REAL_MODEL`
    (on its own temperature grid: 0, 0.8, 1.4, 2.0; greedy has 8 samples, the others 32)."""
    few = few if few is not None else {("gpt2", 2.0): 10}
    rng = random.Random(seed)
    lines = _lines(per_group * len(TEMPERATURES))
    path = Path(path)
    with open(path, "wb") as fh:
        for model, (spec, midpoint) in MODELS.items():
            p = _Perturber(spec)
            k = 0
            for t in TEMPERATURES:
                # greedy output stays canonical
                share = 0.0 if t == 0 else 1 / (1 + math.exp(-5 * (t - midpoint)))
                for i in range(few.get((model, t), per_group)):
                    line = lines[k % len(lines)]
                    k += 1
                    words = line.split(" ")
                    prompt = " ".join(words[:40])
                    ids = p.encode(prompt + " " + " ".join(words[40:]))
                    n_prompt = len(p.encode(prompt))
                    full = p.canonical_prefix(ids[: n_prompt + n_tokens])
                    prompt_ids, completion = full[:n_prompt], full[n_prompt:]
                    if rng.random() < share:  # then cut back: generation length is forced
                        completion = perturb(p, completion, t, rng)[:n_tokens]
                    fh.write(orjson.dumps(_record(f"{model}-{t}-{i}", model, spec, t, p,
                                                  prompt_ids, completion)) + b"\n")
            if model == "smollm2-135m":
                prompt_ids = p.encode("A web page")
                ids = p.encode(SCRIPT_TEXT)
                cut = len(p.encode(" The page printed"))
                completion = ids[:cut] + p.spell(ids[cut:-4]) + ids[-4:]
                fh.write(orjson.dumps(_record("html-script", model, spec, 2.0, p, prompt_ids,
                                              completion)) + b"\n")
        if real:
            for line in REAL.read_bytes().splitlines():
                fh.write(orjson.dumps({**orjson.loads(line), "model": REAL_MODEL}) + b"\n")
    return path


def _record(rid, model, spec, t, p, prompt_ids, completion) -> dict:
    dec = p.tok.decode
    return {"id": rid, "model": model, "tokenizer": spec, "temperature": t,
            "prompt": dec(prompt_ids, skip_special_tokens=False), "prompt_token_ids": prompt_ids,
            "completion": dec(completion, skip_special_tokens=False), "token_ids": completion}


if __name__ == "__main__":
    print(build_outputs(sys.argv[1] if len(sys.argv) > 1 else "outputs.jsonl"))
