"""Trajectories checked per second, against rendering + encoding alone, in the same run.

A trainer that rebuilds a conversation from its messages renders them with the chat template and
encodes the text; that is the floor of any drift check. Prints, per chat template (Qwen3's and
SmolLM2's), trajectories per second of:
  render+encode     transformers' apply_chat_template(tokenize=False), then the tokenizer's
                    encode of the text: the baseline (the same tokenizer objects tmcli uses)
  check_trajectory  tmcli.check_trajectory, one call per trajectory (verdict, message, cause and
                    spans for those that drift)
  analyze           `tmcli analyze` on a JSONL file of them (reading, the drift check, every
                    sampled turn measured as a sample, group statistics; worker processes)
and the ratios against the baseline (goal for check_trajectory: >= 0.8).

Data: conversations of --turns user/assistant turns of WikiText paragraphs (or the sample
prompts), sampled token-in/token-out as ChatML writes them (clean); with --drift, every other
trajectory has one word of its last turn split into two tokens (it drifts, cause tokenization).

    python benchmarks/bench_trajectories.py [--n 200] [--turns 3] [--drift]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


def paragraphs() -> list[str]:
    if WIKITEXT.exists():
        lines = WIKITEXT.read_text(encoding="utf-8").splitlines()
        return [ln.strip()[:700] for ln in lines if len(ln) > 300]
    return (ROOT / "sample_data" / "prompts.txt").read_text(encoding="utf-8").splitlines()


def conversations(spec: str, n: int, turns: int, drift: bool) -> list[dict]:
    """Trajectories as an agent loop samples them (ChatML), and whether each was made to drift."""
    from tmcli.measure.chat_render import renderer_for

    renderer, vocab = renderer_for(spec)
    encode = vocab.original.encode
    eot = vocab.original.token_to_id("<|im_end|>")
    think = "<think>\n\n</think>\n\n" if spec == "qwen3" else ""
    texts = paragraphs()
    out = []
    for i in range(n):
        pick = [texts[(i * 2 * turns + k) % len(texts)] for k in range(2 * turns)]
        messages = [{"role": "system", "content": "You are terse."}] if think else []
        messages.append({"role": "user", "content": pick[0]})
        prompt = renderer.encode([renderer.render(messages, None,
                                                  {"add_generation_prompt": True})])[0]
        ids, mask = [], []
        for t in range(turns):
            answer = pick[2 * t + 1]
            sampled = encode((think if t == turns - 1 else "") + answer,
                             add_special_tokens=False).ids
            if drift and i % 2 and t == turns - 1:  # one word's token split in two
                k = next(k for k in range(len(sampled) // 2, len(sampled))
                         if len(vocab.token_bytes[sampled[k]]) > 2
                         and vocab.token_bytes[sampled[k]][:1] in vocab.bytes_to_id())
                b = vocab.token_bytes[sampled[k]]
                table = vocab.bytes_to_id()
                if b[1:] in table:
                    sampled[k : k + 1] = [table[b[:1]], table[b[1:]]]
            ids += sampled + [eot]
            mask += [1] * (len(sampled) + 1)
            messages.append({"role": "assistant", "content": answer})
            if t + 1 < turns:
                env = encode(f"\n<|im_start|>user\n{pick[2 * t + 2]}<|im_end|>\n"
                             "<|im_start|>assistant\n", add_special_tokens=False).ids
                ids += env
                mask += [0] * len(env)
                messages.append({"role": "user", "content": pick[2 * t + 2]})
        out.append({"id": f"{spec}-{i}", "model": spec, "temperature": 1.0,
                    "messages": messages, "prompt_token_ids": prompt, "token_ids": ids,
                    "response_mask": mask})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="trajectories per template")
    ap.add_argument("--turns", type=int, default=3, help="sampled turns per trajectory")
    ap.add_argument("--drift", action="store_true", help="every other trajectory drifts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--template", action="append", help="qwen3 or smollm2-135m (repeatable)")
    args = ap.parse_args()
    import orjson

    import tmcli
    from tmcli.measure.chat_render import renderer_for

    for spec in args.template or ["qwen3", "smollm2-135m"]:
        items = conversations(spec, args.n, args.turns, args.drift)
        renderer, _vocab = renderer_for(spec)
        hf, encoder, template = renderer.hf, renderer.encoder, renderer.template

        def baseline(batch, hf=hf, encoder=encoder, template=template):
            for r in batch:
                text = hf.apply_chat_template(r["messages"], tokenize=False,
                                              chat_template=template)
                encoder.encode_batch_fast([text], add_special_tokens=False)

        def check(batch, spec=spec):
            for r in batch:
                tmcli.check_trajectory(spec, r["messages"], r["prompt_token_ids"],
                                       r["token_ids"], r["response_mask"])

        check(items[:2])  # tables built once, outside the timing
        spent = {"base": 0.0, "check": 0.0}
        for _ in range(args.repeat):  # interleaved by 10, so both see the same machine load
            for k in range(0, len(items), 10):
                for name, fn in (("base", baseline), ("check", check)):
                    t = time.perf_counter()
                    fn(items[k : k + 10])
                    spent[name] += time.perf_counter() - t
        base, chk = (args.repeat * len(items) / spent[k] for k in ("base", "check"))
        with tempfile.TemporaryDirectory() as tmp:
            path, warm = Path(tmp) / "t.jsonl", Path(tmp) / "warm.jsonl"
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in items))
            warm.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in items[:4]))
            tmcli.analyze_file(str(warm), n_resamples=200)  # imports (scipy...) outside the timing
            runs = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                a = tmcli.analyze_file(str(path), n_resamples=200)
                runs.append(len(items) / (time.perf_counter() - t))
            ana = statistics.median(runs)
        drifting = int(a.groups["n_drift"].sum())
        tokens = sum(len(r["prompt_token_ids"]) + len(r["token_ids"]) for r in items) / len(items)
        print(f"{spec}: {len(items)} trajectories of {args.turns} turns, {tokens:.0f} ids on "
              f"average, {drifting} drift")
        print(f"  render+encode     {base:8.1f} trajectories/s")
        print(f"  check_trajectory  {chk:8.1f} trajectories/s   ratio {chk / base:5.2f}")
        print(f"  analyze           {ana:8.1f} trajectories/s   ratio {ana / base:5.2f}")


if __name__ == "__main__":
    main()
