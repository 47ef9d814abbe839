"""Trajectories in `analyze`, `check`, `diff` and `filter`: each trajectory record is checked for
drift (`tmcli.measure.trajectory`) and becomes one record per sampled turn, measured as any
completion is (its ids in the context of the ids before it) and carrying its trajectory's
verdict (`TurnColumns`), so every later stage works on turns as on any sample.

A turn's context starts at the last special token before it: the measurement re-encodes the text
between special tokens on its own, so that gives the same spans as the whole conversation
before it, without re-encoding it for every turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from tmcli.errors import InvalidRecord, TmcliError
from tmcli.io.readers.base import Record, TurnColumns

BATCH = 32  # trajectories rendered, then encoded in one call


def _turn_records(rec: Record, check, vocab) -> list[Record]:
    ids = list(rec.prompt_ids or []) + list(rec.token_ids or [])
    special = np.zeros(len(ids), dtype=bool)
    arr = np.asarray(ids, dtype=np.int64)
    inside = (arr >= 0) & (arr < vocab.size)
    special[inside] = vocab.special[arr[inside]]
    spans = [{"position": s.position, "sampled": s.sampled, "rendered": s.rendered,
              "message": s.message, "cause": s.cause} for s in check.spans]
    out = []
    for k, turn in enumerate(check.turns):
        before = np.flatnonzero(special[: turn.start])
        context = int(before[-1]) if len(before) else 0
        cols = TurnColumns(rec.id, k, len(check.turns), turn.message, check.drift,
                           check.message, check.cause, check.turn, check.position,
                           spans if check.turn == k else [])
        out.append(Record(rec.source, rec.line, f"{rec.id}/turn{k}", ids[turn.start : turn.end],
                          ids[context : turn.start], rec.meta, turn=cols))
    return out


def _invalid(rec: Record, exc: TmcliError, user_given: bool) -> TmcliError:
    """A trajectory's failure as that record's error (--skip-invalid counts it), except where
    an option is at fault (a tokenizer or template the user gave)."""
    if isinstance(exc, InvalidRecord):
        return exc
    from tmcli.measure.trajectory import TrajectoryError

    if user_given and not isinstance(exc, TrajectoryError):
        return exc
    return InvalidRecord(rec.source, rec.line, f"trajectory: {exc.message}",
                         hint=f"{exc.hint + '; ' if exc.hint else ''}or pass --skip-invalid "
                         "to skip such records")


def _unusable(rec: Record, exc: Exception) -> InvalidRecord:
    from tmcli.errors import one_line

    return InvalidRecord(rec.source, rec.line, f"unusable trajectory ({type(exc).__name__}: "
                         f"{one_line(exc, 160, ellipsis=False)})",
                         hint="fix or drop the line, or pass --skip-invalid to skip such lines")


def expand(records: Iterable[Record], pool, *, skip_invalid: bool,
           errors: list) -> Iterator[Record]:
    """``records`` in order, each trajectory replaced by its sampled turns (checked in batches
    of `BATCH`; other records pass straight through when none is waiting); a trajectory that
    cannot be checked raises, or with ``skip_invalid`` goes to ``errors``. A bad line in the
    input raises after what was read before it."""
    buffer: list[Record] = []
    waiting = 0
    records = iter(records)
    while True:
        try:
            rec = next(records)
        except StopIteration:
            break
        except InvalidRecord:
            yield from _flush(buffer, pool, skip_invalid, errors)
            raise
        if rec.trajectory is None and not buffer:
            yield rec
            continue
        buffer.append(rec)
        waiting += rec.trajectory is not None
        if waiting >= BATCH or len(buffer) >= 4 * BATCH:
            yield from _flush(buffer, pool, skip_invalid, errors)
            buffer, waiting = [], 0
    yield from _flush(buffer, pool, skip_invalid, errors)


def _flush(buffer: list[Record], pool, skip_invalid: bool, errors: list) -> Iterator[Record]:
    from tmcli.measure import chat_render, trajectory

    results: dict[int, tuple | TmcliError] = {}
    by_spec: dict[str, list] = {}
    for k, rec in enumerate(buffer):
        if rec.trajectory is None:
            continue
        spec = None
        try:
            spec = pool.spec_for(rec)
            renderer, vocab = chat_render.renderer_for(spec, template_file=pool.chat_template)
        except TmcliError as exc:
            results[k] = _invalid(rec, exc, spec is not None and pool.user_given(spec))
            continue
        t = rec.trajectory
        try:  # what the record holds: a failure here is the record's
            pend = trajectory.prepare(renderer, t.messages, rec.prompt_ids or [],
                                      rec.token_ids or [], t.mask, tools=t.tools,
                                      kwargs=t.template_kwargs)
            by_spec.setdefault(spec, []).append((k, pend, renderer, vocab))
        except TmcliError as exc:
            results[k] = _invalid(rec, exc, False)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            results[k] = _unusable(rec, exc)
    for items in by_spec.values():
        renderer = items[0][2]
        encoded = renderer.encode([pend.text for _k, pend, _r, _v in items])
        for (k, pend, _r, vocab), ids in zip(items, encoded):
            try:
                results[k] = (trajectory.finish(pend, ids, renderer, vocab), vocab)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                results[k] = _unusable(buffer[k], exc)
    for k, rec in enumerate(buffer):
        if rec.trajectory is None:
            yield rec
            continue
        got = results[k]
        if isinstance(got, tuple):
            yield from _turn_records(rec, *got)
            continue
        if not skip_invalid or not isinstance(got, InvalidRecord):
            raise got
        errors.append(got)
