"""`generate`: the study's sweep (models x temperatures x prompts), batched, resumable, seeded.

How it is fast: all rows of a batch (prompts x temperatures, one temperature per row) decode
together; prompts are sorted by length so little padding is needed; a prompt is prefilled once
and its KV cache copied to each of its temperature rows; each step computes last-position logits
only and samples with plain tensor ops (no logits processors). See `decoders.py` for the forward.

How nothing is lost: records are appended and fsynced per batch; a record's id is a function of
what determines it (model, prompt, temperature, seed, lengths, canonical mode), so rerunning the
same command skips what is done, and a line cut by a crash is repaired before appending.

How it is reproducible: each row draws its sampling noise from its own generator, seeded from
(seed, prompt, temperature), so a record does not depend on which rows shared its batch.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tmcli.canonical import CANONICAL_MODES
from tmcli.errors import TmcliError
from tmcli.prompts import Prompt



@dataclass
class GenerateSummary:
    output: str
    written: int = 0
    skipped: int = 0
    new_tokens: int = 0
    seconds: float = 0.0  # decoding only
    load_seconds: float = 0.0  # loading (and on first use converting) models
    models: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Job:
    id: str
    prompt: Prompt
    temperature: float
    row_seed: int


def parse_temperatures(spec: str) -> list[float]:
    """``"0,1,2"`` or ``"0:2:0.2"`` (start:stop:step, stop included), or a comma list of both."""
    values: list[float] = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            if ":" in part:
                bits = [Decimal(b) for b in part.split(":")]
                if len(bits) != 3:
                    raise InvalidOperation
                start, stop, step = bits
                if step <= 0:
                    raise TmcliError(f"temperature step must be positive in '{part}'")
                x = start
                while x <= stop:
                    values.append(float(x))
                    x += step
            else:
                values.append(float(Decimal(part)))
        except InvalidOperation:
            raise TmcliError(f"cannot read temperatures '{spec}'",
                             hint="use a list like 0,1,2 or a range like 0:2:0.2") from None
    for t in values:
        if t < 0 or t != t or t == float("inf"):
            raise TmcliError(f"temperature {t:g} is not allowed", hint="temperatures must be >= 0")
    if not values:
        raise TmcliError(f"no temperatures in '{spec}'", hint="e.g. --temperatures 0:2:0.2")
    return list(dict.fromkeys(values))


def record_id(model: str, prompt: Prompt, temperature: float, seed: int, *, max_new_tokens: int,
              stop_at_eos: bool, canonical: str = "off", prompt_ids: Sequence[int] = ()) -> str:
    """Readable and deterministic; the digest covers the prompt text, the ids it was encoded to
    and the lengths too, so a changed prompt file, prompt encoding or length never passes for
    work already done."""
    fed = ",".join(map(str, prompt_ids))
    key = (f"{model}\0{prompt.text}\0{temperature!r}\0{seed}\0{max_new_tokens}\0{stop_at_eos}"
           f"\0{canonical}\0{fed}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    mode = "" if canonical == "off" else f"{canonical}:"
    return f"{model}:T{temperature:g}:p{prompt.index}:s{seed}:{mode}{digest}"


def row_seed(prompt: Prompt, temperature: float, seed: int) -> int:
    """The seed of one row's sampling generator: the same for every model, every length and every
    canonical mode, so models and modes are compared on common random numbers and a longer run
    extends a shorter one."""
    key = f"{seed}\0{prompt.text}\0{temperature!r}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


# -- sampling and the decode loop ---------------------------------------------------------------

def race_scores(logits, temperatures, log_noise):
    """The scores whose argmax is a row's sample: ``logit / T - log E`` (``log_noise``), and the
    logits themselves for T=0 rows (``log_noise`` may be None when every row is greedy).

    Exponential race (Gumbel-max): with E_i ~ Exp(1), argmax of p_i / E_i is token i with
    probability p_i, and the argmax over any subset of tokens is a draw from the distribution
    renormalised to that subset (canonical sampling masks tokens this way)."""
    import torch

    greedy = temperatures == 0
    if bool(greedy.all()):
        return logits
    t = torch.where(greedy, torch.ones_like(temperatures), temperatures)
    scores = torch.div(logits, t[:, None]).sub_(log_noise)
    if bool(greedy.any()):
        scores[greedy] = logits[greedy]
    return scores


def sample(logits, temperatures, log_noise):
    """Pure temperature sampling, one temperature per row; T=0 rows are greedy (argmax).

    The argmax of `race_scores`. Unlike inverse-CDF sampling, whose cumulative sum over the whole
    vocabulary turns float rounding into a different token now and then, a draw here only changes
    when two tokens' scores tie to within rounding, so the rows a record shared its batch with do
    not change its samples."""
    return race_scores(logits, temperatures, log_noise).argmax(-1)


class RowNoise:
    """log E with E ~ Exp(1), one draw per vocabulary entry per step, from each row's own generator.

    On CPU numpy's PCG64 fills a row faster than torch's Mersenne twister; on accelerators each
    row has a torch generator on the device. Greedy rows (seed None) draw nothing."""

    def __init__(self, seeds: Sequence[int | None], device):
        import numpy as np
        import torch

        self.device = torch.device(device)
        if self.device.type == "cpu":
            self.gens = [None if s is None else np.random.default_rng(s) for s in seeds]
        else:
            self.gens = [None if s is None else torch.Generator(device=self.device).manual_seed(s)
                         for s in seeds]

    def draw(self, rows: Sequence[int], vocab: int):
        import numpy as np
        import torch

        if self.device.type == "cpu":
            buf = np.empty((len(rows), vocab), dtype=np.float32)
            for i, r in enumerate(rows):
                if self.gens[r] is None:
                    buf[i] = 1 / np.e
                else:
                    self.gens[r].random(out=buf[i], dtype=np.float32)
            noise = torch.from_numpy(buf)
        else:
            noise = torch.full((len(rows), vocab), 1 / torch.e, device=self.device)
            for i, r in enumerate(rows):
                if self.gens[r] is not None:
                    noise[i].uniform_(generator=self.gens[r])
        return noise.log_().neg_().log_()


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
                 on_step: Callable[[int], None] | None = None) -> list[tuple[list[int], str]]:
    """Decode ``rows`` (each an index into ``prompt_ids``) together; (token ids, finish reason).

    Forced length (the study's min = max new tokens) masks the EOS ids, as transformers' min-length
    processor does; with ``stop_at_eos`` a row ends at its first EOS, which is not kept in its ids."""
    import torch

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
            tokens = sample(logits, temps[alive], noise_source.draw(live, logits.shape[1]))
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


# -- the sweep ------------------------------------------------------------------------------------

def _batches(jobs: list[_Job], lengths: dict[int, int], size: int) -> list[list[_Job]]:
    """Longest prompts first (errors and the ETA show early), a prompt's rows kept together, and
    batches of equal size (130 rows at 128 per batch run as 65 + 65, not 128 + 2)."""
    jobs = sorted(jobs, key=lambda j: (-lengths[j.prompt.index], j.prompt.index, j.temperature))
    n = -(-len(jobs) // size)
    size = -(-len(jobs) // n)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "not enough memory" in text \
        or "can't allocate" in text


class _NoProgress:
    def start(self, total: int) -> None: ...
    def describe(self, text: str) -> None: ...
    def advance(self, tokens: int) -> None: ...


def generate(models: str | Sequence[str], prompts: Sequence[Prompt | str], output: str | os.PathLike,
             *, temperatures: Sequence[float] = (1.0,), max_new_tokens: int = 1024,
             stop_at_eos: bool = False, seed: int = 0, device: str = "auto", dtype: str = "auto",
             threads: int | None = None, batch_size: int | None = None,
             trust_remote_code: bool = False, engine: str = "auto", canonical: str = "off",
             retokenize_every: int = 1, progress=None) -> GenerateSummary:
    """Generate one record per (model, prompt, temperature) into ``output`` (JSONL), resuming.

    ``progress`` is any object with ``start(total_tokens)``, ``describe(text)`` and
    ``advance(tokens)`` (the CLI passes a Rich bar on a terminal); without one, nothing is shown."""
    from tmcli import __version__
    from tmcli.loading import encode_prompt, load_model, load_tokenizer, model_prompt_tokenizer
    from tmcli.records import RecordWriter, existing_ids, repair_tail

    models = [models] if isinstance(models, str) else list(dict.fromkeys(models))
    prompts = [p if isinstance(p, Prompt) else Prompt(i, p) for i, p in enumerate(prompts)]
    temperatures = list(dict.fromkeys(float(t) for t in temperatures))
    if not models:
        raise TmcliError("no model given", hint="pass --model (e.g. --model smollm2-135m)")
    if not prompts:
        raise TmcliError("no prompts given", hint="pass --prompts FILE")
    if not temperatures or any(t < 0 or t != t for t in temperatures):
        raise TmcliError("temperatures must be >= 0", hint="e.g. --temperatures 0:2:0.2")
    if max_new_tokens <= 0:
        raise TmcliError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if batch_size is not None and batch_size <= 0:
        raise TmcliError(f"--batch-size must be positive, got {batch_size}")
    if threads is not None and threads <= 0:
        raise TmcliError(f"--threads must be positive, got {threads}")
    if canonical not in CANONICAL_MODES:
        raise TmcliError(f"unknown canonical mode '{canonical}'",
                         hint="supported: " + ", ".join(CANONICAL_MODES))
    if retokenize_every < 1:
        raise TmcliError(f"--retokenize-every must be positive, got {retokenize_every}")
    if engine not in ("auto", "transformers"):
        raise TmcliError(f"unknown engine '{engine}'", hint="use auto or transformers")
    show_bars = progress is not None and getattr(progress, "bars", True)
    progress = progress or _NoProgress()
    out = Path(output)
    repair_tail(out)
    done = existing_ids(out)
    todo: dict[str, list[_Job]] = {}
    summary = GenerateSummary(str(out), models=models)
    mode_key = canonical if canonical != "retokenize" or retokenize_every == 1 \
        else f"{canonical}/{retokenize_every}"
    prompt_ids: dict[str, dict[int, list[int]]] = {}
    for spec in models:
        todo[spec] = []
        ptok = model_prompt_tokenizer(spec)
        prompt_ids[spec] = fed = {p.index: encode_prompt(ptok, p.text) for p in prompts}
        for p in prompts:
            for t in temperatures:
                rid = record_id(spec, p, t, seed, max_new_tokens=max_new_tokens,
                                stop_at_eos=stop_at_eos, canonical=mode_key,
                                prompt_ids=fed[p.index])
                if rid in done:
                    summary.skipped += 1
                else:
                    todo[spec].append(_Job(rid, p, t, row_seed(p, t, seed)))
    total = sum(len(j) for j in todo.values()) * max_new_tokens
    if total == 0:
        return summary
    import torch

    if threads:
        torch.set_num_threads(threads)
    from tmcli.decoders import make_decoder, plan_batch_size

    progress.start(total)
    with RecordWriter(out) as writer:
        for spec in models:
            jobs = todo[spec]
            if not jobs:
                continue
            progress.describe(f"loading {spec}")
            started = time.perf_counter()
            lm = load_model(spec, device, dtype, trust_remote_code=trust_remote_code,
                            progress=show_bars)
            tok = load_tokenizer(lm.tokenizer)
            summary.load_seconds += time.perf_counter() - started
            ids = prompt_ids[spec]
            size = plan_batch_size(lm, max(map(len, ids.values())) + max_new_tokens, batch_size,
                                   len(jobs))
            decoder = make_decoder(lm.model, fast=engine == "auto")
            oracle = None
            if canonical != "off":
                from tmcli.canonical import Oracle, decode_canonical
                from tmcli.vocab import vocab_for

                oracle = Oracle(vocab_for(lm.tokenizer))
            sampling = {"top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
                        "min_new_tokens": 0 if stop_at_eos else max_new_tokens,
                        "max_new_tokens": max_new_tokens, "stop_at_eos": stop_at_eos,
                        "eos_token_ids": list(lm.eos_ids)}
            progress.describe(spec)
            started = time.perf_counter()
            for batch in _batches(jobs, {k: len(v) for k, v in ids.items()}, size):
                order = list(dict.fromkeys(j.prompt.index for j in batch))
                args = (decoder, [ids[i] for i in order], [order.index(j.prompt.index) for j in batch],
                        [j.temperature for j in batch], [j.row_seed for j in batch])
                opts = dict(max_new_tokens=max_new_tokens, eos_ids=lm.eos_ids,
                            stop_at_eos=stop_at_eos, on_step=progress.advance)
                try:
                    if canonical == "off":
                        results = [(g, r, None) for g, r in decode_batch(*args, **opts)]
                    else:
                        results = decode_canonical(args[0], oracle, *args[1:], mode=canonical,
                                                   every=retokenize_every, **opts)
                except (RuntimeError, MemoryError) as exc:
                    if not _is_oom(exc):
                        raise
                    raise TmcliError(f"out of memory with {len(batch)} rows per batch on {lm.device}",
                                     hint=f"use --batch-size {max(1, len(batch) // 2)}") from None
                created = datetime.now(timezone.utc).isoformat(timespec="seconds")
                records = []
                for job, (gen, reason, stats) in zip(batch, results):
                    records.append({
                        "id": job.id, "model": spec, "model_id": lm.model_id, "tokenizer": lm.tokenizer,
                        "temperature": job.temperature, "prompt_index": job.prompt.index,
                        "prompt": job.prompt.text, "prompt_token_ids": ids[job.prompt.index],
                        "completion": tok.decode(gen, skip_special_tokens=False),
                        "token_ids": gen, "n_new_tokens": len(gen), "finish_reason": reason,
                        "seed": seed,
                        "sampling": {"do_sample": job.temperature > 0, "temperature": job.temperature,
                                     **sampling},
                        "canonical": canonical,
                        **({"retokenize_every": retokenize_every} if canonical == "retokenize" else {}),
                        **({"canonical_stats": stats} if stats is not None else {}),
                        "engine": decoder.name, "dtype": lm.dtype,
                        "device": lm.device, "batch_size": size, "tmcli_version": __version__,
                        "created": created,
                    })
                    summary.new_tokens += len(gen)
                writer.write(records)
                summary.written += len(records)
                # rows that stopped at EOS finish early: keep the bar's total honest
                progress.advance(sum(max_new_tokens - len(g) for g, *_ in results))
            summary.seconds += time.perf_counter() - started
            del decoder, lm
    return summary
