"""Measuring records: each record's tokenizer chosen (`TokenizerPool`), its ids checked, and its
sample row measured in batches on every core (`tmcli.measure.parallel`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

import polars as pl

from tmcli.errors import InvalidRecord, TmcliError, one_line
from tmcli.io.readers.base import Record
from tmcli.io.readers.openai import token_ids_from_logprobs
from tmcli.measure.alignment import Sample
from tmcli.measure.metrics import SampleMetrics
from tmcli.measure.reencode import Reencoder
from tmcli.measure.sample_table import rows_to_frame
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
                raise InvalidRecord(
                    rec.source, rec.line,
                    f"file mixes tokenizers '{other}' and '{name}' but --tokenizer forces one",
                    hint="split the file, drop --tokenizer, or map each: --tokenizer NAME=SPEC",
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
            except TmcliError as exc:
                self._failed[spec] = exc
                raise
            self._encoders[spec] = enc
        return enc


def _prepare(rec: Record, pool: TokenizerPool) -> tuple[str, Reencoder, Sample]:
    spec = pool.spec_for(rec)
    try:
        enc = pool.encoder(spec)
    except TmcliError as exc:
        if pool.user_given(spec):  # the option is wrong, not this record
            raise
        raise InvalidRecord(rec.source, rec.line, f"its tokenizer: {exc.message}",
                            hint=f"{exc.hint + '; ' if exc.hint else ''}or pass --tokenizer, or "
                            "--skip-invalid to skip such records") from None
    ids = (rec.token_ids if rec.token_ids is not None
           else token_ids_from_logprobs(rec, enc.vocab, spec))
    if not ids:
        raise InvalidRecord(rec.source, rec.line, "empty completion (no generated ids)",
                            hint="drop the line, or pass --skip-invalid")
    for name, seq in (("token_ids", ids), ("prompt_token_ids", rec.prompt_ids or [])):
        bad = enc.invalid_id(seq)
        if bad is not None:  # ids the tokenizer lacks are measured (unknown_id), not refused
            raise InvalidRecord(rec.source, rec.line,
                                f"{name} holds {bad}, which cannot be a token id",
                                hint="token ids are integers from 0 to 2**31 - 1")
    return spec, enc, Sample(ids, rec.prompt_ids)


def _row(rec: Record, spec: str, metrics: SampleMetrics) -> dict:
    meta = rec.meta
    temp = meta.get("temperature")
    if temp is None and isinstance(meta.get("sampling"), dict):
        temp = meta["sampling"].get("temperature")
    row = {
        "id": rec.id, "source": rec.source, "line": rec.line,
        "model": str(meta.get("model") or spec), "tokenizer": spec,
        "temperature": float(temp) if isinstance(temp, (int, float)) else None,
        "canonical": str(meta.get("canonical") or "off"),
        "prompt_index": meta.get("prompt_index") if isinstance(meta.get("prompt_index"), int) else None,
        "nll_token": record_float(meta.get("nll_token")),
        "nll_char": record_float(meta.get("nll_char")),
    }
    row.update(divergence_columns(meta.get("divergence")))
    row.update(metrics.columns())
    if rec.turn is not None:  # a sampled turn of a trajectory (tmcli.measure.turns)
        row.update(rec.turn.row())
    return row


def _as_invalid(rec: Record, exc: Exception) -> InvalidRecord | None:
    """Any failure to prepare one record as that record's error (so --skip-invalid skips it);
    None for those that are not the record's fault (OS errors, options, memory)."""
    if isinstance(exc, InvalidRecord):
        return exc
    if isinstance(exc, (OSError, MemoryError, TmcliError)):
        return None
    text = one_line(exc, 200, ellipsis=False)
    return InvalidRecord(rec.source, rec.line, f"unusable record ({type(exc).__name__}: {text})",
                         hint="fix or drop the line, or pass --skip-invalid to skip such lines")


def measure_records(records: Iterable[Record], pool: TokenizerPool, *, method: str,
                    batch_size: int, skip_invalid: bool, errors: list,
                    examples: list | None = None, n_examples: int = 0,
                    jobs: int | None = None) -> Iterator[pl.DataFrame]:
    """Yield one DataFrame of sample rows per batch of records (batches of one tokenizer)."""
    from tmcli.measure.parallel import Measurer
    from tmcli.measure.turns import expand

    records = expand(records, pool, skip_invalid=skip_invalid, errors=errors)
    measurer = Measurer(pool.window, pool.context, method, jobs=jobs)
    pending: dict[str, list] = {}
    counter = 0

    def emit(batch: list, metrics: list[dict]) -> pl.DataFrame:
        nonlocal counter
        rows = []
        for (rec, spec, smp), m in zip(batch, metrics):
            rows.append(_row(rec, spec, m))
            if n_examples and examples is not None and m.noncanonical:
                counter += 1
                key = (m.noncanonical_tokens, m.n_spans, -counter)
                item = (key, rec, spec, smp, m)
                if len(examples) < n_examples:
                    heapq.heappush(examples, item)
                elif key > examples[0][0]:
                    heapq.heapreplace(examples, item)
        return rows_to_frame(rows)

    def submit(spec: str):
        batch = pending.pop(spec)
        for done, metrics in measurer.submit(spec, [smp for _r, _s, smp in batch], batch):
            yield emit(done, metrics)

    try:
        for rec in records:
            try:
                spec, _enc, smp = _prepare(rec, pool)
            except Exception as exc:
                bad = _as_invalid(rec, exc)
                if bad is None:
                    raise
                if not skip_invalid:
                    raise bad from None
                errors.append(bad)
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
