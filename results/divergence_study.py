"""RESULTS.md's "Does it matter?" section, part 1: how far past a non-canonical span the model's
next-token distribution differs from the one after the canonical ids of the same text.

Runs the real CLI end to end (resumable: rerun to continue), on both offline models:
  1. tmcli generate: 24 WikiText prompts (the study's filter and shuffle), T = 1, 1.2, 1.6, 2,
     192 new tokens, pure sampling, into study_out/divergence/outputs.jsonl (not committed);
  2. tmcli score --divergence (K = 32 positions after each span) -> study_out/divergence/scored.jsonl;
  3. tmcli analyze --json on it; the group figures go to results/divergence/groups.csv and the
     by-position profile to results/divergence/profile.csv;
  4. checks of the tool and the protocol (results/divergence/checks.json):
     - the NLL identity: at T = 1 the continuation was sampled from the generated context, so
       E[NLL_canonical - NLL_generated] of the sampled token = E[KL(generated || canonical)];
       the measured gap minus the KL must be ~0 (a broken alignment or a misread row breaks it);
     - the engines agree: the first SmolLM2 samples scored again on the transformers forward;
     - the noise floor: KL between the fused and the transformers forward of the *same* ids at
       the same rows (a placebo: one context, two arithmetics), against the KL measured;
  5. the unbiased counterpart of the NLL comparison (results/divergence/real_text.csv): the
     model's own continuation favours the context it was sampled from, so "which context
     predicts better" is asked of *real* text instead. WikiText paragraphs (canonical ids);
     one word token 33 tokens before the end is spelled as two vocabulary tokens (a span like
     the model's merged ones), and both contexts predict the 32 real tokens that follow
     (`score --divergence`: NLL under the non-canonical context = nll_ref, canonical = nll_alt);
  6. window tables (results/divergence/windows.csv, real_text_windows.csv): KL, NLL gap and
     entropy gap (non-canonical minus canonical context) right after a span, over the next 3
     tokens and over the 4th to 31st, per sample first, then over samples with intervals.

    python results/divergence_study.py            # everything (about an hour on 2 busy cores)
    python results/divergence_study.py --skip-generate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RAW = ROOT / "study_out" / "divergence"
OUT = ROOT / "results" / "divergence"
PROMPTS = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
MODELS = ("smollm2-135m", "gemma3-270m")
GENERATE = ["--prompts", str(PROMPTS), "--min-chars", "640", "--shuffle", "--seed", "0",
            "--n-prompts", "24", "--max-new-tokens", "192", "--temperatures", "1,1.2,1.6,2"]


def tmcli(*args: str) -> str:
    cmd = [sys.executable, "-m", "tmcli", *args]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout


def nll_identity(scored: Path) -> list[dict]:
    """Per model and temperature: mean over samples of (mean NLL gap - mean KL) at the positions
    after spans, with a bootstrap interval; ~0 at T = 1 if the tool reads the rows it should."""
    import numpy as np

    from tmcli.aggregate.stats import mean_ci

    per: dict = {}
    for line in scored.read_text().splitlines():
        r = json.loads(line)
        d = r.get("divergence") or {}
        if not d.get("positions"):
            continue
        gap = np.array(d["nll_alt"], dtype=float) - np.array(d["nll_ref"], dtype=float)
        per.setdefault((r["model"], r["temperature"]), []).append(
            (float(gap.mean()), float(np.mean(d["kl"]))))
    out = []
    for (model, t), v in sorted(per.items()):
        gap, kl = np.array(v).T
        m, lo, hi = mean_ci(gap - kl, 2000, 0)
        out.append({"model": model, "temperature": t, "n": len(v), "nll_gap": float(gap.mean()),
                    "kl": float(kl.mean()), "gap_minus_kl": m, "lo": lo, "hi": hi})
    return out


def engines_agree(scored: Path, n: int = 6) -> dict:
    """The first ``n`` non-canonical SmolLM2 samples scored again on the transformers forward."""
    import tempfile

    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    picked = [r for r in rows if r["model"] == "smollm2-135m"
              and (r.get("divergence") or {}).get("positions")][:n]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "divergence"})
                               + "\n" for r in picked))
        tmcli("score", str(src), "--divergence", "--engine", "transformers", "--device", "cpu",
              "-o", str(out), "-q")
        again = [json.loads(line)["divergence"] for line in out.read_text().splitlines()]
    diffs = [abs(a - b) for r, d in zip(picked, again)
             for a, b in zip(r["divergence"]["kl"], d["kl"])]
    flips = sum(a != b for r, d in zip(picked, again)
                for a, b in zip(r["divergence"]["top1"], d["top1"]))
    return {"samples": len(picked), "positions": len(diffs), "max_abs_kl_difference": max(diffs),
            "top1_disagreements": flips, "engines": [picked[0]["divergence"]["engine"],
                                                     "transformers"]}


def split_word(vocab, token: int) -> list[int] | None:
    """``token`` spelled as two vocabulary tokens, split nearest its middle (None: no split)."""
    table = vocab.bytes_to_id()
    data = vocab.spell([token])
    if len(data) < 3 or not data.strip():
        return None
    for k in sorted(range(1, len(data)), key=lambda k: abs(k - len(data) / 2)):
        a, b = table.get(data[:k]), table.get(data[k:])
        if a is not None and b is not None:
            return [a, b]
    return None


def real_text(n_docs: int, threads: str) -> None:
    """Part 5: real WikiText continuations after a non-canonical span, per model."""
    import random

    import numpy as np

    from tmcli.aggregate.stats import mean_ci
    from tmcli.measure.rollout_check import check_ids, reencoder_for
    from tmcli.sources.tokenizers import encode_prompt, prompt_tokenizer

    lines = [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    paragraphs = [line for line in lines if len(line) > 900 and not line.startswith("=")]
    picked = random.Random(1).sample(paragraphs, min(len(paragraphs), 3 * n_docs))
    records = []
    for model in MODELS:
        tok, vocab = prompt_tokenizer(model), reencoder_for(model).vocab
        done = 0
        for i, text in enumerate(picked):
            ids = encode_prompt(tok, text)
            bos = 1 if tok.token_to_id("<bos>") == ids[0] else 0
            if len(ids) < 160 + bos:
                continue
            prompt, body = ids[:bos], ids[bos : bos + 160]
            at = len(body) - 33
            pieces = split_word(vocab, body[at])
            if pieces is None:
                continue
            generated = body[:at] + pieces + body[at + 1 :]
            check = check_ids(model, generated, prompt)
            if [(s.position, s.canonical) for s in check.spans] != [(at, [body[at]])]:
                continue  # the split must be the only difference, undone by the re-encoding
            records.append({"id": f"{model}:wikitext-{i}", "model": model, "temperature": None,
                            "prompt_token_ids": prompt, "token_ids": generated})
            done += 1
            if done == n_docs:
                break
    src, out = RAW / "real_text.jsonl", RAW / "real_text_scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmcli("score", str(src), "--divergence", "--device", "cpu", "--threads", threads,
          "-o", str(out), "-q")
    rows = []
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    for model in MODELS:
        ds = [r["divergence"] for r in scored if r["model"] == model]
        for since in range(32):
            at = [(d["nll_ref"][since], d["nll_alt"][since], d["kl"][since], d["top1"][since])
                  for d in ds if len(d["since"]) > since]
            nc, c, kl, top1 = (np.array(x, dtype=float) for x in zip(*at))
            gap, lo, hi = mean_ci(nc - c, 2000, 0)
            rows.append({"model": model, "since": since, "n": len(at),
                         "nll_noncanonical": float(nc.mean()), "nll_canonical": float(c.mean()),
                         "nll_gap": gap, "nll_gap_lo": lo, "nll_gap_hi": hi,
                         "kl": float(kl.mean()), "top1": float(top1.mean())})
    import polars as pl

    pl.DataFrame(rows).write_csv(OUT / "real_text.csv")


def noise_floor(scored: Path, n: int = 6) -> dict:
    """KL between two forwards (fused, transformers) of the same generated ids at the rows the
    divergence compared: what float rounding alone gives."""
    import numpy as np

    from tmcli.measure.rollout_check import check_ids_batch, reencoder_for
    from tmcli.scoring.compare import compare
    from tmcli.scoring.divergence import plan
    from tmcli.scoring.forward import Pair, load_forward
    from tmcli.sources.models import load_model

    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    picked = [r for r in rows if r["model"] == "smollm2-135m"
              and (r.get("divergence") or {}).get("positions")][:n]
    lm = load_model("smollm2-135m", "cpu")
    checks = check_ids_batch(reencoder_for(lm.tokenizer), [r["token_ids"] for r in picked],
                             [r["prompt_token_ids"] for r in picked])
    same = []
    for r, c in zip(picked, checks):
        pair = plan(r["prompt_token_ids"], r["token_ids"], c).pair
        same.append(Pair(pair.ref, pair.ref, pair.ref_rows, pair.ref_rows, pair.prefix))
    fused = {i: a for i, a, _b in load_forward("fused", lm).pair_logprobs(same)}
    hf = {i: a for i, a, _b in load_forward("transformers", lm).pair_logprobs(same)}
    kl = np.concatenate([compare(fused[i], hf[i])["kl"] for i in range(len(same))])
    measured = np.concatenate([r["divergence"]["kl"] for r in picked])
    return {"samples": len(picked), "rows": int(kl.size), "placebo_kl_mean": float(kl.mean()),
            "placebo_kl_max": float(kl.max()), "measured_kl_mean": float(measured.mean()),
            "measured_kl_min": float(measured.min())}


WINDOWS = ((0, 1), (1, 4), (4, 32))  # tokens since the span: right after, the next 3, the rest


def windows(scored: Path, key: str) -> list[dict]:
    """Per model (and temperature) and window of tokens since the span: the mean over samples
    of each sample's mean KL, NLL gap (non-canonical minus canonical context, of the token that
    came next) and entropy gap, with bootstrap intervals."""
    import numpy as np

    from tmcli.aggregate.stats import mean_ci

    groups: dict = {}
    for line in scored.read_text().splitlines():
        r = json.loads(line)
        d = r.get("divergence") or {}
        if d.get("positions"):
            groups.setdefault((r["model"], r.get(key)), []).append(d)
    out = []
    for (model, value), ds in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        for a, b in WINDOWS:
            per = {"kl": [], "nll_gap": [], "entropy_gap": []}
            for d in ds:
                at = [k for k, t in enumerate(d["since"]) if a <= t < b]
                if not at:
                    continue
                v = {name: np.array([d[name][k] for k in at], dtype=float)
                     for name in ("kl", "nll_ref", "nll_alt", "entropy_ref", "entropy_alt")}
                per["kl"].append(v["kl"].mean())
                per["nll_gap"].append((v["nll_ref"] - v["nll_alt"]).mean())
                per["entropy_gap"].append((v["entropy_ref"] - v["entropy_alt"]).mean())
            row = {"model": model, key: value, "since": f"{a}-{b - 1}", "n": len(per["kl"])}
            for name, values in per.items():
                row[name], row[name + "_lo"], row[name + "_hi"] = mean_ci(values, 2000, 0)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--threads", default="1", help="torch threads (1 is fastest on busy cores)")
    ap.add_argument("--real-text-docs", type=int, default=48)
    ap.add_argument("--summaries-only", action="store_true",
                    help="only recompute the window tables from what is scored already")
    args = ap.parse_args()
    RAW.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    outputs, scored = RAW / "outputs.jsonl", RAW / "scored.jsonl"
    import polars as pl

    def write_windows():
        pl.DataFrame(windows(scored, "temperature")).write_csv(OUT / "windows.csv")
        pl.DataFrame(windows(RAW / "real_text_scored.jsonl", "temperature")).drop(
            "temperature").write_csv(OUT / "real_text_windows.csv")

    if args.summaries_only:
        write_windows()
        return
    if not args.skip_generate:
        for model in MODELS:
            tmcli("generate", "--model", model, *GENERATE, "--threads", args.threads,
                  "-o", str(outputs))
    tmcli("score", str(outputs), "--divergence", "--device", "cpu", "--threads", args.threads,
          "-o", str(scored))

    from tmcli.aggregate.analysis import analyze_file
    from tmcli.aggregate.divergence import divergence_profile

    analysis = analyze_file(str(scored))
    keep = [c for c in analysis.groups.columns
            if c in ("model", "temperature", "n", "n_noncanonical", "token_rate")
            or c.startswith("div_")]
    analysis.groups.select(keep).write_csv(OUT / "groups.csv")
    divergence_profile(analysis.samples).write_csv(OUT / "profile.csv")
    real_text(args.real_text_docs, args.threads)
    write_windows()
    checks = {"nll_identity": nll_identity(scored), "engines_agree": engines_agree(scored),
              "noise_floor": noise_floor(scored)}
    (OUT / "checks.json").write_text(json.dumps(checks, indent=1) + "\n")
    print(pl.read_csv(OUT / "groups.csv").select(
        "model", "temperature", "n", "div_n_after", "div_kl", "div_top1", "div_end_kl"))
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
