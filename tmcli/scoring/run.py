"""`tmcli score`: run a model over records already generated and append them, with what it
measured, to an output file. One driver for every measurement (`TASKS`):

- ``nll`` (default, `scoring.nll`): the NLL of each completion on its canonical ids;
- ``divergence`` (`scoring.divergence`): how far the next-token distributions of the generated
  and the canonical context differ after each non-canonical span (``divergence`` field);
- ``merge`` (`scoring.merge`): seed 001's SLERP merge at layer cuts against the unmerged model,
  over prefixes of each record's ids (``merge`` field).

Records of each model are scored on that model (or ``model``), in batches, each batch written
(and fsynced) as it is done; records already in the output (by id) are skipped, so a rerun
resumes. With ``temperatures``, records at other temperatures are copied through unscored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError
from tmcli.generation.progress import NoProgress, Progress

TASKS = ("nll", "divergence", "merge")
ENGINES = ("auto", "fused", "transformers", "vllm")


@dataclass
class ScoreSummary:
    output: str
    written: int = 0
    skipped: int = 0
    passed: int = 0  # copied through unscored (not at the requested temperatures)
    tokens: int = 0  # nll: tokens scored; divergence: positions compared; merge: comparisons
    identical: int = 0  # divergence: samples whose two contexts are the same ids (no forward)
    seconds: float = 0.0


@dataclass
class ScoreTask:
    """What one `score` run measures, with its options."""

    name: str = "nll"
    after: int = 32  # divergence: aligned positions compared after each span
    merge: str = "slerp"
    layers: str | None = None  # merge: '--layer' as given (None: spread over the depth)
    lengths: tuple[int, ...] = ()  # merge: prefix lengths (empty: the defaults)
    positions: str = "interpolate"  # merge: how merged states are positioned


def parse_lengths(text: str | None) -> tuple[int, ...]:
    """``--lengths 4,16,64`` -> (4, 16, 64); None -> () (the defaults)."""
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TmcliError(f"--lengths must be whole numbers separated by commas, got '{text}'",
                         hint="e.g. --lengths 4,16,64,256") from None


def read_records(path: str, model: str | None) -> list[tuple[int, dict]]:
    """(line, record) of every line of ``path``; records must carry token ids and a model."""
    from tmcli.io.input_files import iter_json

    out = []
    for source, line, obj in iter_json(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("token_ids"), list):
            raise TmcliError(f"{source}:{line}: no token_ids list",
                             hint="score reads tmcli generate records (token_ids, prompt_token_ids)")
        if not (model or obj.get("model")):
            raise TmcliError(f"{source}:{line}: the record names no model",
                             hint="pass --model to say which model scores it")
        if obj.get("id") is None:  # no id (or null): one from its line, never shared
            obj["id"] = f"{source}:{line}"
        out.append((line, obj))
    return out


def _check_task(task: ScoreTask, engine) -> None:
    if task.name not in TASKS:
        raise TmcliError(f"score: unknown measurement '{task.name}'", hint="use " + ", ".join(TASKS))
    if isinstance(engine, str) and engine not in ENGINES:
        raise TmcliError(f"score: unknown engine '{engine}'", hint="use " + ", ".join(ENGINES))
    if task.name == "nll" and engine == "fused":
        raise TmcliError("score: the NLL is scored on the transformers or vllm engine",
                         hint="use --engine transformers or vllm (or leave it out)")
    if task.name == "merge":
        from tmcli.scoring.merge import METHODS, POSITIONS

        if engine == "vllm":
            raise TmcliError("--merge rewrites the forward between two layers, which vLLM does "
                             "not offer", hint="use --engine fused or transformers")
        if task.merge not in METHODS:
            raise TmcliError(f"--merge {task.merge}: unknown merge", hint="use --merge slerp")
        if task.positions not in POSITIONS:
            raise TmcliError(f"--merge-positions {task.positions}: unknown",
                             hint="use interpolate or renumber")
        if any(n < 1 for n in task.lengths):
            raise TmcliError("--lengths must be positive", hint="e.g. --lengths 4,16,64,256")
    if task.name == "divergence" and task.after < 1:
        raise TmcliError("--after must be at least 1", hint="e.g. --after 32")


def score(input: str, output: str | os.PathLike, *, model: str | None = None,
          temperatures: Sequence[float] | None = None, device: str = "auto",
          dtype: str = "auto", threads: int | None = None, batch: int = 64,
          engine="auto", gpu_memory_utilization: float | None = None,
          tensor_parallel_size: int = 1, task: ScoreTask | None = None,
          progress: Progress | None = None) -> ScoreSummary:
    """Measure ``task`` (default: the NLL) on each record of ``input`` and append it to
    ``output``. ``engine``: auto, fused, transformers or vllm, or an engine already loaded
    (a `sources.models.LoadedModel`, or a vLLM engine from `generation.engines.load_engine`).
    ``progress`` is told the completion tokens to score and those scored (a
    `tmcli.generation.progress.Progress`)."""
    from tmcli.io.outputs import same_file
    from tmcli.io.writer import RecordWriter

    task = task or ScoreTask()
    _check_task(task, engine)
    if task.name == "merge":  # a record takes a forward per length and cut: write each one
        batch = 1
    out = Path(output)
    if input != "-" and same_file(input, out):
        raise TmcliError("score would overwrite its input", hint="write to another file with -o")
    records = read_records(input, model)
    with RecordWriter(out) as writer:  # locked, its ids read; changed only by the first write
        return _score_into(writer, records, out, model=model, temperatures=temperatures,
                           device=device, dtype=dtype, threads=threads, batch=batch,
                           engine=engine, task=task,
                           gpu_memory_utilization=gpu_memory_utilization,
                           tensor_parallel_size=tensor_parallel_size, progress=progress)


def _score_into(writer, records, out: Path, *, model, temperatures, device, dtype, threads, batch,
                engine, task: ScoreTask, gpu_memory_utilization, tensor_parallel_size,
                progress) -> ScoreSummary:
    """`score` once its output is open: what is done is skipped, the rest scored."""
    done = writer.ids
    summary = ScoreSummary(str(out))
    todo: dict[str, list[dict]] = {}
    passed: list[dict] = []
    wanted = None if temperatures is None else {float(t) for t in temperatures}
    for _line, obj in records:
        if str(obj["id"]) in done:
            summary.skipped += 1
        elif wanted is not None and obj.get("temperature") not in wanted:
            passed.append(obj)
        else:
            todo.setdefault(model or obj["model"], []).append(obj)
    summary.passed = len(passed)
    if not todo:
        writer.write(passed)
        return summary
    if isinstance(engine, str):  # an unknown model fails now: before torch, before any write
        from tmcli.sources.locate import resolve_source

        for spec in todo:
            resolve_source(spec, model=True)
    import torch

    if threads:
        torch.set_num_threads(threads)
    progress = progress or NoProgress()
    progress.start(sum(len(o["token_ids"]) for objs in todo.values() for o in objs))
    started = time.perf_counter()
    for spec, objs in todo.items():
        progress.describe(f"scoring with {spec}")
        lm, owned = _load(engine, spec, objs, task, device, dtype, tensor_parallel_size,
                          gpu_memory_utilization)
        if passed:  # the output changes only once a model has loaded
            writer.write(passed)
            passed = []
        try:
            _score_records(lm, spec, objs, batch, task, engine, writer, summary, progress)
        finally:  # vLLM's worker processes end with its engine, also when scoring fails
            if owned and hasattr(lm, "close"):
                lm.close()
        del lm
    summary.seconds = time.perf_counter() - started
    return summary


def _load(engine, spec: str, objs: list[dict], task: ScoreTask, device: str, dtype: str,
          tensor_parallel_size: int, gpu_memory_utilization: float | None):
    """(the loaded model or vLLM engine, whether this run loaded it and must close it)."""
    if not isinstance(engine, str):  # an engine to reuse (tests, notebooks)
        if getattr(engine, "spec", spec) != spec:
            raise TmcliError(f"the engine given was loaded for {engine.spec}, not {spec}")
        return engine, False
    if engine == "vllm":
        from tmcli.generation.engines import EngineOptions, load_engine

        longest = max(len(o["token_ids"]) + len(o.get("prompt_token_ids") or []) for o in objs)
        return load_engine("vllm", spec, EngineOptions(
            device=device, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=2 * longest + 16)), True
    from tmcli.sources.models import load_model

    return load_model(spec, device, dtype), True


def _engine_name(engine, lm, task: ScoreTask) -> str:
    """The registered forward ``engine`` stands for on ``lm``."""
    if hasattr(lm, "llm"):
        return "vllm"
    if isinstance(engine, str) and engine not in ("auto",):
        return engine
    if task.name == "nll":
        return "transformers"
    from tmcli.generation.engines.llama_decoder import LlamaDecoder

    return "fused" if LlamaDecoder.supports(lm.model) else "transformers"


def _score_records(lm, spec: str, objs: list[dict], batch: int, task: ScoreTask, engine, writer,
                   summary: ScoreSummary, progress: Progress) -> None:
    """Score ``objs`` (records of model ``spec``) on ``lm`` in batches and write them."""
    from tmcli.measure.reencode import Reencoder
    from tmcli.measure.token_bytes import vocab_for

    vocab = vocab_for(lm.tokenizer)
    reencoder = Reencoder(vocab)
    name = _engine_name(engine, lm, task)
    measure = _measurer(name, lm, spec, task, reencoder)
    for s in range(0, len(objs), batch):
        part = objs[s : s + batch]
        bad = next((o for o in part for t in o["token_ids"] + (o.get("prompt_token_ids") or [])
                    if not isinstance(t, int) or not 0 <= t < vocab.size), None)
        if bad is not None:
            raise TmcliError(f"record {bad['id']}: token id out of range for {spec}",
                             hint="score with the model that generated it (--model)")
        measure(part, summary)
        writer.write(part)
        summary.written += len(part)
        progress.advance(sum(len(o["token_ids"]) for o in part))


def _measurer(name: str, lm, spec: str, task: ScoreTask, reencoder):
    """The function that measures one batch of records in place for ``task``."""
    vocab = reencoder.vocab

    def items(part):
        return [(o.get("prompt_token_ids") or [], o["token_ids"]) for o in part]

    if task.name == "nll":
        from tmcli.scoring.nll import score_many

        def nll(part, summary):
            for o, (total, n) in zip(part, score_many(lm, reencoder, items(part))):
                chars = len(vocab.spell(o["token_ids"]).decode("utf-8", errors="replace"))
                o["nll_token"] = total / n if n else None
                o["nll_char"] = total / chars if chars else None
                o["nll_tokens"] = n
                o["nll_model"] = spec
                summary.tokens += n
        return nll
    if task.name == "divergence":
        from tmcli.scoring.divergence import IDENTICAL_NOTE, KEPT_NOTE, divergence_many
        from tmcli.scoring.forward import load_forward

        forward = load_forward(name, lm)

        def divergence(part, summary):
            for o, d in zip(part, divergence_many(forward, reencoder, items(part), task.after)):
                o["divergence"] = {"model": spec, "engine": name, "after": task.after, **d}
                summary.tokens += d["positions"]
                summary.identical += d["note"] in (IDENTICAL_NOTE, KEPT_NOTE)
        return divergence
    from tmcli.scoring.merge import DEFAULT_LENGTHS, load_stack, merge_many, parse_cuts

    stack = load_stack(name, lm)
    cuts = parse_cuts(task.layers, stack.n_layers)
    lengths = sorted(set(task.lengths or DEFAULT_LENGTHS))

    def merge(part, summary):
        fulls = [p + g for p, g in items(part)]
        for o, rows in zip(part, merge_many(stack, fulls, cuts, lengths, task.positions)):
            o["merge"] = {"method": task.merge, "model": spec, "engine": name,
                          "positions": task.positions, "layers": stack.n_layers, "rows": rows}
            summary.tokens += len(rows)
    return merge
