"""Throughput and memory of `tmcli analyze`, against baselines measured in the same run.

Throughput (`--section throughput`), on two data sets (`make_data`): ``realistic`` (30% of the
completions non-canonical, with 1-3 split tokens each, as in real T=1 output) and
``noncanonical`` (~2% of tokens split, ~0.5% random ids: nearly every completion differs), each
WikiText encoded with SmolLM2's tokenizer, 1,024-id completions after 64-id prompts. Prints
tokens/s of:
  tmcli      analyze_file() end to end: JSONL parsing, in-context re-encoding, byte alignment,
             aligned 64-token windows, group statistics with bootstrap CIs
  encode     raw `tokenizers` encode_batch (and encode_batch_fast) of the same completion texts
             on every core (no parsing, no alignment, no windows, no statistics)
  in context encode_batch of each prompt's text followed by its completion's, on every core:
             what an exact verdict in context must encode at the least, so tmcli's ceiling
  study      (non-canonical data) the study's per-sample loop: transformers decode + re-encode of
             each sample and of each 64-token window (as in the study's ablations.py)
and the ratios tmcli/encode_batch (goals: >= 1.0 on the realistic data, >= 0.8 on the
non-canonical data: tmcli's exact verdicts cost no more than one plain encode of every token)
and tmcli/study loop (bound by the same encoder, no goal of its own). tmcli and the encoders run
in turns (--rounds, default 3), so a change in the machine's load hits them all; each figure is
the best of its rounds.

Memory (`--section memory`): peak RSS of `tmcli analyze --json --output x.parquet` in a fresh
process (children included) on N and 10*N completions of --mem-ids ids, realistic and random
(every id uniformly random: every token in a differing span); goal: the 10x input takes <= 1.2x
the memory. With --mem-gb, a realistic JSONL file of that size (goal: < 600 MiB for 1 GB).

    python benchmarks/bench_analyze.py [--n 3000] [--section throughput|memory|all]
        [--mem-base 20000] [--mem-ids 256] [--mem-gb 1]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
TOKENIZER = "smollm2-135m"


DATA = ("realistic", "noncanonical", "random")


def make_data(path: Path, n: int, seed: int = 0, length: int = 1024,
              kind: str = "noncanonical") -> int:
    """``n`` completions of ``length`` ids after 64-id prompts, WikiText encoded with SmolLM2's
    tokenizer; ``kind``: ``noncanonical`` (~2% of tokens split into two real tokens, ~0.5%
    replaced by random ids: nearly every completion non-canonical), ``realistic`` (30% of the
    completions with 1-3 tokens split, the rest canonical, as in real T=1 output) or ``random``
    (uniformly random ids, prompt included: every token in a differing span)."""
    from tmcli.measure.token_bytes import vocab_for

    vocab = vocab_for(TOKENIZER)
    tok = vocab.original
    rng = random.Random(seed)
    text = WIKITEXT.read_text(encoding="utf-8") if WIKITEXT.exists() else (
        ROOT / "sample_data" / "prompts.txt").read_text(encoding="utf-8") * 200
    stream = tok.encode(text, add_special_tokens=False).ids
    table = vocab.bytes_to_id()

    def split(t: int) -> list[int] | None:  # a token spelled as two real tokens
        b = vocab.token_bytes[t]
        return [table[b[:1]], table[b[1:]]] if len(b) > 1 and b[:1] in table \
            and b[1:] in table else None

    total = 0
    with open(path, "wb") as fh:
        for i in range(n):
            start = rng.randrange(0, len(stream) - length - 76)
            prompt, g = stream[start : start + 64], []
            if kind == "random":
                prompt = [rng.randrange(0, vocab.size) for _ in range(64)]
                g = [rng.randrange(0, vocab.size) for _ in range(length)]
            elif kind == "realistic":
                g = list(stream[start + 64 : start + 64 + length])
                if rng.random() < 0.3:
                    for _ in range(rng.randint(1, 3)):
                        for _try in range(50):  # a token that has a two-token spelling
                            at = rng.randrange(len(g))
                            two = split(g[at])
                            if two:
                                g[at : at + 1] = two
                                break
            for t in stream[start + 64 :] if kind == "noncanonical" else ():
                if len(g) >= length:
                    break
                r = rng.random()
                two = split(t) if r < 0.02 else None
                if two:
                    g += two
                elif 0.02 <= r < 0.025:
                    g.append(rng.randrange(0, vocab.size))
                else:
                    g.append(t)
            g = g[:length]
            total += len(g)
            rec = {"id": str(i), "model": TOKENIZER, "tokenizer": TOKENIZER,
                   "temperature": [0.0, 1.0, 2.0][i % 3], "prompt_token_ids": prompt,
                   "token_ids": g}
            fh.write(orjson.dumps(rec) + b"\n")
    return total


def bench_tmcli(path: Path) -> tuple[float, float]:
    """tokens/s of `analyze_file` end to end, and the share of non-canonical samples."""
    from tmcli.aggregate.analysis import analyze_file

    t = time.perf_counter()
    a = analyze_file(str(path), keep_samples=False)  # as `tmcli analyze` runs it
    dt = time.perf_counter() - t
    groups = a.groups
    share = float((groups["n_noncanonical"].sum()) / groups["n"].sum())
    print(f"  tmcli: {groups['n'].sum()} samples, {share:.0%} non-canonical, {dt:.2f} s",
          file=sys.stderr)
    return int(groups["n_tokens"].sum()) / dt, share


def load_ids(path: Path, limit: int | None = None, field: str = "token_ids") -> list[list[int]]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            out.append(orjson.loads(line)[field])
            if limit and len(out) >= limit:
                break
    return out


def bench_study(path: Path, n: int) -> float:
    """The study's loop, through transformers, one sample and one window at a time."""
    from transformers import PreTrainedTokenizerFast

    from tmcli.sources.tokenizers import load_tokenizer

    hf = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(TOKENIZER))
    samples = load_ids(path, n)
    t = time.perf_counter()
    tokens = 0
    for g in samples:
        text = hf.batch_decode([g], skip_special_tokens=True)[0]
        _ = (len(g) - len(hf(text).input_ids)) / len(g)
        for i in range(0, len(g), 64):
            w = hf.batch_decode([g[i : i + 64]], skip_special_tokens=True)[0]
            _ = (64 - len(hf(w).input_ids)) / 64
        tokens += len(g)
    return tokens / (time.perf_counter() - t)


class Encoders:
    """The baselines: `tokenizers` encode_batch (with offsets, as most callers use it) and
    encode_batch_fast of the completion texts, and the ceiling: encode_batch of what an exact
    verdict in context must encode (each prompt's text followed by its completion's), all on
    every core (Rust threads), tokens/s counted over the completions' ids alone."""

    def __init__(self, path: Path):
        from tmcli.sources.tokenizers import load_tokenizer

        self.tok = load_tokenizer(TOKENIZER)
        samples, prompts = load_ids(path), load_ids(path, field="prompt_token_ids")
        self.texts = self.tok.decode_batch(samples, skip_special_tokens=False)
        self.whole = self.tok.decode_batch([p + g for p, g in zip(prompts, samples)],
                                           skip_special_tokens=False)
        self.tokens = sum(map(len, samples))

    def measure(self) -> dict[str, float]:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"  # tmcli's workers turn Rust threads off
        out = {}
        for name, call, inputs in (("encode_batch", self.tok.encode_batch, self.texts),
                                   ("encode_batch_fast", self.tok.encode_batch_fast, self.texts),
                                   ("ceiling", self.tok.encode_batch, self.whole)):
            t = time.perf_counter()
            call(inputs, add_special_tokens=False)
            out[name] = self.tokens / (time.perf_counter() - t)
        return out


GOALS = {"realistic": 1.0, "noncanonical": 0.8}


def throughput(args, tmp: str) -> None:
    for kind in args.data.split(","):
        goal = GOALS[kind]
        data = Path(tmp) / f"{kind}.jsonl"
        tokens = make_data(data, args.n, kind=kind)
        size = data.stat().st_size / 2**20
        print(f"data ({kind}): {args.n} completions, {tokens} generated ids, {size:.0f} MiB JSONL")
        encoders = Encoders(data)
        best: dict[str, float] = {}
        for _ in range(args.rounds):  # in turns, so a change in the machine's load hits all
            figures = encoders.measure()
            figures["tmcli"], share = bench_tmcli(data)
            best = {k: max(v, best.get(k, 0.0)) for k, v in figures.items()}
        tmcli, limit = best["tmcli"], best["encode_batch"]
        print(f"  tmcli analyze (exact)    {tmcli:12,.0f} tokens/s   (every core, end to end; "
              f"{share:.0%} of samples non-canonical)")
        print(f"  encode_batch             {limit:12,.0f} tokens/s   (every core, texts only)")
        print(f"  encode_batch_fast        {best['encode_batch_fast']:12,.0f} tokens/s   "
              "(every core, no offsets)")
        print(f"  encode_batch in context  {best['ceiling']:12,.0f} tokens/s   (every core: "
              "prompt + completion texts, what an exact verdict in context encodes)")
        print(f"  ratio tmcli/encode_batch      {tmcli / limit:7.2f}   (goal >= {goal})")
        print(f"  ratio tmcli/encode_batch_fast {tmcli / best['encode_batch_fast']:7.2f}")
        print(f"  ratio in context/encode_batch {best['ceiling'] / limit:7.2f}   (the encoder "
              "alone on tmcli's input, no parsing or comparison: tmcli's ceiling)")
        if kind == "noncanonical" and args.study_n:
            study = bench_study(data, args.study_n)
            print(f"  study-style loop         {study:12,.0f} tokens/s   (one core, as the script)")
            print(f"  ratio tmcli/study loop        {tmcli / study:7.2f}")


# -- memory -------------------------------------------------------------------------------------

def replicate(src: Path, dst: Path, *, copies: int | None = None, size: int | None = None) -> int:
    """Write ``src``'s records again and again under new ids (``copies`` times, or until ``size``
    bytes); returns the number of records. Fast where `make_data` is not, for large inputs."""
    lines = [orjson.loads(line) for line in src.read_bytes().splitlines()]
    n = written = 0
    with open(dst, "wb") as fh:
        while (copies is not None and n < copies * len(lines)) or (size is not None and written < size):
            rec = dict(lines[n % len(lines)], id=f"r{n}")
            line = orjson.dumps(rec) + b"\n"
            fh.write(line)
            written += len(line)
            n += 1
    return n


# Run by a small fresh interpreter: Linux starts an exec'd process's peak RSS at its parent's
# (exec keeps the old image's high-water mark), so a child of this large benchmark process would
# report this process's size, not its own.
_WAIT = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
         "_, status, usage = os.wait4(p.pid, 0); print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)")


def peak_rss(path: Path, *extra: str) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time of `tmcli analyze PATH --json --output ...` in a fresh
    process; the peak covers its worker processes too (os.wait4 reports the largest)."""
    out = path.with_suffix(".parquet")
    cmd = [sys.executable, "-m", "tmcli", "analyze", str(path), "--json", "--output", str(out),
           *extra]
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _WAIT, *cmd], capture_output=True, text=True,
                         cwd=ROOT)
    code, kib = map(int, run.stdout.split())
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return kib / 1024, time.perf_counter() - t  # Linux reports KiB


MEMORY_DATA = ("realistic", "random")


def memory(args, tmp: str) -> None:
    big_realistic = None
    for kind in MEMORY_DATA:
        small, big = Path(tmp) / f"small-{kind}.jsonl", Path(tmp) / f"big-{kind}.jsonl"
        make_data(small, args.mem_base, seed=1, length=args.mem_ids, kind=kind)
        make_data(big, 10 * args.mem_base, seed=2, length=args.mem_ids, kind=kind)
        (rss_small, t_small), (rss_big, t_big) = peak_rss(small), peak_rss(big)
        print(f"peak RSS ({kind}) {args.mem_base:>8,} completions x {args.mem_ids} ids "
              f"{rss_small:8.0f} MiB  ({t_small:.0f} s)")
        print(f"peak RSS ({kind}) {10 * args.mem_base:>8,} completions x {args.mem_ids} ids "
              f"{rss_big:8.0f} MiB  ({t_big:.0f} s)")
        print(f"  ratio ({kind}) {rss_big / rss_small:.2f} for 10x the input (goal <= 1.2)")
        small.unlink()
        if kind == "realistic":
            big_realistic = big
        else:
            big.unlink()
    if args.mem_gb and big_realistic is not None:
        huge = Path(tmp) / "huge.jsonl"
        n = replicate(big_realistic, huge, size=int(args.mem_gb * 1e9))
        rss, t = peak_rss(huge)
        print(f"peak RSS  {huge.stat().st_size / 1e9:.2f} GB JSONL ({n:,} realistic completions) "
              f"{rss:8.0f} MiB  ({t:.0f} s)   (goal < 600 MiB for 1 GB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--section", choices=("all", "throughput", "memory"), default="all")
    ap.add_argument("--n", type=int, default=3000, help="completions for the throughput run")
    ap.add_argument("--study-n", type=int, default=500, help="completions timed for the study loop")
    ap.add_argument("--data", default="realistic,noncanonical", choices=(
        "realistic,noncanonical", "realistic", "noncanonical"), help="throughput data sets")
    ap.add_argument("--rounds", type=int, default=3,
                    help="throughput rounds (tmcli and the encoders in turns; best of each)")
    ap.add_argument("--mem-base", type=int, default=20000, help="N for the memory run (and 10*N)")
    ap.add_argument("--mem-ids", type=int, default=256, help="generated ids per completion there")
    ap.add_argument("--mem-gb", type=float, default=0.0,
                    help="also measure a JSONL file of this many GB (e.g. 1)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.section in ("all", "throughput"):
            throughput(args, tmp)
        if args.section in ("all", "memory"):
            memory(args, tmp)


if __name__ == "__main__":
    main()
