"""Measuring records: each record's tokenizer chosen (`TokenizerPool`), its ids checked, and its
sample row measured in batches on every core (`tmcli.measure.parallel`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence

import polars as pl

from tmcli.errors import InvalidRecord, TmcliError
from tmcli.io.readers.base import Record
from tmcli.io.readers.openai import token_ids_from_logprobs
from tmcli.measure.alignment import Sample
from tmcli.measure.columns import MetricsBatch
from tmcli.measure.reencode import Reencoder
from tmcli.measure.sample_table import (
    RECORD_COLUMNS,
    SCORE_COLUMNS,
    TURN_COLUMNS,
    batch_frame,
    record_field,
)
from tmcli.measure.scored import divergence_columns
from tmcli.measure.text_quality import record_float


class TokenizerPool:
    """Chooses each record's tokenizer and keeps one Reencoder per tokenizer.

    ``tokenizer`` is None (use each record's own `tokenizer`/`model` field), one spec for all
    records, or a mapping {name in records: spec}.
    """

    def __init__(self, tokenizer: str | dict | None, *, window: int, context: bool,
                 chat_template: str | None = None):
        self.forced = tokenizer if isinstance(tokenizer, str) else None
        self.chat_template = chat_template  # a template file for trajectories (--chat-template)
        self.mapping = tokenizer if isinstance(tokenizer, dict) else {}
        self.window = window
        self.context = context
        self._encoders: dict[str, Reencoder] = {}
        self._failed: dict[str, TmcliError] = {}
        self._seen_names: dict[str, int] = {}
        self._model_tok: dict[str, str] = {}

    def spec_for(self, rec: Record) -> str:
        name = rec.meta.get("tokenizer") or rec.meta.get("model")
        if isinstance(name, str) and ("\x00" in name or len(name) > 4096):
            field = "tokenizer" if rec.meta.get("tokenizer") else "model"
            raise InvalidRecord(rec.source, rec.line, f"'{field}' is not a usable name "
                                "(a NUL character, or over 4096 characters)",
                                hint="fix the field, or pass --tokenizer")
        if isinstance(name, str) and name:
            model = rec.meta.get("model")
            if isinstance(model, str):
                prev = self._model_tok.setdefault(model, name)
                if prev != name:
                    raise InvalidRecord(rec.source, rec.line,
                                        f"model '{model}' appears with tokenizers '{prev}' and '{name}'",
                                        hint="fix the records' tokenizer field")
            first = self._seen_names.setdefault(name, rec.line)
            if self.forced and len(self._seen_names) > 1 and first == rec.line:
                other = next(n for n in self._seen_names if n != name)
                raise InvalidRecord(  # the option is wrong, not the line: never skipped
                    rec.source, rec.line,
                    f"file mixes tokenizers '{other}' and '{name}' but --tokenizer forces one",
                    hint="split the file, drop --tokenizer, or map each: --tokenizer NAME=SPEC",
                    skippable=False,
                )
        if self.forced:
            return self.forced
        if isinstance(name, str) and name:
            return self.mapping.get(name, name)
        raise InvalidRecord(rec.source, rec.line, "record names no tokenizer or model",
                            hint="pass --tokenizer (an alias, path, GGUF file or hub id)")

    def user_given(self, spec: str) -> bool:
        """Whether ``spec`` came from --tokenizer (else from a record's own field)."""
        return spec == self.forced or spec in self.mapping.values()

    def encoder(self, spec: str) -> Reencoder:
        enc = self._encoders.get(spec)
        if enc is None:
            if spec in self._failed:  # each record naming it fails alike, without a retry
                raise self._failed[spec]
            from tmcli.measure.token_bytes import vocab_for

            try:
                enc = Reencoder(vocab_for(spec), window=self.window, context=self.context)
            except Exception as exc:
                if not isinstance(exc, TmcliError):
                    if self.user_given(spec) or not _is_local(spec):
                        raise
                    # a record's field named a local file: whatever it holds, say only that
                    from tmcli.sources.tokenizers import not_a_tokenizer

                    exc = not_a_tokenizer(spec, "it does not load as one")
                self._failed[spec] = exc
                raise exc from None
            self._encoders[spec] = enc
        return enc


def _is_local(spec: str) -> bool:
    import os

    return os.path.lexists(os.path.expanduser(spec))


def record_temperature(rec: Record) -> float | None:
    """The record's sampling temperature (``temperature``, else ``sampling.temperature``): a
    number >= 0, or None when it has none (absent or null). Anything else is an invalid line,
    never coerced: a string, a list or ``true`` is not a temperature."""
    meta, where = rec.meta, "temperature"
    temp = meta.get("temperature")
    if temp is None and isinstance(meta.get("sampling"), dict):
        temp, where = meta["sampling"].get("temperature"), "sampling.temperature"
    if temp is None:
        return None
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp >= 0 \
            or temp == float("inf"):
        shown = repr(temp) if isinstance(temp, (int, float, str)) else type(temp).__name__
        raise InvalidRecord(rec.source, rec.line,
                            f"'{where}' is {shown[:40]}, not a temperature",
                            hint="a temperature is a number >= 0 (0 is greedy), or null when "
                            "unknown")
    return float(temp)


def _prepare(rec: Record, pool: TokenizerPool) -> tuple[str, Reencoder, Sample]:
    spec = pool.spec_for(rec)
    record_temperature(rec)
    try:
        enc = pool.encoder(spec)
    except TmcliError as exc:
        if pool.user_given(spec):  # the option is wrong, not this record
            raise
        raise InvalidRecord(rec.source, rec.line, f"its tokenizer: {exc.message}",
                            hint=f"{exc.hint + '; ' if exc.hint else ''}or pass --tokenizer"
                            ) from None
    ids = (rec.token_ids if rec.token_ids is not None
           else token_ids_from_logprobs(rec, enc.vocab, spec))
    if not ids:
        raise InvalidRecord(rec.source, rec.line, "empty completion (no generated ids)",
                            hint="drop the line")
    for name, seq in (("token_ids", ids), ("prompt_token_ids", rec.prompt_ids or [])):
        bad = enc.invalid_id(seq)
        if bad is not None:  # ids the tokenizer lacks are measured (unknown_id), not refused
            raise InvalidRecord(rec.source, rec.line,
                                f"{name} holds {bad}, which cannot be a token id",
                                hint="token ids are integers from 0 to 2**31 - 1")
    return spec, enc, Sample(ids, rec.prompt_ids)


def _setting(meta: dict, name: str, kind: type):
    """A sampling setting from the record's top level, else its ``sampling`` object."""
    value = meta.get(name)
    if value is None and isinstance(meta.get("sampling"), dict):
        value = meta["sampling"].get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)


def _record_columns(batch: list, fields: Sequence[str] = ()) -> dict[str, list]:
    """The record's own columns of the per-sample table (`RECORD_COLUMNS`, `SCORE_COLUMNS`, and
    `TURN_COLUMNS` for a sampled turn of a trajectory, see `tmcli.measure.turns`), and the record
    ``fields`` a user groups by (`sample_table.record_field`)."""
    own = [f for f in fields if f not in RECORD_COLUMNS]
    cols: dict[str, list] = {name: [] for name in (*RECORD_COLUMNS, *SCORE_COLUMNS,
                                                   *TURN_COLUMNS, *own)}
    for rec, spec, _smp in batch:
        meta = rec.meta
        index = meta.get("prompt_index")  # a whole number (true is not an index)
        for name, value in (
                ("id", rec.id if rec.id_given else None), ("source", rec.source), ("line", rec.line),
                ("model", str(meta.get("model") or spec)), ("tokenizer", spec),
                ("temperature", record_temperature(rec)),
                ("top_k", _setting(meta, "top_k", int)),
                ("top_p", _setting(meta, "top_p", float)),
                ("min_p", _setting(meta, "min_p", float)),
                ("canonical", str(meta.get("canonical") or "off")),
                ("prompt_index", index if isinstance(index, int) and not isinstance(index, bool)
                 else None),
                ("nll_token", record_float(meta.get("nll_token"))),
                ("nll_char", record_float(meta.get("nll_char")))):
            cols[name].append(value)
        for name, value in divergence_columns(meta.get("divergence")).items():
            cols[name].append(value)  # score --divergence's figures (nulls: not scored)
        turn = rec.turn.row() if rec.turn is not None else {}
        for name in TURN_COLUMNS:
            cols[name].append(turn.get(name, [] if name == "drift_spans" else None))
        for name in own:
            cols[name].append(record_field(meta, name))
    return cols


def _skip_or_raise(exc: InvalidRecord, skip_invalid: bool, errors: list) -> None:
    """Count a skippable invalid record under ``skip_invalid``; raise anything else."""
    if not (skip_invalid and exc.skippable):
        raise exc
    errors.append(exc)


def measure_records(records: Iterable[Record], pool: TokenizerPool, *, method: str,
                    batch_size: int, skip_invalid: bool, errors: list,
                    examples: list | None = None, n_examples: int = 0,
                    jobs: int | None = None, fields: Sequence[str] = ()) -> Iterator[pl.DataFrame]:
    """Yield one DataFrame of sample rows per batch of records (batches of one tokenizer).
    ``fields``: record fields carried into the rows as they are (`sample_table.record_field`),
    beyond the table's own columns (what a user groups by: ``checkpoint``, ``step``)."""
    from tmcli.measure.parallel import Measurer
    from tmcli.measure.turns import expand

    records = expand(records, pool, skip_invalid=skip_invalid, errors=errors)
    measurer = Measurer(pool.window, pool.context, method, jobs=jobs)
    pending: dict[str, list] = {}
    counter = 0

    def emit(batch: list, metrics: MetricsBatch) -> pl.DataFrame:
        nonlocal counter
        if n_examples and examples is not None:
            for i in metrics.noncanonical():
                m = metrics.measured[i]
                counter += 1
                key = (m.noncanonical_tokens, m.n_spans, -counter)
                if len(examples) < n_examples or key > examples[0][0]:
                    rec, spec, smp = batch[i]
                    item = (key, rec, spec, smp, metrics.row(i))
                    if len(examples) < n_examples:
                        heapq.heappush(examples, item)
                    else:
                        heapq.heapreplace(examples, item)
        return batch_frame(_record_columns(batch, fields), metrics, fields)

    def submit(spec: str):
        batch = pending.pop(spec)
        for done, metrics in measurer.submit(spec, [smp for _r, _s, smp in batch], batch):
            yield emit(done, metrics)

    try:
        for rec in records:
            try:
                spec, _enc, smp = _prepare(rec, pool)
            except InvalidRecord as exc:
                _skip_or_raise(exc, skip_invalid, errors)
                continue
            pending.setdefault(spec, []).append((rec, spec, smp))
            if len(pending[spec]) >= batch_size:
                yield from submit(spec)
        for spec in list(pending):
            yield from submit(spec)
        for done, metrics in measurer.drain():
            yield emit(done, metrics)
    finally:
        measurer.close()
