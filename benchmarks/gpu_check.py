"""The GPU check: tmcli's CUDA path proven on a GPU, with a model of SmolLM2-135M's shape.

The model is SmolLM2-135M's configuration (Llama, 30 layers, 576 wide, 49,152 tokens) with random
weights from a fixed seed (nothing downloaded) and the real SmolLM2 tokenizer. Checks, each
printed PASS or FAIL (exit 1 if one fails):

  greedy       greedy records of the fused and transformers engines on DEVICE equal the same
               model's on the CPU (float32 both); a record may differ only where the CPU's two
               best logits tie (within 1e-3), and then it is reported as a tie
  sampled      sampled records (T = 1, 1.5) of fused and transformers on DEVICE are equal up to
               ties of their race scores (each row's noise comes from its own generator, on the
               device: equal across engines on one device, not across devices)
  top-k        when `generate` takes ``top_k``: top_k=1 equals greedy, and fused equals
               transformers at top_k=20 up to ties (skipped, and said, until it does)
  constrain    --canonical constrain: every record canonical (`check_ids`), fused equals
               transformers up to ties
  score        `tmcli score` on DEVICE gives the CPU's NLL per token (within 1e-4)

then tokens/s of tmcli's engines against transformers' own `generate` (sampling at T = 1, no
top-k/top-p, a fixed length) at batch 1, 16, 64 and 256, bfloat16, on the same GPU in the same
run (their ratio is the figure to compare across machines).

What it needs there: PyTorch with CUDA, this repository, the tokenizer and tmcli's other
dependencies (`make gpu-bundle` here writes them to .gpu/: SmolLM2's tokenizer.json and the wheels,
under 64 MiB; `make gpu-check` there unpacks the wheels and runs this). `--device cpu --small`
runs every check on a tiny model of the same kind on the CPU: a smoke test of this script, in
`make test`.

    python benchmarks/gpu_check.py [--device cuda] [--small] [--tokenizer tokenizer.json]
        [--json results.json] [--skip-speed]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
BUNDLE = ROOT / ".gpu"

# SmolLM2-135M(-Instruct)'s configuration; initializer_range as in its own config.json, so the
# random model's logits are about as spread as a trained model's first ones
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64,
               max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True, vocab_size=49152, bos_token_id=1, eos_token_id=2,
               pad_token_id=2, initializer_range=0.041666666666666664)
SMALL = dict(SMOLLM2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)
TIE = 1e-3  # two scores closer than this are a tie of float rounding across kernels


def tokenizer_json(given: str | None) -> str:
    """SmolLM2's tokenizer.json text: --tokenizer, the bundle's copy, or the alias's."""
    if given:
        return Path(given).read_text(encoding="utf-8")
    if (BUNDLE / "tokenizer.json").is_file():
        return (BUNDLE / "tokenizer.json").read_text(encoding="utf-8")
    from tmcli.sources.tokenizers import load_tokenizer

    return load_tokenizer("smollm2-135m").to_str()


def make_model(folder: Path, tokenizer: str, small: bool, seed: int = 0) -> str:
    """A checkpoint folder: the configuration, random weights from ``seed``, the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**(SMALL if small else SMOLLM2)))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
    return str(folder)


def prompts(n: int) -> list[str]:
    base = [line.strip() for line in (ROOT / "sample_data" / "prompts.txt").read_text(
        encoding="utf-8").splitlines() if line.strip()]
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base)})")
            for i in range(n)]


_ENGINES: dict = {}


def engine_for(model: str, name: str, device: str, dtype: str = "float32"):
    """Each engine loaded once per device and dtype, and reused by every run."""
    from tmcli.generation.engines import EngineOptions, load_engine

    key = (name, device, dtype)
    if key not in _ENGINES:
        _ENGINES[key] = load_engine(name, model, EngineOptions(device=device, dtype=dtype))
    return _ENGINES[key]


def run(model: str, out: Path, texts, *, device, engine, temperatures, tokens, dtype="float32",
        batch=None, **extra) -> dict:
    """`tmcli.generate` into a fresh file; records by id."""
    import tmcli

    out.unlink(missing_ok=True)
    summary = tmcli.generate(model, texts, out, temperatures=temperatures, max_new_tokens=tokens,
                             engine=engine_for(model, engine, device, dtype), batch_size=batch,
                             **extra)
    records = {}
    with open(out, "rb") as fh:
        for line in fh:
            rec = json.loads(line)
            records[rec["id"]] = rec
    records["__speed__"] = summary.tokens_per_second
    return records


class Scorer:
    """The scores each row's tokens raced with, recomputed on one device in float32: to tell a
    tie (two kernels' rounding) from a real difference at a row's first differing token."""

    def __init__(self, model: str, device: str):
        self.lm = engine_for(model, "transformers", device).lm

    def scores(self, rec: dict, step: int):
        import torch

        from tmcli.generation.prompts import Prompt
        from tmcli.generation.sampler import NoiseStream
        from tmcli.generation.sweep import row_seed

        ids = rec["prompt_token_ids"] + rec["token_ids"][:step]
        with torch.inference_mode():
            logits = self.lm.model(torch.tensor([ids], device=self.lm.device)).logits[0, -1].float()
        t = rec["temperature"]
        if t == 0:
            return logits
        seed = row_seed(Prompt(rec["prompt_index"], rec["prompt"]), t, rec["seed"])
        return logits / t - NoiseStream(seed, self.lm.device).draw(step, logits.shape[0])


def compare(name: str, a: dict, b: dict, scorer: Scorer | None, results: list) -> bool:
    """Records of two runs equal, or differing first at a tie of ``scorer``'s scores."""
    same = ties = 0
    bad = []
    for rid, ra in a.items():
        if rid == "__speed__":
            continue
        ga, gb = ra["token_ids"], b[rid]["token_ids"]
        if ga == gb:
            same += 1
            continue
        k = next((i for i, (x, y) in enumerate(zip(ga, gb)) if x != y), min(len(ga), len(gb)))
        tie = False
        if scorer is not None and k < min(len(ga), len(gb)):
            s = scorer.scores(ra, k)
            tie = abs(float(s[ga[k]]) - float(s[gb[k]])) <= TIE * max(1.0, abs(float(s[ga[k]])))
        if tie:
            ties += 1
        else:
            bad.append(f"{rid} at token {k}")
    ok = not bad
    detail = f"{same} equal, {ties} first differ at a tie" + (f"; differ: {bad[:3]}" if bad else "")
    results.append({"check": name, "passed": ok, "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    return ok


def record(results: list, name: str, ok: bool, detail: str) -> None:
    results.append({"check": name, "passed": ok, "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def _subset(records: dict, greedy: bool) -> dict:
    return {k: r for k, r in records.items()
            if k != "__speed__" and (r["temperature"] == 0) == greedy}


def checks(model: str, tmp: Path, device: str, small: bool, results: list) -> None:
    import tmcli

    n, tokens = (3, 6) if small else (16, 48)
    texts = prompts(n)
    cpu = run(model, tmp / "cpu.jsonl", texts, device="cpu", engine="fused", temperatures=[0.0],
              tokens=tokens)
    ref, dev = Scorer(model, "cpu"), Scorer(model, device)
    runs = {e: run(model, tmp / f"{e}.jsonl", texts, device=device, engine=e,
                   temperatures=[0.0, 1.0, 1.5], tokens=tokens) for e in ("fused", "transformers")}
    for engine, got in runs.items():
        compare(f"greedy {engine} on {device} = fused on cpu", cpu, _subset(got, True), ref,
                results)
    compare(f"sampled fused = transformers on {device}", _subset(runs["fused"], False),
            runs["transformers"], dev, results)
    if "top_k" in inspect.signature(tmcli.generate).parameters:
        topk = {e: run(model, tmp / f"k-{e}.jsonl", texts, device=device, engine=e,
                       temperatures=[1.0], tokens=tokens, top_k=20)
                for e in ("fused", "transformers")}
        compare(f"top_k=20 fused = transformers on {device}", topk["fused"],
                topk["transformers"], None, results)
        top1 = run(model, tmp / "k1.jsonl", texts, device=device, engine="fused",
                   temperatures=[1.0], tokens=tokens, top_k=1)
        greedy = sorted(r["token_ids"] for r in _subset(runs["fused"], True).values())
        same = greedy == sorted(r["token_ids"] for r in _subset(top1, False).values())
        record(results, f"top_k=1 = greedy on {device}", same, f"{n} rows")
    else:
        print("SKIP  top-k: this tmcli's generate takes no top_k yet", flush=True)
        results.append({"check": "top-k", "passed": None, "detail": "generate takes no top_k"})
    constrained = {e: run(model, tmp / f"c-{e}.jsonl", texts, device=device, engine=e,
                          temperatures=[1.5], tokens=tokens, canonical="constrain")
                   for e in ("fused", "transformers")}
    for engine, recs in constrained.items():
        rows = [r for k, r in recs.items() if k != "__speed__"]
        verdicts = tmcli.check_ids_batch(model, [r["token_ids"] for r in rows],
                                         [r["prompt_token_ids"] for r in rows])
        bad = sum(not v.canonical for v in verdicts)
        record(results, f"constrain {engine} on {device}: every record canonical", bad == 0,
               f"{len(rows) - bad} of {len(rows)} canonical")
    compare(f"constrain fused = transformers on {device}", constrained["fused"],
            constrained["transformers"], None, results)
    scores = {}
    for where in ("cpu", device):
        out = tmp / f"scored-{where}.jsonl"
        out.unlink(missing_ok=True)
        tmcli_score(tmp / "fused.jsonl", out, engine_for(model, "transformers", where).lm)
        scores[where] = {r["id"]: r["nll_token"] for r in map(json.loads, open(out, "rb"))}
    worst = max(abs(scores["cpu"][k] - scores[device][k]) for k in scores["cpu"])
    record(results, f"score on {device} = score on cpu", worst <= 1e-4,
           f"largest difference {worst:.2e} nats/token over {len(scores['cpu'])} records")


def tmcli_score(src: Path, out: Path, lm) -> None:
    from tmcli.scoring.run import score

    score(str(src), out, engine=lm)


def hf_generate(model: str, texts: list[str], tokens: int, device: str, dtype: str) -> float:
    """tokens/s of transformers' own `generate` on the same rows: sampling at T = 1 with no
    top-k or top-p, every row ``tokens`` long, left padding."""
    import torch
    from transformers import AutoModelForCausalLM

    from tmcli.sources.tokenizers import encode_prompt, prompt_tokenizer

    tok = prompt_tokenizer(model)
    ids = [encode_prompt(tok, t) for t in texts]
    width = max(map(len, ids))
    pad = 2
    batch = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
    kwargs = dict(attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=pad)
    lm.generate(batch[:1], **{**kwargs, "attention_mask": mask[:1], "max_new_tokens": 2,
                              "min_new_tokens": 2})  # warm-up
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        lm.generate(batch, **kwargs)
    _sync(device)
    return len(texts) * tokens / (time.perf_counter() - t)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def speed(model: str, tmp: Path, device: str, small: bool, results: list) -> None:
    batches, tokens = ((2,), 4) if small else ((1, 16, 64, 256), 128)
    dtype = "float32" if device == "cpu" else "bfloat16"
    for engine in ("fused", "transformers"):  # load, and warm the device's kernels, untimed
        run(model, tmp / "speed.jsonl", prompts(2), device=device, engine=engine,
            temperatures=[1.0], tokens=2, dtype=dtype)
    print(f"\ntokens/s, {tokens} new tokens per row, {dtype}, T = 1 ({device})")
    print(f"{'batch':>6} {'fused':>10} {'transformers':>13} {'HF generate':>12} {'fused/HF':>9}")
    for b in batches:
        texts = prompts(b)
        row = {"batch": b}
        for engine in ("fused", "transformers"):
            row[engine] = run(model, tmp / "speed.jsonl", texts, device=device, engine=engine,
                              temperatures=[1.0], tokens=tokens, dtype=dtype,
                              batch=b)["__speed__"]
        row["hf_generate"] = hf_generate(model, texts, tokens, device, dtype)
        print(f"{b:>6} {row['fused']:>10,.0f} {row['transformers']:>13,.0f} "
              f"{row['hf_generate']:>12,.0f} {row['fused'] / row['hf_generate']:>9.2f}", flush=True)
        results.append({"speed": row, "dtype": dtype, "new_tokens": tokens})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a tiny model and sizes (smoke test)")
    ap.add_argument("--tokenizer", help="SmolLM2's tokenizer.json (default: .gpu/ or the alias)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}); run this on a GPU machine, or "
              "--device cpu --small for the smoke test", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {card}; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    results: list = []
    with tempfile.TemporaryDirectory(prefix="tmcli-gpu-") as tmp:
        model = make_model(Path(tmp) / "model", tokenizer_json(args.tokenizer), args.small)
        checks(model, Path(tmp), args.device, args.small, results)
        if not args.skip_speed:
            speed(model, Path(tmp), args.device, args.small, results)
        for engine in _ENGINES.values():
            engine.close()
    failed = [r for r in results if r.get("passed") is False]
    print(f"\n{len(failed)} check(s) failed; {time.perf_counter() - started:.0f} s on {card}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": card, "torch": torch.__version__,
                                               "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
