"""`score` (its default measurement): the negative log-likelihood of each completion under a
model, on its canonical ids (`scoring.run` reads and writes the records).

A quality proxy for comparing canonical modes: a completion's text is re-encoded canonically in
context (the same re-encoding `analyze` uses), and the model that generated it (or ``--model``)
scores those canonical ids after the prompt. Scoring the canonical ids, not the generated ones,
makes completions from every mode comparable: the same text always gets the same score.

Written per record: ``nll_token`` (mean nats per canonical completion token), ``nll_char`` (total
nats per character of the completion), ``nll_tokens`` (tokens scored) and ``nll_model``. A token
that straddles the prompt/completion boundary counts as the completion's (it spells some of it).
"""

from __future__ import annotations

import numpy as np


def nll_of(lm, reencoder, prompt_ids: list[int], token_ids: list[int],
           max_batch_bytes: int = 1 << 30) -> tuple[float, int]:
    """(total NLL in nats, tokens scored) of one completion; see `score_many`."""
    return score_many(lm, reencoder, [(prompt_ids, token_ids)], max_batch_bytes)[0]


def canonical_jobs(reencoder, items: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], int]]:
    """Per (prompt ids, completion ids): the canonical ids of the whole text and how many of them
    lie inside the prompt (at least 1: the first token has nothing to be predicted from)."""
    vocab = reencoder.vocab
    fulls = [list(p) + list(g) for p, g in items]
    canon = reencoder.canonical(fulls)[0]
    jobs = []
    for (p, _g), c in zip(items, canon):
        prompt_bytes = int(vocab.lengths[np.asarray(p, dtype=np.int64)].sum()) if p else 0
        ends = np.cumsum(vocab.lengths[np.asarray(c, dtype=np.int64)]) if c else np.zeros(0)
        k = int(np.searchsorted(ends, prompt_bytes, side="right"))  # tokens inside the prompt
        jobs.append((c, max(k, 1)))
    return jobs


def score_many(lm, reencoder, items: list[tuple[list[int], list[int]]],
               max_batch_bytes: int = 1 << 30) -> list[tuple[float, int]]:
    """(total NLL, tokens scored) per (prompt ids, completion ids), on canonical completion ids.
    ``lm`` is a `models.LoadedModel`, or an engine with ``prompt_nll`` (vLLM)."""
    import torch

    jobs = canonical_jobs(reencoder, items)
    if hasattr(lm, "prompt_nll"):
        return lm.prompt_nll(jobs)
    model = lm.model
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None) or getattr(
        getattr(model.config, "text_config", None), "final_logit_softcapping", None)
    V = head.weight.shape[0]
    results: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][0]))
    i = 0
    with torch.inference_mode():
        while i < len(order):
            L = len(jobs[order[i]][0])
            rows = max(1, int(max_batch_bytes // (4 * V * max(L, 1))))
            chunk = order[i : i + rows]
            i += len(chunk)
            width = max(len(jobs[j][0]) for j in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, j in enumerate(chunk):  # right padding: real tokens never attend to it
                c = jobs[j][0]
                ids[r, : len(c)] = torch.tensor(c)
                mask[r, : len(c)] = 1
            hidden = inner(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).last_hidden_state
            for r, j in enumerate(chunk):
                c, k = jobs[j]
                if len(c) <= k:
                    results[j] = (0.0, 0)
                    continue
                logits = head(hidden[r, k - 1 : len(c) - 1]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                target = torch.tensor(c[k:], device=logits.device)
                nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                results[j] = (float(nll), len(c) - k)
    return results
