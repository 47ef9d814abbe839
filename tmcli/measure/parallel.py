"""Measuring batches of samples on every core, results in input order.

Re-encoding is CPU-bound Python + Rust work. Batches go to worker processes forked from this
one (on Linux) as soon as there is one for each worker; the tokenizer tables are built here
first, so every worker starts with them at no cost, and no batch is measured here while workers
could share it. Where fork is unavailable, with one core, or with a single batch, everything
stays in-process.

Workers are bounded: never more than the cores this process may use (``TMCLI_JOBS`` lowers
that; a value that is not a positive whole number is refused), and never more than there are
batches to measure (a small input forks no pool at all). Workers ignore Ctrl-C; the main process
sees it within `_WAIT_SECONDS` even while it waits for a result, and then stops every worker.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator

from tmcli.measure.alignment import Sample
from tmcli.measure.columns import MetricsBatch
from tmcli.measure.reencode import Reencoder

_WORKER_ENCODERS: dict[tuple, Reencoder] = {}


def _encoder(spec: str, window: int, context: bool) -> Reencoder:
    key = (spec, window, context)
    enc = _WORKER_ENCODERS.get(key)
    if enc is None:
        from tmcli.measure.token_bytes import vocab_for

        enc = _WORKER_ENCODERS[key] = Reencoder(vocab_for(spec), window=window, context=context)
    return enc


def measure_batch(spec: str, samples: list[Sample], window: int, context: bool,
                  method: str) -> MetricsBatch:
    """Worker entry point: metrics for samples of one tokenizer, text-quality proxies and span
    causes included (all per sample, so all done where the work is spread over the cores), as
    columns (cheap to send back: canonical samples are a length each)."""
    from tmcli.measure.causes import sample_causes
    from tmcli.measure.text_quality import text_columns

    enc = _encoder(spec, window, context)
    batch, datas = enc.measure_batch(samples, method=method)
    for name, values in text_columns(datas, batch.n_tokens.tolist()).items():
        batch.set_column(name, values)
    for m in batch.measured.values():
        m.causes = sample_causes(enc.vocab, m)
    return batch


def _worker_init() -> None:
    """In each worker: Ctrl-C is the main process's to handle (it stops the workers); SIGTERM
    (how they are stopped) ends them at once."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Longest wait on a worker's result before Python looks at signals again (a blocked wait would
# miss a Ctrl-C handled by another thread).
_WAIT_SECONDS = 0.2


def _result(fut):
    while True:
        try:
            return fut.result(timeout=_WAIT_SECONDS)
        except TimeoutError:
            continue


def _fork_pool(jobs: int):
    """A pool of forked workers, or None where fork isn't available."""
    import multiprocessing as mp
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    if "fork" not in mp.get_all_start_methods():
        return None
    # Workers run no tokenizer thread pool of their own (they are the parallelism), and polars
    # is never used in them, so its fork warning does not apply.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork"),
                                   initializer=_worker_init)
        pool.submit(int, 0).result()  # start the workers now, under the filter
    return pool


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_jobs(jobs, where: str = "jobs") -> int:
    """A worker count: a positive whole number, capped at the available cores."""
    from tmcli.errors import TmcliError

    cores = available_cores()
    try:
        n = int(str(jobs).strip()) if not isinstance(jobs, bool) else 0
    except ValueError:
        n = 0
    if n < 1:
        raise TmcliError(f"{where}={jobs!r} is not a number of worker processes",
                         hint=f"give a whole number from 1 to {cores} (the cores here), or unset "
                         "it to use them all")
    return min(n, cores)


def default_jobs() -> int:
    """``TMCLI_JOBS`` (checked, capped at the cores), else the cores, at most 8."""
    env = os.environ.get("TMCLI_JOBS")
    if env is not None and env.strip():
        return check_jobs(env, "TMCLI_JOBS")
    return min(available_cores(), 8)


class Measurer:
    """Submit (spec, samples) batches; iterate results in submission order."""

    def __init__(self, window: int, context: bool, method: str, *, jobs: int | None = None):
        self.window, self.context, self.method = window, context, method
        self.jobs = default_jobs() if jobs is None else check_jobs(jobs)
        self._pool = None
        self._waiting: list = []  # batches held until there is work for a pool (or the end)
        self._pending: deque = deque()

    def _inline(self, spec: str, samples: list[Sample]) -> MetricsBatch:
        return measure_batch(spec, samples, self.window, self.context, self.method)

    def _start(self, workers: int) -> None:
        """Fork ``workers`` processes and hand them the batches waiting; without fork (or with
        a single batch) the waiting batches are measured here, in order."""
        if workers > 1:
            from tmcli.measure.token_bytes import vocab_for

            for spec in {spec for _tag, spec, _samples in self._waiting}:
                vocab_for(spec).plain_bytes()  # built once here, inherited by every worker
            self._pool = _fork_pool(workers)
        waiting, self._waiting = self._waiting, []
        for tag, spec, samples in waiting:
            if self._pool is None:
                self._pending.append((tag, None, (spec, samples)))
            else:
                fut = self._pool.submit(measure_batch, spec, samples, self.window, self.context,
                                        self.method)
                self._pending.append((tag, fut, None))

    def _take(self) -> tuple[object, MetricsBatch]:
        tag, fut, job = self._pending.popleft()
        return tag, (_result(fut) if fut is not None else self._inline(*job))

    def submit(self, spec: str, samples: list[Sample], tag) -> Iterator[tuple[object, MetricsBatch]]:
        """Queue a batch; yields the (tag, metrics) of batches that are complete, in order."""
        if self.jobs == 1:
            yield from self.drain()
            yield tag, self._inline(spec, samples)
            return
        if self._pool is None:  # a pool only once there is a batch for each worker
            self._waiting.append((tag, spec, samples))
            if len(self._waiting) < self.jobs:
                return
            self._start(self.jobs)
            if self._pool is None:  # no fork here: measured in-process
                yield from self.drain()
            return
        fut = self._pool.submit(measure_batch, spec, samples, self.window, self.context,
                                self.method)
        self._pending.append((tag, fut, None))
        while len(self._pending) > 2 * self.jobs:
            yield self._take()

    def drain(self) -> Iterator[tuple[object, MetricsBatch]]:
        if self._waiting:  # the input ended before every worker had a batch
            self._start(min(self.jobs, len(self._waiting)))
        while self._pending:
            yield self._take()

    def close(self) -> None:
        """Stop the workers. Unfinished work (an error, Ctrl-C, a reader that stopped early)
        is not waited for: the workers are terminated."""
        pool, self._pool = self._pool, None
        unfinished = any(fut is not None and not fut.done() for _t, fut, _j in self._pending)
        self._pending.clear()
        self._waiting.clear()
        if pool is None:
            return
        if unfinished:
            stop = getattr(pool, "terminate_workers", None)  # Python 3.14
            if stop is not None:
                stop()
            else:
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
