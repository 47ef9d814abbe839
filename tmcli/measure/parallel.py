"""Measuring batches of samples on every core, results in input order.

Re-encoding is CPU-bound Python + Rust work. The first batches are measured in-process, which
builds the tokenizer tables and warms the per-piece cache; later batches go to worker processes
forked from this one (on Linux), so they start with those tables and caches at no cost. Where
fork is unavailable, or with one core, everything stays in-process.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator

from tmcli.measure.alignment import Sample
from tmcli.measure.metrics import SampleMetrics
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
                  method: str) -> list[SampleMetrics]:
    """Worker entry point: metrics for samples of one tokenizer, text-quality proxies and span
    causes included (all per sample, so all done where the work is spread over the cores)."""
    from tmcli.measure.causes import sample_causes
    from tmcli.measure.text_quality import text_metrics

    enc = _encoder(spec, window, context)
    out = enc.measure(samples, method=method)
    for m, s in zip(out, samples):
        m.update(text_metrics(enc.vocab.spell(s.token_ids), len(s.token_ids)))
        m.causes = sample_causes(enc.vocab, m)
    return out


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
        pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork"))
        pool.submit(int, 0).result()  # start the workers now, under the filter
    return pool


def default_jobs() -> int:
    env = os.environ.get("TMCLI_JOBS")
    if env and env.isdigit():
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


class Measurer:
    """Submit (spec, samples) batches; iterate results in submission order."""

    def __init__(self, window: int, context: bool, method: str, *, jobs: int | None = None,
                 inline_batches: int = 2):
        self.window, self.context, self.method = window, context, method
        self.jobs = default_jobs() if jobs is None else max(1, jobs)
        self.inline_batches = inline_batches
        self._submitted = 0
        self._pool = None
        self._pending: deque = deque()

    def submit(self, spec: str, samples: list[Sample], tag) -> Iterator[tuple[object, list[dict]]]:
        """Queue a batch; yields the (tag, metrics) of batches that are complete, in order."""
        self._submitted += 1
        if self.jobs == 1 or self._submitted <= self.inline_batches:
            yield from self.drain()
            yield tag, measure_batch(spec, samples, self.window, self.context, self.method)
            return
        if self._pool is None:
            self._pool = _fork_pool(self.jobs)
        if self._pool is None:
            yield from self.drain()
            yield tag, measure_batch(spec, samples, self.window, self.context, self.method)
            return
        fut = self._pool.submit(measure_batch, spec, samples, self.window, self.context,
                                self.method)
        self._pending.append((tag, fut))
        while len(self._pending) > 2 * self.jobs:
            t, f = self._pending.popleft()
            yield t, f.result()

    def drain(self) -> Iterator[tuple[object, list[dict]]]:
        while self._pending:
            t, f = self._pending.popleft()
            yield t, f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
