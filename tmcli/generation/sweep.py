"""`generate`: the study's sweep (models x temperatures x truncation settings x prompts), batched,
resumable, seeded.

Which engine decodes (`tmcli.generation.engines`: fused, transformers, vLLM) is chosen by name; all of them
sample with `tmcli.generation.sampler`, so the engine changes the speed, not the records. Batches hold rows
of similar prompt length (prompts x temperatures x truncation settings, one of each per row).

How nothing is lost: records are appended and fsynced per batch; a record's id is a function of
what determines it (model, prompt, temperature, truncation, seed, lengths, canonical mode), so
rerunning the same command skips what is done, and a line cut by a crash is repaired before
appending.

How it is reproducible: each row draws its sampling noise from its own generator, seeded from
(seed, prompt, temperature), so a record does not depend on which rows shared its batch, and
truncation settings are compared on common random numbers.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tmcli.errors import TmcliError
from tmcli.generation.constrain import CANONICAL_MODES
from tmcli.generation.engines import Engine
from tmcli.generation.progress import NoProgress, Progress
from tmcli.generation.prompts import Prompt
from tmcli.generation.truncation import NONE, Truncation, sampling_axes, truncation_arg
from tmcli.sources.aliases import DEFAULT_MODEL


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
    truncation: Truncation = NONE


def record_id(model: str, prompt: Prompt, temperature: float, seed: int, *, max_new_tokens: int,
              stop_at_eos: bool, canonical: str = "off", prompt_ids: Sequence[int] = (),
              truncation: Truncation = NONE) -> str:
    """Readable and deterministic; the digest covers the prompt text, the ids it was encoded to
    and the lengths too, so a changed prompt file, prompt encoding or length never passes for
    work already done. Truncation is in the id only when it truncates (``top_k50:``,
    ``top_p0.95:``, ``min_p0.05:``), so a pure-sampling record keeps the id it always had."""
    fed = ",".join(map(str, prompt_ids))
    key = (f"{model}\0{prompt.text}\0{temperature!r}\0{seed}\0{max_new_tokens}\0{stop_at_eos}"
           f"\0{canonical}\0{fed}")
    extra, cut = truncation.id_parts()
    key += extra
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    mode = "" if canonical == "off" else f"{canonical}:"
    return f"{model}:T{temperature:g}:{cut}p{prompt.index}:s{seed}:{mode}{digest}"


def row_seed(prompt: Prompt, temperature: float, seed: int) -> int:
    """The seed of one row's sampling generator: the same for every model, every length and every
    canonical mode, so models and modes are compared on common random numbers and a longer run
    extends a shorter one."""
    key = f"{seed}\0{prompt.text}\0{temperature!r}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def truncation_grid(top_k=None, top_p=None, min_p=None,
                    sampling_config: str | None = None) -> list[Truncation]:
    """Every combination of the truncation axes (each one value or several; None: off), in the
    order given. With ``sampling_config="model"`` the axes come from the model and none may be
    given."""
    if sampling_config not in (None, "model"):
        raise TmcliError(f"unknown sampling config '{sampling_config}'",
                         hint="use --sampling-config model (each model's own generation config)")
    given = [name for name, v in (("--top-k", top_k), ("--top-p", top_p), ("--min-p", min_p))
             if v is not None]
    if sampling_config == "model":
        if given:
            raise TmcliError(f"{', '.join(given)} cannot be combined with --sampling-config model",
                             hint="drop them to use the model's own settings, or drop "
                                  "--sampling-config to set them yourself")
        return [NONE]

    def axis(value, off):
        values = [off] if value is None else [value] if isinstance(value, (int, float)) \
            else list(value)
        if not values:
            raise TmcliError("a truncation axis is empty", hint="give at least one value")
        return list(dict.fromkeys(values))

    return [Truncation(k, p, m) for k in axis(top_k, 0) for p in axis(top_p, 1.0)
            for m in axis(min_p, 0.0)]


# -- the sweep ------------------------------------------------------------------------------------

def _batches(jobs: list[_Job], lengths: dict[int, int], size: int) -> list[list[_Job]]:
    """Longest prompts first (errors and the ETA show early), a prompt's rows kept together, and
    batches of equal size (130 rows at 128 per batch run as 65 + 65, not 128 + 2)."""
    jobs = sorted(jobs, key=lambda j: (-lengths[j.prompt.index], j.prompt.index, j.temperature,
                                       j.truncation))
    n = -(-len(jobs) // size)
    size = -(-len(jobs) // n)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "not enough memory" in text \
        or "can't allocate" in text


class GenerateInterrupted(KeyboardInterrupt):
    """Ctrl-C during `generate`: what was saved (every record before it is complete and fsynced)."""

    def __init__(self, summary: GenerateSummary):
        super().__init__()
        self.summary = summary


def generate(models: str | Sequence[str], prompts: Sequence[Prompt | str], output: str | os.PathLike,
             *, temperatures: Sequence[float] | None = None,
             top_k: int | Sequence[int] | None = None,
             top_p: float | Sequence[float] | None = None,
             min_p: float | Sequence[float] | None = None,
             sampling_config: str | None = None, max_new_tokens: int = 1024,
             stop_at_eos: bool = False, seed: int = 0, device: str = "auto", dtype: str = "auto",
             threads: int | None = None, batch_size: int | None = None,
             trust_remote_code: bool = False, engine: str | Engine = "auto", canonical: str = "off",
             retokenize_every: int = 1, tensor_parallel_size: int = 1,
             data_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
             max_model_len: int | None = None, ray_address: str | None = None,
             progress: Progress | None = None) -> GenerateSummary:
    """Generate one record per (model, prompt, temperature, truncation setting) into ``output``
    (JSONL), resuming.

    ``temperatures`` (default 1.0) and the truncation axes ``top_k`` (0: off), ``top_p`` (1: off)
    and ``min_p`` (0: off) each take one value or several; every combination is a row
    (default: pure sampling). ``sampling_config="model"`` takes top-k, top-p and min-p from each
    model's own generation config as transformers resolves it (its defaults where the file
    sets none: top-k 50), and the temperature too unless ``temperatures`` is given (0, greedy,
    where the config does not sample); the values used are recorded.

    ``engine`` is a name from `tmcli.generation.engines.ENGINE_CHOICES`, or an engine already loaded
    (`tmcli.generation.engines.load_engine`) for the one model given, which is then reused and left open
    (a vLLM engine takes a while to start). ``tensor_parallel_size`` applies to vLLM;
    ``data_parallel_size`` > 1 (or a ``ray_address``) decodes on that many engine replicas on Ray
    (`tmcli.generation.data_parallel`), with the same records.
    ``progress`` is told how far the run is (a `tmcli.generation.progress.Progress`: the CLI passes
    a Rich bar on a terminal, plain lines elsewhere); without one, nothing is shown. Ctrl-C raises
    `GenerateInterrupted`, which carries the summary of what was saved."""
    from tmcli import __version__
    from tmcli.generation.engines import ENGINE_CHOICES, EngineOptions, load_engine, resolve_engine
    from tmcli.io.writer import RecordWriter, existing_ids
    from tmcli.sources.models import model_prompt_tokenizer, needs_conversion
    from tmcli.sources.tokenizers import encode_prompt, load_tokenizer

    models = [models] if isinstance(models, str) else list(dict.fromkeys(models))
    prompts = [p if isinstance(p, Prompt) else Prompt(i, p) for i, p in enumerate(prompts)]
    temperatures = None if temperatures is None else \
        list(dict.fromkeys(float(t) for t in temperatures))
    cuts = truncation_grid(top_k, top_p, min_p, sampling_config)
    if not models:
        raise TmcliError("no model given", hint=f"pass --model (e.g. --model {DEFAULT_MODEL})")
    if not prompts:
        raise TmcliError("no prompts given", hint="pass --prompts FILE")
    if temperatures is not None and (not temperatures or any(t < 0 or t != t for t in temperatures)):
        raise TmcliError("temperatures must be >= 0", hint="e.g. --temperatures 0:2:0.2")
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                        ("--threads", threads), ("--retokenize-every", retokenize_every),
                        ("--tensor-parallel-size", tensor_parallel_size),
                        ("--data-parallel-size", data_parallel_size),
                        ("--max-model-len", max_model_len)):
        if value is not None and value <= 0:
            raise TmcliError(f"{flag} must be positive, got {value}")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise TmcliError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}")
    if canonical not in CANONICAL_MODES:
        raise TmcliError(f"unknown canonical mode '{canonical}'",
                         hint="supported: " + ", ".join(CANONICAL_MODES))
    loaded = None if isinstance(engine, str) else engine
    if loaded is not None and models != [loaded.spec]:
        raise TmcliError(f"the engine given was loaded for {loaded.spec}, not {', '.join(models)}")
    on_ray = data_parallel_size > 1 or ray_address is not None
    if on_ray and loaded is not None:
        raise TmcliError("an engine already loaded cannot be replicated on Ray",
                         hint="pass the engine's name (e.g. engine='fused') instead")
    if loaded is None and engine not in ENGINE_CHOICES:
        raise TmcliError(f"unknown engine '{engine}'", hint="use one of: " + ", ".join(ENGINE_CHOICES))
    show_bars = progress is not None and progress.bars
    progress = progress or NoProgress()
    note = progress.note
    out = Path(output)
    done = existing_ids(out)  # reads only: a torn last line is cut by the first write
    todo: dict[str, list[_Job]] = {}
    summary = GenerateSummary(str(out), models=models)
    mode_key = canonical if canonical != "retokenize" or retokenize_every == 1 \
        else f"{canonical}/{retokenize_every}"
    prompt_ids: dict[str, dict[int, list[int]]] = {}
    for spec in models:
        todo[spec] = []
        ptok = model_prompt_tokenizer(spec)
        prompt_ids[spec] = fed = {p.index: encode_prompt(ptok, p.text) for p in prompts}
        temps, spec_cuts = sampling_axes(spec, temperatures, cuts, sampling_config,
                                         trust_remote_code=trust_remote_code, note=note)
        for p in prompts:
            for t in temps:
                for cut in spec_cuts:
                    rid = record_id(spec, p, t, seed, max_new_tokens=max_new_tokens,
                                    stop_at_eos=stop_at_eos, canonical=mode_key,
                                    prompt_ids=fed[p.index], truncation=cut)
                    if rid in done:
                        summary.skipped += 1
                    else:
                        todo[spec].append(_Job(rid, p, t, row_seed(p, t, seed), cut))
    total = sum(len(j) for j in todo.values()) * max_new_tokens
    if total == 0:
        return summary
    progress.start(total)
    try:
        with RecordWriter(out) as writer, _cluster(on_ray, ray_address) as ray:
            if ray is not None:  # `auto`: the cluster's accelerators, not this machine's
                from tmcli.generation.data_parallel import replica_device

                device = replica_device(ray, device)
            for spec in models:
                if todo[spec]:
                    longest = max(map(len, prompt_ids[spec].values())) + max_new_tokens
                    if max_model_len and max_model_len < longest:
                        raise TmcliError(
                            f"--max-model-len {max_model_len} is shorter than the longest prompt "
                            f"plus --max-new-tokens ({longest} tokens)",
                            hint=f"use --max-model-len {longest} or more")
                    options = EngineOptions(
                        device=device, dtype=dtype, threads=threads,
                        trust_remote_code=trust_remote_code,
                        tensor_parallel_size=tensor_parallel_size,
                        data_parallel_size=data_parallel_size,
                        gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len or longest, progress=show_bars)
                    name = loaded.name if loaded is not None else \
                        resolve_engine(engine, spec, device)
                    if canonical == "retokenize" and name == "vllm":
                        raise TmcliError("--canonical retokenize is not supported on --engine vllm",
                                         hint="use --canonical constrain, or --engine fused or "
                                              "transformers")
                    if loaded is None and needs_conversion(spec):
                        note(f"converting {spec} to a checkpoint (first use, 20-90 s)")
                    kw = dict(longest=longest, seed=seed, max_new_tokens=max_new_tokens,
                              stop_at_eos=stop_at_eos, canonical=canonical,
                              retokenize_every=retokenize_every, batch_size=batch_size,
                              version=__version__, sampling_config=sampling_config)
                    if ray is not None:
                        from tmcli.generation.data_parallel import run_replicated

                        run_replicated(engine, spec, options, todo[spec], prompt_ids[spec],
                                       writer, summary, progress, replicas=data_parallel_size,
                                       plan=_batches, decode=decode_unit, sweep=kw,
                                       resolved=name)
                        continue
                    progress.describe(f"loading {spec}")
                    started = time.perf_counter()
                    eng = loaded or load_engine(engine, spec, options, resolved=name)
                    summary.load_seconds += time.perf_counter() - started
                    try:
                        _sweep(eng, todo[spec], prompt_ids[spec], writer, summary, progress,
                               load_tokenizer(eng.tokenizer), **kw)
                    finally:
                        if loaded is None:
                            eng.close()
    except KeyboardInterrupt:
        raise GenerateInterrupted(summary) from None
    return summary


def _cluster(on_ray: bool, address: str | None):
    """The Ray session of a data-parallel run (`measure.ray_udf.ray_session`), else nothing."""
    from contextlib import nullcontext

    if not on_ray:
        return nullcontext()
    from tmcli.measure.ray_udf import ray_session

    return ray_session(address)


class _Collect:
    """Stands for the `RecordWriter` where records are sent elsewhere: keeps them."""

    def __init__(self):
        self.records: list[dict] = []

    def write(self, records: list[dict]) -> int:
        self.records.extend(records)
        return len(records)


def decode_unit(eng, tok, jobs: list[_Job], ids: dict[int, list[int]], sweep: dict
                ) -> tuple[list[dict], int]:
    """One batch of ``jobs`` decoded by `_sweep` (``sweep``: its keyword arguments) on a
    data-parallel replica: its records, and their new tokens."""
    out, summary = _Collect(), GenerateSummary("")
    _sweep(eng, jobs, ids, out, summary, NoProgress(), tok, **{**sweep, "batch_size": len(jobs)})
    return out.records, summary.new_tokens


def _sweep(eng: Engine, jobs: list[_Job], ids: dict[int, list[int]], writer,
           summary: GenerateSummary, progress: Progress, tok, *, longest: int, seed: int, max_new_tokens: int, stop_at_eos: bool, canonical: str,
           retokenize_every: int, batch_size: int | None, version: str,
           sampling_config: str | None = None) -> None:
    """Decode one model's jobs batch by batch on ``eng``, writing each batch's records.
    ``longest``: the longest prompt plus ``max_new_tokens``."""
    size = eng.batch_size(longest, batch_size, len(jobs))
    sampling = {"repetition_penalty": 1.0,
                "min_new_tokens": 0 if stop_at_eos else max_new_tokens,
                "max_new_tokens": max_new_tokens, "stop_at_eos": stop_at_eos,
                "eos_token_ids": list(eng.eos_ids),
                **({"config": sampling_config} if sampling_config else {})}
    meta = eng.metadata()
    progress.describe(f"{eng.spec} ({meta['engine']})")
    started = time.perf_counter()
    try:
        for batch in _batches(jobs, {k: len(v) for k, v in ids.items()}, size):
            order = list(dict.fromkeys(j.prompt.index for j in batch))
            try:
                results = eng.decode([ids[i] for i in order],
                                     [order.index(j.prompt.index) for j in batch],
                                     [j.temperature for j in batch], [j.row_seed for j in batch],
                                     mode=canonical, max_new_tokens=max_new_tokens,
                                     stop_at_eos=stop_at_eos, every=retokenize_every,
                                     **truncation_arg([j.truncation for j in batch]),
                                     on_step=progress.advance)
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                raise TmcliError(f"out of memory with {len(batch)} rows per batch on {eng.device}",
                                 hint=f"use --batch-size {max(1, len(batch) // 2)}") from None
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            records = []
            for job, (gen, reason, stats) in zip(batch, results):
                records.append({
                    "id": job.id, "model": eng.spec, "model_id": eng.model_id,
                    "tokenizer": eng.tokenizer, "temperature": job.temperature,
                    **job.truncation.as_dict(),
                    "prompt_index": job.prompt.index, "prompt": job.prompt.text,
                    "prompt_token_ids": ids[job.prompt.index],
                    "completion": tok.decode(gen, skip_special_tokens=False),
                    "token_ids": gen, "n_new_tokens": len(gen), "finish_reason": reason,
                    "seed": seed,
                    "sampling": {"do_sample": job.temperature > 0, "temperature": job.temperature,
                                 **job.truncation.as_dict(), **sampling},
                    "canonical": canonical,
                    **({"retokenize_every": retokenize_every} if canonical == "retokenize" else {}),
                    **({"canonical_stats": stats} if stats is not None else {}),
                    **meta, "batch_size": size, "tmcli_version": version, "created": created,
                })
                summary.new_tokens += len(gen)
            writer.write(records)
            summary.written += len(records)
            # rows that stopped at EOS finish early: keep the bar's total honest
            progress.advance(sum(max_new_tokens - len(g) for g, *_ in results))
    finally:
        summary.seconds += time.perf_counter() - started
