"""`generate --data-parallel-size N` on Ray: N replicas of one engine, one writer.

The driver (the `generate` process) plans exactly what a single process plans: the same jobs,
record ids and row seeds, minus the ids already in the output. It then shards the rows
deterministically over N replicas (`shard`: each prompt's rows together, longest prompts first
to the replica with the least work), and each replica (a Ray actor holding one engine of any
kind: fused, transformers, or vLLM with its own tensor-parallel size and the GPUs it needs)
decodes its shard batch by batch with `sweep._sweep`, the single-process code (given by the
caller, `sweep.decode_unit`, so this module does not import the sweep). Each batch's
records come back to the driver, whose one `RecordWriter` appends and fsyncs them, so the output
is the same set of records one process writes (in another order) and resumes the same way.

Failures: a replica whose process dies is restarted by Ray (``max_restarts``) and its unfinished
batch retried there (``max_task_retries``); a replica lost for good (its restarts spent, its node
gone) hands its unfinished batches to the others. A batch's records are written only when the
batch comes back whole, and never twice (the writer also refuses ids already in the file), so a
crash loses at most the batches in flight and duplicates nothing. A crash of the driver loses
the batches in flight; rerunning the command resumes from what is in the file.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from tmcli.errors import TmcliError, one_line
from tmcli.generation.engines import EngineOptions

RESTARTS = 2  # per replica: Ray restarts a dead replica and retries its batch this many times
IN_FLIGHT = 2  # batches queued on a replica, so it never waits for the driver between batches


def shard(jobs: list, lengths: dict[int, int], n: int, max_new_tokens: int) -> list[list]:
    """The rows of each replica: each prompt's rows stay together (one prefill serves all its
    temperatures), prompts longest first, each to the replica with the least work so far
    (prompt + new tokens per row; ties to the lowest replica). A function of the rows alone,
    so the same command always gives the same shards. Replicas left without rows are dropped."""
    by_prompt: dict[int, list] = {}
    for job in jobs:
        by_prompt.setdefault(job.prompt.index, []).append(job)
    load = [0] * n
    shards: list[list] = [[] for _ in range(n)]
    for index in sorted(by_prompt, key=lambda i: (-lengths[i], i)):
        k = min(range(n), key=lambda r: (load[r], r))
        shards[k].extend(by_prompt[index])
        load[k] += len(by_prompt[index]) * (lengths[index] + max_new_tokens)
    return [s for s in shards if s]


class Replica:
    """One engine on a Ray worker (the class `ray.remote` wraps). The engine loads on first use,
    so a replica Ray restarts after a crash reloads it before the batch it retries."""

    def __init__(self, engine: str, spec: str, options: EngineOptions, resolved: str,
                 registered: str | type, decode: Callable):
        self.args = (engine, spec, options, resolved, registered)
        self.decode_unit = decode
        self.engine = None
        self.tok = None

    def _engine(self):
        if self.engine is None:
            from tmcli.generation.engines import ENGINES, load_engine, register_engine
            from tmcli.sources.tokenizers import load_tokenizer

            engine, spec, options, resolved, registered = self.args
            if resolved not in ENGINES:  # registered in the driver only (`register_engine`)
                register_engine(resolved, registered)
            self.engine = load_engine(engine, spec, options, resolved=resolved)
            self.tok = load_tokenizer(self.engine.tokenizer)
        return self.engine

    def load(self) -> dict:
        eng = self._engine()
        return {"pid": os.getpid(), "engine": eng.name, "device": eng.device}

    def batch_size(self, longest: int, requested: int | None, rows: int) -> int:
        return self._engine().batch_size(longest, requested, rows)

    def decode(self, jobs: list, ids: dict[int, list[int]], sweep: dict) -> tuple[list[dict], int]:
        """One batch's records, made by the single-process sweep; and its new tokens."""
        eng = self._engine()
        return self.decode_unit(eng, self.tok, jobs, ids, sweep)


@dataclass
class _Unit:
    """One batch of rows, and how many replicas it has outlived."""

    jobs: list
    ids: dict[int, list[int]]
    lost: int = 0


def replica_device(ray, device: str) -> str:
    """``auto`` on Ray means the cluster's accelerators, not the driver's: cuda when the
    cluster has GPUs, else cpu."""
    if device != "auto":
        return device
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def _placement(ray, name: str, options: EngineOptions, n: int) -> tuple[dict, int | None]:
    """Ray resources per replica, and the CPU threads its engine may use: on GPUs, the GPUs
    its engine needs (vLLM: its tensor-parallel size); on CPUs, an equal share of the cores
    that fits on one node (``--threads`` when given)."""
    kind = "GPU" if options.device == "cuda" else "CPU"
    nodes = [int(node["Resources"].get(kind, 0)) for node in ray.nodes() if node.get("Alive")]
    total = int(ray.cluster_resources().get(kind, 0))
    if kind == "GPU":
        need, threads = (options.tensor_parallel_size if name == "vllm" else 1), options.threads
    else:
        need = threads = options.threads or max(1, min(total // n, max(nodes, default=1)))
    # Ray would wait for ever for what no node has: say so instead
    if need > max(nodes, default=0):
        raise TmcliError(f"a replica needs {need} {kind}s, and the largest node of the Ray "
                         f"cluster has {max(nodes, default=0)}",
                         hint="use a smaller --tensor-parallel-size (a replica lives on one node)"
                         if kind == "GPU" else "use fewer --threads")
    if need * n > total:
        raise TmcliError(f"{n} replicas of {need} {kind}(s) need {need * n}, and the Ray cluster "
                         f"has {total}", hint="use a smaller --data-parallel-size")
    return ({"num_cpus": 1, "num_gpus": need} if kind == "GPU" else {"num_cpus": need}), threads


def _get(ray, ref):
    """``ray.get``, with a tmcli error raised in the replica raised here as itself."""
    from tmcli.measure.ray_udf import user_error

    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError:
        raise
    except ray.exceptions.RayError as exc:
        err = user_error(exc)
        if err is not None:
            raise err from None
        raise


def run_replicated(engine: str, spec: str, options: EngineOptions, jobs: list,
                   ids: dict[int, list[int]], writer, summary, progress, *, replicas: int,
                   plan: Callable, decode: Callable, sweep: dict, resolved: str) -> None:
    """Decode ``jobs`` of model ``spec`` on ``replicas`` Ray actors (Ray must be running: see
    `tmcli.measure.ray_udf.ray_session`), writing each batch's records with ``writer``.
    ``plan(jobs, lengths, size)`` cuts a shard into batches and ``decode(engine, tokenizer,
    jobs, ids, sweep)`` turns one into records on a replica (`sweep._batches` and
    `sweep.decode_unit`, given by the caller); ``sweep``: `sweep._sweep`'s keyword arguments.
    ``resolved``: the registered engine ``engine`` stands for (`resolve_engine`), sent to the
    replicas with its registry entry, so an engine registered here loads there too."""
    import ray

    from tmcli.generation.engines import ENGINES

    note = progress.note
    max_new = sweep["max_new_tokens"]
    lengths = {k: len(v) for k, v in ids.items()}
    shards = shard(jobs, lengths, replicas, max_new)
    resources, threads = _placement(ray, resolved, options, len(shards))
    options = replace(options, threads=threads, data_parallel_size=1)
    remote = ray.remote(Replica).options(max_restarts=RESTARTS, max_task_retries=RESTARTS,
                                         **resources)
    progress.describe(f"loading {spec} on {len(shards)} replicas")
    started = time.perf_counter()
    actors = [remote.remote(engine, spec, options, resolved, ENGINES[resolved], decode)
              for _ in shards]
    try:
        try:  # all replicas load at once
            loaded = [_get(ray, ref) for ref in [a.load.remote() for a in actors]]
            sizes = [_get(ray, ref) for ref in [
                a.batch_size.remote(sweep["longest"], sweep["batch_size"], len(s))
                for a, s in zip(actors, shards)]]
        except ray.exceptions.RayActorError as exc:
            raise TmcliError(f"a replica of {spec} died while loading ({one_line(exc, 160)})",
                             hint="out of memory? use a smaller --data-parallel-size; the "
                                  "reason is in /tmp/ray/session_latest/logs") from None
        summary.load_seconds += time.perf_counter() - started
        queues = [deque(_Unit(b, {j.prompt.index: ids[j.prompt.index] for j in b})
                        for b in plan(s, lengths, size)) for s, size in zip(shards, sizes)]
        progress.describe(f"{spec} ({loaded[0]['engine']}, {len(actors)} replicas)")
        started = time.perf_counter()
        _dispatch(ray, actors, queues, writer, summary, progress, note, sweep, max_new)
        summary.seconds += time.perf_counter() - started
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _dispatch(ray, actors, queues, writer, summary, progress, note, sweep, max_new) -> None:
    """Keep `IN_FLIGHT` batches on every live replica; write each batch that comes back; hand
    the batches of a replica lost for good to the others."""
    alive = set(range(len(actors)))
    flying: dict = {}  # ObjectRef -> (replica, unit)

    def fill():
        for i in sorted(alive):
            while queues[i] and sum(1 for r, _u in flying.values() if r == i) < IN_FLIGHT:
                unit = queues[i].popleft()
                flying[actors[i].decode.remote(unit.jobs, unit.ids, sweep)] = (i, unit)

    fill()
    while flying:
        [ref], _ = ray.wait(list(flying), num_returns=1)
        i, unit = flying.pop(ref)
        try:
            records, tokens = _get(ray, ref)
        except ray.exceptions.RayActorError as exc:
            _lost(i, unit, alive, queues, note, exc)
        else:
            summary.written += writer.write(records)
            summary.new_tokens += tokens
            progress.advance(len(unit.jobs) * max_new)
        fill()


def _lost(i: int, unit: _Unit, alive: set, queues: list, note, exc) -> None:
    """Replica ``i`` is gone for good: its batches (``unit`` and those queued) go to the others."""
    unit.lost += 1
    if unit.lost > 1:
        raise TmcliError(f"a batch of {len(unit.jobs)} rows was lost with two replicas "
                         f"({one_line(exc, 160)})",
                         hint="the batch may crash its replica (memory?): try a smaller "
                              "--batch-size; rerunning the command resumes") from None
    orphans = [unit]
    if i in alive:
        alive.discard(i)
        orphans += list(queues[i])
        queues[i].clear()
        note(f"replica {i} was lost ({one_line(exc, 120)}); its unfinished batches go to "
             f"the {len(alive)} replica(s) left")
    if not alive:
        raise TmcliError("every replica was lost", hint="see the Ray logs (/tmp/ray/session_latest"
                         "/logs); rerunning the command resumes") from None
    for orphan in orphans:
        queues[min(alive, key=lambda r: (len(queues[r]), r))].append(orphan)
