"""`score`: the negative log-likelihood of each completion under a model, on its canonical ids.

A quality proxy for comparing canonical modes: a completion's text is re-encoded canonically in
context (the same re-encoding `analyze` uses), and the model that generated it (or ``--model``)
scores those canonical ids after the prompt. Scoring the canonical ids, not the generated ones,
makes completions from every mode comparable: the same text always gets the same score.

Written per record: ``nll_token`` (mean nats per canonical completion token), ``nll_char`` (total
nats per character of the completion), ``nll_tokens`` (tokens scored) and ``nll_model``. A token
that straddles the prompt/completion boundary counts as the completion's (it spells some of it).
Resumable like `generate`: records already in the output (by id) are skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from tmcli.errors import TmcliError
from tmcli.generation.progress import NoProgress, Progress


@dataclass
class ScoreSummary:
    output: str
    written: int = 0
    skipped: int = 0
    passed: int = 0  # copied through unscored (not at the requested temperatures)
    tokens: int = 0
    seconds: float = 0.0


def _read(path: str, model: str | None) -> list[tuple[int, dict]]:
    from tmcli.io.input_files import iter_lines

    out = []
    for source, line, raw in iter_lines(path):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TmcliError(f"{source}:{line}: not valid JSON",
                             hint="fix or delete that line") from None
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


def score(input: str, output: str | os.PathLike, *, model: str | None = None,
          temperatures: Sequence[float] | None = None, device: str = "auto",
          dtype: str = "auto", threads: int | None = None, batch: int = 64,
          engine: str = "transformers", gpu_memory_utilization: float | None = None,
          tensor_parallel_size: int = 1, progress: Progress | None = None
          ) -> ScoreSummary:
    """Add ``nll_token``/``nll_char`` to each record of ``input`` and append it to ``output``.

    With ``temperatures``, only records at those temperatures are scored; the others are copied
    through unchanged, so the output still holds every record. ``engine`` is ``transformers``
    (the model's forward) or ``vllm`` (its prompt logprobs). ``progress`` is told the
    completion tokens to score and those scored (a `tmcli.generation.progress.Progress`)."""
    from tmcli.io.outputs import same_file
    from tmcli.io.writer import RecordWriter

    loaded = None if isinstance(engine, str) else engine  # an engine to reuse (tests, notebooks)
    if loaded is None and engine not in ("transformers", "vllm"):
        raise TmcliError(f"score: unknown engine '{engine}'", hint="use transformers or vllm")
    out = Path(output)
    if input != "-" and same_file(input, out):
        raise TmcliError("score would overwrite its input", hint="write to another file with -o")
    records = _read(input, model)
    with RecordWriter(out) as writer:  # locked, its ids read; changed only by the first write
        return _score_into(writer, records, out, model=model, temperatures=temperatures,
                           device=device, dtype=dtype, threads=threads, batch=batch,
                           engine=engine, loaded=loaded,
                           gpu_memory_utilization=gpu_memory_utilization,
                           tensor_parallel_size=tensor_parallel_size, progress=progress)


def _score_into(writer, records, out: Path, *, model, temperatures, device, dtype, threads, batch,
                engine, loaded, gpu_memory_utilization, tensor_parallel_size,
                progress) -> ScoreSummary:
    """`score` once its output is open: what is done is skipped, the rest scored."""
    from tmcli.sources.models import load_model

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
    if loaded is None:  # an unknown model fails now: before torch, before any write
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
        if loaded is not None:
            if spec != loaded.spec:
                raise TmcliError(f"the engine given was loaded for {loaded.spec}, not {spec}")
            lm = loaded
        elif engine == "vllm":
            from tmcli.generation.engines import EngineOptions, load_engine

            longest = max(len(o["token_ids"]) + len(o.get("prompt_token_ids") or [])
                          for o in objs)
            lm = load_engine("vllm", spec, EngineOptions(
                device=device, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization, max_model_len=2 * longest + 16))
        else:
            lm = load_model(spec, device, dtype)
        if passed:  # the output changes only once a model has loaded
            writer.write(passed)
            passed = []
        try:
            _score_records(lm, spec, objs, batch, writer, summary, progress)
        finally:  # vLLM's worker processes end with its engine, also when scoring fails
            if loaded is None and engine == "vllm":
                lm.close()
        del lm
    summary.seconds = time.perf_counter() - started
    return summary


def _score_records(lm, spec: str, objs: list[dict], batch: int, writer, summary,
                   progress: Progress) -> None:
    """Score ``objs`` (records of model ``spec``) on ``lm`` in batches and write them."""
    from tmcli.measure.reencode import Reencoder
    from tmcli.measure.token_bytes import vocab_for

    vocab = vocab_for(lm.tokenizer)
    reencoder = Reencoder(vocab)
    for s in range(0, len(objs), batch):
        part = objs[s : s + batch]
        bad = next((o for o in part for t in o["token_ids"] + (o.get("prompt_token_ids") or [])
                    if not isinstance(t, int) or not 0 <= t < vocab.size), None)
        if bad is not None:
            raise TmcliError(f"record {bad['id']}: token id out of range for {spec}",
                             hint="score with the model that generated it (--model)")
        scored = score_many(lm, reencoder, [(o.get("prompt_token_ids") or [], o["token_ids"])
                                            for o in part])
        for o, (total, n) in zip(part, scored):
            chars = len(vocab.spell(o["token_ids"]).decode("utf-8", errors="replace"))
            o["nll_token"] = total / n if n else None
            o["nll_char"] = total / chars if chars else None
            o["nll_tokens"] = n
            o["nll_model"] = spec
            summary.tokens += n
        writer.write(part)
        summary.written += len(part)
        progress.advance(sum(len(o["token_ids"]) for o in part))
