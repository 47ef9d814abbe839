"""tmcli's sampler inside vLLM: a V1 custom logits processor that draws each token itself.

vLLM is asked for greedy decoding (temperature 0) and this processor, which runs before vLLM's
own sampler, leaves exactly one finite logit per row: the token tmcli's per-row seeded race
chose (`tmcli.generation.sampler`) among the tokens the row's truncation keeps
(`tmcli.generation.truncation`: top-k, top-p, min-p as transformers applies them), after the
canonical constraint (`constrain.constrain_tokens`, with the same `Oracle`) for ``constrain``
rows. vLLM's own top-k/top-p/min-p are never used: they are not transformers' (ties, order). So vLLM's sampler, its seeds (per-request seeds crash its
CPU backend) and the model's generation config play no part, and a row draws the same noise as on
the fused engine whatever batch vLLM put it in.

Per-request settings arrive in ``SamplingParams.extra_args["tmcli"]``; requests without them are
left alone. The processor runs in vLLM's worker processes, so what it learns about a row
(``canonical_stats``) goes back through a small JSONL file per worker in a directory the engine
names (``stats``), written when the row's last token is chosen.
"""

from __future__ import annotations

import os

import orjson
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

KEY = "tmcli"


class _Request:
    """One row: its settings, its noise stream and, for constrain, its canonical state."""

    def __init__(self, args: dict, prompt: list[int] | None, out: list[int], device):
        from tmcli.generation.constrain import RowState
        from tmcli.generation.sampler import NoiseStream
        from tmcli.generation.truncation import Truncation

        self.key = args["key"]
        self.temperature = float(args["temperature"])
        self.stream = None if args["seed"] is None else NoiseStream(int(args["seed"]), device)
        self.eos = list(args["eos"])
        self.stop_eos = bool(args["stop_at_eos"])
        self.max_tokens = int(args["max_tokens"])
        self.mode = args["mode"]
        self.tokenizer = args["tokenizer"]
        self.stats_dir = args.get("stats")
        self.truncation = Truncation(**args.get("truncation", {}))
        self.row = RowState(list(prompt or []))
        self.out = out
        self.last_step = -1
        self.snapshot = None

    def finished(self) -> bool:
        return len(self.out) >= self.max_tokens or bool(
            self.stop_eos and self.out and self.out[-1] in self.eos)


class RaceLogitsProcessor(LogitsProcessor):
    """See the module docstring."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.reqs: dict[int, _Request] = {}
        self.parked: dict[str, _Request] = {}  # preempted: back later with their tokens so far
        self.oracles: dict[str, object] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it picks the token, greedy requests included

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            req = self.reqs.pop(index, None)
            if req is not None and not req.finished():
                self.parked[req.key] = req
        for index, params, prompt, out in batch_update.added:
            args = (params.extra_args or {}).get(KEY)
            if args is None:
                self.reqs.pop(index, None)
                continue
            req = self.parked.pop(args["key"], None) or _Request(args, prompt, out, self.device)
            req.out = out
            self.reqs[index] = req
        for a, b, direction in batch_update.moved:
            ra, rb = self.reqs.pop(a, None), self.reqs.pop(b, None)
            if ra is not None:
                self.reqs[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.reqs[a] = rb

    def _oracle(self, tokenizer: str):
        if tokenizer not in self.oracles:
            from tmcli.generation.constrain import Oracle
            from tmcli.measure.token_bytes import vocab_for

            self.oracles[tokenizer] = Oracle(vocab_for(tokenizer))
        return self.oracles[tokenizer]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        from tmcli.generation.sampler import race_scores

        batch = [(i, r) for i, r in sorted(self.reqs.items()) if i < logits.shape[0]]
        if not batch:
            return logits
        index = torch.tensor([i for i, _ in batch], device=logits.device)
        reqs = [r for _, r in batch]
        lg = logits.index_select(0, index)
        forced: dict[tuple[int, ...], list[int]] = {}  # forced length: EOS is never drawn
        for j, r in enumerate(reqs):
            if r.eos and not r.stop_eos:
                forced.setdefault(tuple(r.eos), []).append(j)
        for eos, js in forced.items():  # one masking per EOS set, not one per row
            lg[torch.tensor(js, device=lg.device)[:, None],
               torch.tensor(eos, device=lg.device)] = float("-inf")
        for r in reqs:
            if r.mode != "constrain":
                continue  # only the constraint counts anything in a row's stats
            step = len(r.out)
            if step == r.last_step and r.snapshot is not None:
                # the same step again (a discarded sample): undo what it counted
                r.row.stats = type(r.snapshot)(**r.snapshot.to_dict())
            r.last_step = step
            r.snapshot = type(r.row.stats)(**r.row.stats.to_dict())
        temps = torch.tensor([r.temperature for r in reqs], dtype=torch.float32,
                             device=logits.device)
        noise = None
        if any(r.stream is not None for r in reqs):
            vocab = lg.shape[1]
            noise = torch.stack([
                r.stream.draw(len(r.out), vocab).to(logits.device, non_blocking=True)
                if r.stream is not None else torch.zeros(vocab, device=logits.device)
                for r in reqs])
        cut = [r.truncation for r in reqs]
        truncating = any(c.active for c, r in zip(cut, reqs) if r.temperature > 0)
        scores = race_scores(lg, temps, noise, cut if truncating else None)
        tokens = scores.argmax(-1)
        constrained = [j for j, r in enumerate(reqs) if r.mode == "constrain"]
        if constrained:
            whole = race_scores(lg, temps, noise) if truncating else None
            tokens = self._constrain(reqs, constrained, scores, tokens, whole)
        logits.index_fill_(0, index, float("-inf"))
        logits[index, tokens] = 0.0
        for j in constrained:
            r = reqs[j]
            tok = int(tokens[j])
            if len(r.out) + 1 >= r.max_tokens or (r.stop_eos and tok in r.eos):
                self._report(r)
        return logits

    def _constrain(self, reqs, rows, scores, tokens, whole=None):
        from tmcli.generation.constrain import constrain_tokens

        groups: dict[tuple[str, int], list[int]] = {}
        for j in rows:
            groups.setdefault((reqs[j].tokenizer, reqs[j].max_tokens), []).append(j)
        tokens = tokens.clone()
        for (tokenizer, n), js in groups.items():
            for j in js:
                reqs[j].row.seq = reqs[j].out
            sel = torch.tensor(js, device=scores.device)
            got = constrain_tokens(self._oracle(tokenizer), [reqs[j].row for j in js],
                                   scores.index_select(0, sel), tokens.index_select(0, sel), n,
                                   untruncated=None if whole is None else whole.index_select(0, sel))
            tokens[sel] = got
        return tokens

    @staticmethod
    def _report(r: _Request) -> None:
        """The row's canonical stats, for the engine to put on its record."""
        if not r.stats_dir:
            return
        r.row.stats.steps = len(r.out)
        line = orjson.dumps({"key": r.key, **r.row.stats.to_dict()}) + b"\n"
        with open(os.path.join(r.stats_dir, f"{os.getpid()}.jsonl"), "ab") as fh:
            fh.write(line)
