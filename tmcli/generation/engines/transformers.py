"""The ``transformers`` engine: the model's own forward (`decoders.HFDecoder`) in tmcli's decode
loop, for every causal LM transformers loads. The ``fused`` engine is this one with tmcli's fused
decoder (`engines.fused`); both share the loops below (plain, and canonical with `constrain.py`'s oracle and policies).

How it is fast: all rows of a batch (prompts x temperatures, one temperature per row) decode
together; a prompt is prefilled once and its KV cache given to each of its temperature rows; each
step computes last-position logits only and samples with plain tensor ops (`tmcli.generation.sampler`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tmcli.generation.engines import Engine, EngineOptions
from tmcli.generation.truncation import Truncation


def prefill_rows(decoder, prompt_ids: Sequence[Sequence[int]], rows: Sequence[int],
                 max_new_tokens: int, pad_id: int = 0):
    """Prefill each prompt once (left-padded), then give each row its prompt's cache; the
    next-token logits of every row."""
    import torch

    device = decoder.device if hasattr(decoder, "device") else "cpu"
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.bool)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = True
    logits = decoder.prefill(ids.to(device), mask.to(device), max_new_tokens)
    rows = list(rows)
    if len(rows) != len(prompt_ids) or rows != list(range(len(rows))):
        index = torch.tensor(rows, dtype=torch.long, device=device)
        decoder.select(index)
        logits = logits.index_select(0, index)
    return logits


def decode_batch(decoder, prompt_ids: Sequence[Sequence[int]], rows: Sequence[int],
                 temperatures: Sequence[float], seeds: Sequence[int], *, max_new_tokens: int,
                 eos_ids: Sequence[int] = (), stop_at_eos: bool = False, pad_id: int = 0,
                 truncation: Sequence[Truncation] | None = None,
                 on_step: Callable[[int], None] | None = None) -> list[tuple[list[int], str]]:
    """Decode ``rows`` (each an index into ``prompt_ids``) together; (token ids, finish reason).

    Forced length (the study's min = max new tokens) masks the EOS ids, as transformers' min-length
    processor does, before truncation (one `Truncation` per row, or None) as transformers' warpers
    come after its processors; with ``stop_at_eos`` a row ends at its first EOS, which is not
    kept in its ids."""
    import torch

    from tmcli.generation.sampler import RowNoise, sample

    device = decoder.device if hasattr(decoder, "device") else "cpu"
    with torch.inference_mode():
        logits = prefill_rows(decoder, prompt_ids, rows, max_new_tokens, pad_id)
        n = len(rows)
        temps = torch.tensor(temperatures, dtype=torch.float32, device=device)
        noise_source = RowNoise([None if t == 0 else s for t, s in zip(temperatures, seeds)], device)
        out = torch.zeros((n, max_new_tokens), dtype=torch.long)
        lengths = [max_new_tokens] * n
        reasons = ["length"] * n
        eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
        alive = torch.arange(n, device=device)  # original row of each decoder row
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            if len(eos) and not stop_at_eos:
                logits.index_fill_(1, eos, float("-inf"))
            live = alive.tolist()
            tokens = sample(logits, temps[alive], noise_source.draw(live, logits.shape[1]),
                            None if truncation is None else [truncation[r] for r in live])
            out[alive.cpu(), step] = tokens.cpu()
            if stop_at_eos and len(eos):
                hit = torch.isin(tokens, eos) & ~finished
                for r in alive[hit].tolist():
                    lengths[r], reasons[r] = step, "eos"
                finished |= hit
            if on_step is not None:
                on_step(int((~finished).sum()))
            if stop_at_eos and len(eos):
                if bool(finished.all()):
                    break
                if int(finished.sum()) * 4 >= len(alive):  # drop finished rows from the batch
                    keep = (~finished).nonzero().squeeze(1)
                    decoder.select(keep)
                    alive, tokens, finished = alive[keep], tokens[keep], finished[keep]
            if step + 1 < max_new_tokens:
                logits = decoder.step(tokens)
    return [(out[r, : lengths[r]].tolist(), reasons[r]) for r in range(n)]


def decode_canonical(decoder, oracle, prompt_ids: Sequence[Sequence[int]],
                     rows: Sequence[int], temperatures: Sequence[float], seeds: Sequence[int], *,
                     mode: str, max_new_tokens: int, eos_ids: Sequence[int] = (),
                     stop_at_eos: bool = False, pad_id: int = 0, every: int = 1,
                     truncation: Sequence[Truncation] | None = None,
                     on_step: Callable[[int], None] | None = None
                     ) -> list[tuple[list[int], str, dict]]:
    """Decode ``rows`` together in ``mode`` (constrain or retokenize) with ``oracle``
    (`constrain.Oracle`); per row (ids, finish reason, stats). Same prompts, seeds and noise as
    `decode_batch`, so at T=0 (and until the first masked or rewritten token at T>0) the output is
    that of ``off``."""
    import torch

    if mode not in ("constrain", "retokenize"):
        raise ValueError(f"mode must be constrain or retokenize, not {mode!r}")
    with torch.inference_mode():
        return _decode_canonical(decoder, oracle, prompt_ids, rows, temperatures, seeds, mode,
                                 max_new_tokens, eos_ids, stop_at_eos, pad_id, every, truncation,
                                 on_step)


def _decode_canonical(decoder, oracle, prompt_ids, rows, temperatures, seeds, mode,
                      max_new_tokens, eos_ids, stop_at_eos, pad_id, every, truncation, on_step):
    import torch

    from tmcli.generation.constrain import RowState, constrain_tokens, retokenize_rows
    from tmcli.generation.sampler import RowNoise, race_scores

    N = max_new_tokens
    device = decoder.device if hasattr(decoder, "device") else "cpu"
    logits = prefill_rows(decoder, prompt_ids, rows, max_new_tokens, pad_id)
    n = len(rows)
    state = [RowState(list(prompt_ids[r])) for r in rows]
    temps = torch.tensor(temperatures, dtype=torch.float32, device=device)
    noise_source = RowNoise([None if t == 0 else s for t, s in zip(temperatures, seeds)], device)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    eos_set = set(int(e) for e in eos_ids)
    alive = list(range(n))  # original row of each decoder row
    max_steps = 4 * N + 16  # a row that keeps being rewritten stops here
    for _step in range(max_steps):
        # 1. rows whose logits are current choose a token
        choosing = [i for i, r in enumerate(alive) if not state[r].done and state[r].fed == len(state[r].seq)]
        if choosing:
            idx = torch.tensor(choosing, dtype=torch.long, device=device)
            lg = logits.index_select(0, idx)
            if len(eos) and not stop_at_eos:
                lg.index_fill_(1, eos, float("-inf"))
            orig = [alive[i] for i in choosing]
            t = temps[orig]
            noise = None if bool((t == 0).all()) else noise_source.draw(orig, lg.shape[1])
            cut = None if truncation is None else [truncation[r] for r in orig]
            scores = race_scores(lg, t, noise, cut)
            tokens = scores.argmax(-1)
            if mode == "constrain":
                # where truncation keeps no canonical token: the untruncated race (same noise)
                sampled_cut = cut and any(c.active for c, tt in zip(cut, t.tolist()) if tt > 0)
                whole = race_scores(lg, t, noise) if sampled_cut else None
                tokens = constrain_tokens(oracle, [state[r] for r in orig], scores, tokens, N,
                                          untruncated=whole)
            for r, tok in zip(orig, tokens.tolist()):
                row = state[r]
                if stop_at_eos and tok in eos_set:
                    row.done, row.reason = True, "eos"
                    continue
                row.seq.append(tok)
            if mode == "retokenize":
                retokenize_rows(oracle, [state[r] for r in orig if not state[r].done], N, every)
            if on_step is not None:
                on_step(len(choosing))
        for r in alive:
            if len(state[r].seq) >= N:  # checked (strictly, at this length) when it got there
                state[r].done = True
        if all(state[r].done for r in alive):
            break
        # 2. roll back what retokenize replaced, then feed one id per row
        back = [(i, state[r].rollback) for i, r in enumerate(alive) if state[r].rollback]
        if back:
            decoder.rollback([i for i, _ in back], [k for _, k in back])
            for i, _ in back:
                state[alive[i]].rollback = 0
        feed = []
        for r in alive:
            row = state[r]
            if row.done:
                feed.append(pad_id)
            else:
                feed.append(row.seq[row.fed])
                row.fed += 1
                row.stats.steps += 1
        done_rows = [i for i, r in enumerate(alive) if state[r].done]
        if done_rows and len(done_rows) * 4 >= len(alive):  # drop finished rows from the batch
            keep = [i for i, r in enumerate(alive) if not state[r].done]
            decoder.select(torch.tensor(keep, dtype=torch.long, device=device))
            alive = [alive[i] for i in keep]
            feed = [feed[i] for i in keep]
        logits = decoder.step(torch.tensor(feed, dtype=torch.long, device=device))
    out = []
    for row in state:
        if not row.done:  # still being rewritten after max_steps (never seen in practice)
            row.reason = "step_limit"
        out.append((row.seq[:N], row.reason, row.stats.to_dict()))
    return out


class TransformersEngine(Engine):
    """A model loaded by transformers (`models.load_model`), decoded by tmcli's loop."""

    name = "transformers"
    fast = False

    def __init__(self, spec: str, options: EngineOptions):
        import torch

        from tmcli.generation.engines.decoders import make_decoder
        from tmcli.sources.models import load_model

        if options.threads:
            torch.set_num_threads(options.threads)
        self.lm = load_model(spec, options.device, options.dtype,
                             trust_remote_code=options.trust_remote_code, progress=options.progress)
        self.spec, self.model_id, self.tokenizer = spec, self.lm.model_id, self.lm.tokenizer
        self.device, self.dtype, self.eos_ids = self.lm.device, self.lm.dtype, self.lm.eos_ids
        self.decoder = make_decoder(self.lm.model, fast=self.fast)
        self.oracle = None

    def batch_size(self, max_context: int, requested: int | None, rows: int) -> int:
        from tmcli.generation.engines.decoders import plan_batch_size

        return plan_batch_size(self.lm, max_context, requested, rows)

    def decode(self, prompt_ids, rows, temperatures, seeds, *, mode, max_new_tokens, stop_at_eos,
               every=1, truncation=None, on_step=None):
        opts = dict(max_new_tokens=max_new_tokens, eos_ids=self.eos_ids, stop_at_eos=stop_at_eos,
                    truncation=truncation, on_step=on_step)
        if mode == "off":
            return [(g, r, None) for g, r in decode_batch(self.decoder, prompt_ids, rows,
                                                          temperatures, seeds, **opts)]
        from tmcli.generation.constrain import Oracle
        from tmcli.measure.token_bytes import vocab_for

        if self.oracle is None:
            self.oracle = Oracle(vocab_for(self.tokenizer))
        return decode_canonical(self.decoder, self.oracle, prompt_ids, rows, temperatures, seeds,
                                mode=mode, every=every, **opts)

    def close(self) -> None:
        self.decoder = self.lm = self.oracle = None
