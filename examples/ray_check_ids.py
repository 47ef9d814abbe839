"""Drop non-canonical rollouts in a Ray Data pipeline with `tmcli.ray.CheckIds` (runnable offline).

    pip install 'tmcli[ray]'
    python examples/ray_check_ids.py            # a local Ray on this machine's cores
    RAY_ADDRESS=HEAD:6379 python examples/ray_check_ids.py   # or a running cluster

The rollouts here are made from text so that which are canonical is known: each sentence of
`SENTENCES` is encoded by the tokenizer itself (canonical), and once more with its first word
spelled byte by byte (" t","h","e"... a sampler can emit that; the tokenizer never would). In a
real pipeline they come from the sampler: ``ray.data.read_parquet("rollouts/")`` with
``token_ids`` and ``prompt_token_ids`` columns.
"""

from __future__ import annotations

import ray

import tmcli

TOKENIZER = "smollm2-135m"
PROMPT = "Write one sentence about the sea."
SENTENCES = [
    " The tide came in slowly over the grey stones.",
    " Gulls followed the fishing boats back to the harbour.",
    " A storm was building far out beyond the lighthouse.",
    " Salt dried white on the railings of the pier.",
]


def make_rollouts() -> list[dict]:
    """Canonical and deliberately non-canonical rollouts (ids, prompt ids, expected verdict)."""
    tok = tmcli.load_tokenizer(TOKENIZER)

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    prompt = ids(PROMPT)
    rows = []
    for n, text in enumerate(SENTENCES):
        word, rest = text.split(" ", 2)[1], " " + text.split(" ", 2)[2]
        spelled = [t for ch in " " + word for t in ids(ch)] + ids(rest)
        rows.append({"id": f"r{n}", "prompt_token_ids": prompt, "token_ids": ids(text),
                     "expected": True})
        rows.append({"id": f"r{n}-spelled", "prompt_token_ids": prompt, "token_ids": spelled,
                     "expected": False})
    return rows


def main(workers: int = 2) -> list[dict]:
    """Check every rollout on a pool of ``workers`` actors; print and return the kept ones."""
    ds = ray.data.from_items(make_rollouts())
    checked = ds.map_batches(tmcli.ray.CheckIds, fn_constructor_kwargs={"tokenizer": TOKENIZER},
                             compute=ray.data.ActorPoolStrategy(size=workers), batch_size=4)
    rows = sorted(checked.take_all(), key=lambda r: r["id"])
    for r in rows:
        where = "" if r["canonical"] else \
            f" from token {r['first_divergence']} ({', '.join(r['causes'])})"
        print(f"{r['id']:12} {'canonical' if r['canonical'] else 'non-canonical'}{where}")
    kept = [r for r in rows if r["canonical"]]
    print(f"kept {len(kept)} of {len(rows)} rollouts")
    return rows


if __name__ == "__main__":
    ray.init()
    main()
