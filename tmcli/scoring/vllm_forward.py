"""The ``vllm`` scoring forward: next-token distributions at chosen rows from vLLM's logprobs.

What vLLM 0.32 returns, and why this asks for it this way:
- ``prompt_logprobs=-1`` gives the whole distribution at *every* row of a prompt, as Python
  floats (``logprobs.tolist()`` then one append per entry in its output processor), the first
  row ``None`` and the last row (the distribution after the whole prompt) missing. Rows cannot
  be chosen on the V1 model runner tmcli uses (``prompt_logprob_start`` needs
  ``prompt_logprob_token_ids``, scored by the GPU V2 runner only), so a 500-token context of a
  49k vocabulary would come back as 25 M Python floats to read a few dozen rows.
- ``logprobs=-1`` with ``max_tokens=1`` gives the whole distribution after a prompt, its last
  row, in raw log-probabilities (``logprobs_mode`` ``raw_logprobs``: log-softmax of the logits
  before any logits processor, Gemma's soft-capping included) with the sampled token first
  (``flat_logprobs=True``: flat lists, no object per entry). So each wanted row is one request
  whose prompt is the ids up to it; prefix caching (on in tmcli's engine) computes the shared
  prefix once, and a request costs its last uncached block. Needs the engine's
  ``max_logprobs=-1``, which tmcli's vLLM engine sets.
"""

from __future__ import annotations

from collections.abc import Iterator

from tmcli.scoring.forward import Pair

ENTRIES_BUDGET = 4_000_000  # vocabulary entries (Python floats) per vLLM call


class VLLMForward:
    name = "vllm"

    def __init__(self, engine):
        import json

        self.engine = engine
        config = json.loads((engine.path / "config.json").read_text())
        config = config.get("text_config") or config
        self.vocab = int(config["vocab_size"])
        self.softcap = None  # applied by vLLM's model before its logprobs

    def _rows(self, prompts: list[list[int]]):
        """Log-probabilities [vocab] after each prompt (float32 tensors)."""
        import numpy as np
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, flat_logprobs=True,
                                detokenize=False)
        try:
            outs = self.engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                            params, use_tqdm=False)
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise self.engine._error(exc) from None
        rows = []
        for out in outs:
            flat = out.outputs[0].logprobs
            dense = np.full(self.vocab, -np.inf, dtype=np.float32)
            dense[np.asarray(flat.token_ids, dtype=np.int64)] = np.asarray(flat.logprobs,
                                                                            dtype=np.float32)
            rows.append(torch.from_numpy(dense))
        return rows

    def pair_logprobs(self, pairs: list[Pair]) -> Iterator[tuple]:
        import torch

        per_call = max(1, ENTRIES_BUDGET // self.vocab)
        prompts: list[list[int]] = []
        owners: list[tuple[int, int]] = []  # (pair, side) of each prompt
        for i, p in enumerate(pairs):
            for side, (ids, rows) in enumerate(((p.ref, p.ref_rows), (p.alt, p.alt_rows))):
                prompts += [ids[: r + 1] for r in rows]
                owners += [(i, side)] * len(rows)
        got: dict[tuple[int, int], list] = {}
        nxt = 0
        for s in range(0, len(prompts), per_call):
            for owner, row in zip(owners[s : s + per_call], self._rows(prompts[s : s + per_call])):
                got.setdefault(owner, []).append(row)
            done = owners[s + per_call - 1][0] if s + per_call < len(owners) else len(pairs)
            while nxt < done:  # every prompt of pair nxt has come back
                out = []
                for side in (0, 1):
                    part = got.pop((nxt, side), [])
                    out.append(torch.stack(part) if part else torch.zeros((0, self.vocab)))
                yield (nxt, *out)
                nxt += 1
