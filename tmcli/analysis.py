"""`tmcli analyze`: records in, one row per sample and one summary per group out.

Records are streamed in batches through one `Reencoder` per tokenizer. Memory grows only by what
the group statistics need per sample (its scalars and window profile, a few hundred bytes): the
per-span detail (`DETAIL_COLUMNS`) goes straight to the parquet sink of ``output`` (`analyze
--output`) and is not kept, and only the few most non-canonical completions are kept in full, for
the report's example viewer.

Duplicates (the same record twice, e.g. from two runs appending to one file) would count twice
and narrow every interval: a sample whose `summary.DUPLICATE_KEY` was seen before is dropped from
the statistics (and counted in ``meta["n_duplicates"]``) unless ``keep_duplicates``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import polars as pl

from tmcli import __version__
from tmcli.errors import InvalidRecord, TmcliError, one_line
from tmcli.quality import record_float
from tmcli.readers.openai import token_ids_from_logprobs
from tmcli.records import Record, read_records
from tmcli.reencode import Reencoder, Sample
from tmcli.summary import canonical_comparison, drop_duplicates, sigmoid_fits, summarise

SPAN = pl.Struct({"position": pl.Int64, "before": pl.List(pl.Int64), "after": pl.List(pl.Int64),
                  "kind": pl.String})
SAMPLE_SCHEMA = {
    "id": pl.String, "source": pl.String, "line": pl.Int64, "model": pl.String,
    "tokenizer": pl.String, "temperature": pl.Float64, "canonical": pl.String,
    "prompt_index": pl.Int64, "n_tokens": pl.Int64, "n_reencoded": pl.Int64,
    "compression": pl.Float64, "noncanonical": pl.Boolean, "kind": pl.String,
    "n_spans": pl.Int64, "noncanonical_tokens": pl.Int64, "token_rate": pl.Float64,
    "first_divergence": pl.Int64, "boundary_merge": pl.Boolean, "prompt_noncanonical": pl.Boolean,
    "byte_exact": pl.Boolean, "normalized": pl.Boolean, "invalid_bytes": pl.Int64,
    "cut_bytes": pl.Int64, "unknown_ids": pl.Int64, "spans": pl.List(SPAN),
    "causes": pl.List(pl.String),  # tmcli.causes: one per span, in span order
    "window_delta": pl.List(pl.Float64), "window_tokens": pl.List(pl.Int64),
    "window_compression": pl.List(pl.Float64), "window_noncanonical": pl.List(pl.Int64),
    "study_compression": pl.Float64, "study_window_compression": pl.List(pl.Float64),
    # text-quality proxies (tmcli.quality) and the record's own NLL figures
    "n_chars": pl.Int64, "chars_per_token": pl.Float64, "distinct_2": pl.Float64,
    "repetition_4": pl.Float64, "nll_token": pl.Float64, "nll_char": pl.Float64,
}
DEFAULT_GROUP_BY = ("model", "temperature")
# Written to the parquet sink but not kept in memory: variable-length per-sample detail (lists
# of structs: the differing spans), and figures that follow from kept ones (window_compression =
# window_delta / window_tokens, n_reencoded, token_rate). Nothing summarised reads them.
DETAIL_COLUMNS = (*(name for name, dtype in SAMPLE_SCHEMA.items()
                    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)),
                  "window_compression", "n_reencoded", "token_rate")
# In memory, the input's path is stored once, not once per row.
MEMORY_DTYPES = {"source": pl.Categorical}


def in_memory(samples: pl.DataFrame) -> pl.DataFrame:
    """Sample rows as an `Analysis` holds them: without `DETAIL_COLUMNS`, `MEMORY_DTYPES` cast."""
    samples = samples.drop([c for c in DETAIL_COLUMNS if c in samples.columns])
    return samples.cast({k: v for k, v in MEMORY_DTYPES.items() if k in samples.columns})


@dataclass
class Analysis:
    """The result of analysing one input: per-sample rows (without `DETAIL_COLUMNS`, which
    `analyze --output` writes), group summaries, sigmoid fits."""

    samples: pl.DataFrame
    groups: pl.DataFrame
    fits: pl.DataFrame
    group_by: list[str]
    window: int
    method: str
    examples: list[dict] = field(default_factory=list)
    skipped: list[InvalidRecord] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # canonical modes vs free generation (`summary.canonical_comparison`); empty with one mode
    comparison: pl.DataFrame | None = None

    def to_json(self) -> dict:
        """Group summaries, fits and the canonical comparison as plain JSON (`--json`)."""
        return {
            "tmcli_version": __version__,
            "window": self.window,
            "window_method": self.method,
            "group_by": self.group_by,
            "n_samples": self.samples.height,
            "n_skipped": len(self.skipped),
            "groups": _jsonable(self.groups.to_dicts()),
            "sigmoid_fits": _jsonable(self.fits.to_dicts()),
            "canonical_comparison": _jsonable(self.comparison.to_dicts()
                                              if self.comparison is not None else []),
            "meta": _jsonable(self.meta),
        }

    def stored_metadata(self) -> dict:
        """What a parquet file of the samples keeps beside them to rebuild this analysis
        (`store.read_parquet`): the run's metadata, example completions and window settings."""
        return {
            "meta": _jsonable(self.meta),
            "examples": _jsonable(self.examples),
            "window": self.window,
            "window_method": self.method,
        }


def _jsonable(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


class TokenizerPool:
    """Chooses each record's tokenizer and keeps one Reencoder per tokenizer.

    ``tokenizer`` is None (use each record's own `tokenizer`/`model` field), one spec for all
    records, or a mapping {name in records: spec}.
    """

    def __init__(self, tokenizer: str | dict | None, *, window: int, context: bool):
        self.forced = tokenizer if isinstance(tokenizer, str) else None
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
            from tmcli.vocab import vocab_for

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


def _row(rec: Record, spec: str, metrics: dict) -> dict:
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
    row.update(metrics)
    row.pop("boundary_span", None)
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
    from tmcli.workers import Measurer

    measurer = Measurer(pool.window, pool.context, method, jobs=jobs)
    pending: dict[str, list] = {}
    counter = 0

    def emit(batch: list, metrics: list[dict]) -> pl.DataFrame:
        nonlocal counter
        rows = []
        for (rec, spec, smp), m in zip(batch, metrics):
            rows.append(_row(rec, spec, m))
            if n_examples and examples is not None and m["noncanonical"]:
                counter += 1
                key = (m["noncanonical_tokens"], m["n_spans"], -counter)
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


def _list_array(lists: list, value_type):
    """A pyarrow ListArray built from flat values and offsets (fast; no per-item objects)."""
    import pyarrow as pa

    offsets = [0]
    for x in lists:
        offsets.append(offsets[-1] + (len(x) if x is not None else 0))
    flat = [v for x in lists if x for v in x]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, value_type))


def rows_to_frame(rows: list[dict]) -> pl.DataFrame:
    """Sample rows to a DataFrame of SAMPLE_SCHEMA; nested columns go through pyarrow."""
    import pyarrow as pa

    cols = {}
    for name, dtype in SAMPLE_SCHEMA.items():
        values = [r.get(name) for r in rows]
        if name == "spans":
            spans = [r["spans"] for r in rows]
            flat = [sp for ss in spans for sp in ss]
            struct = pa.StructArray.from_arrays(
                [pa.array([sp["position"] for sp in flat], pa.int64()),
                 _list_array([sp["before"] for sp in flat], pa.int64()),
                 _list_array([sp["after"] for sp in flat], pa.int64()),
                 pa.array([sp.get("kind") for sp in flat], pa.string())],
                names=["position", "before", "after", "kind"])
            offsets = [0]
            for ss in spans:
                offsets.append(offsets[-1] + len(ss))
            arr = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct)
            if any(r.get("spans") is None for r in rows):
                raise ValueError("spans missing")
            cols[name] = pl.from_arrow(arr)
        elif isinstance(dtype, pl.List):
            if all(v is None for v in values):
                cols[name] = pl.Series(name, values, dtype=dtype)
            else:
                inner = (pa.float64() if dtype.inner == pl.Float64
                         else pa.string() if dtype.inner == pl.String else pa.int64())
                arr = _list_array(values, inner)
                if any(v is None for v in values):
                    import pyarrow.compute as pc

                    arr = pc.if_else(pa.array([v is None for v in values]),
                                     pa.scalar(None, arr.type), arr)
                cols[name] = pl.from_arrow(arr)
        else:
            cols[name] = pl.Series(name, values, dtype=dtype)
    return pl.DataFrame(cols, schema=SAMPLE_SCHEMA)


def _example(item, pool: TokenizerPool) -> dict:
    """An example for the report: generated and canonical tokens side by side, per segment."""
    _key, rec, spec, smp, m = item
    vocab = pool.encoder(spec).vocab
    g = list(smp.token_ids)
    segments = []
    pos = 0
    for span, cause in zip(m["spans"], m["causes"]):
        p, before, after = span["position"], span["before"], span["after"]
        if p > pos:
            segments.append({"generated": [vocab.piece(t) for t in g[pos:p]], "differs": False})
        segments.append({"generated": [vocab.piece(t) for t in before],
                         "canonical": [vocab.piece(t) for t in after], "differs": True,
                         "cause": cause})
        pos = p + len(before)
    if pos < len(g):
        segments.append({"generated": [vocab.piece(t) for t in g[pos:]], "differs": False})
    return {
        "id": rec.id, "model": str(rec.meta.get("model") or spec),
        "temperature": rec.meta.get("temperature"), "n_tokens": m["n_tokens"],
        "noncanonical_tokens": m["noncanonical_tokens"], "n_spans": m["n_spans"],
        "compression": m["compression"], "prompt": rec.meta.get("prompt"),
        "segments": segments,
    }


def parse_tokenizer_option(values: list[str] | None) -> str | dict | None:
    """`--tokenizer SPEC` (one for all) or repeated `--tokenizer NAME=SPEC` (a mapping)."""
    if not values:
        return None
    pairs = [v for v in values if "=" in v]
    if not pairs:
        if len(values) > 1:
            raise TmcliError("several --tokenizer values given",
                             hint="give one, or map each as --tokenizer NAME=SPEC")
        return values[0]
    if len(pairs) != len(values):
        raise TmcliError("mix of --tokenizer SPEC and NAME=SPEC", hint="use one form")
    return dict(v.split("=", 1) for v in values)


def analyze_records(records: Iterable[Record], *, tokenizer: str | dict | None = None,
                    window: int = 64, method: str = "aligned", context: bool = True,
                    group_by: list[str] | None = None, batch_size: int = 256,
                    skip_invalid: bool = False, errors: list | None = None,
                    n_examples: int = 12, n_resamples: int = 2000, meta: dict | None = None,
                    jobs: int | None = None, output: str | None = None,
                    keep_duplicates: bool = False) -> Analysis:
    """Measure every record and summarise by group (the whole of `tmcli analyze`).

    ``output`` (.parquet) receives every sample row as it is measured, the per-span detail
    included; it is created before the first record is read, so a bad path fails at once."""
    if window < 1:
        raise TmcliError(f"window must be a positive number of tokens, got {window}")
    if method not in ("aligned", "study"):
        raise TmcliError(f"unknown window method '{method}'", hint="use aligned or study")
    from tmcli.sink import ParquetSink

    errors = [] if errors is None else errors
    pool = TokenizerPool(tokenizer, window=window, context=context)
    heap: list = []
    sink = ParquetSink(output, SAMPLE_SCHEMA) if output else None
    try:
        kept, recent = [], []

        def flush():
            # A few large chunks (and parquet row groups): per-batch ones cost ~30% more memory.
            frame = pl.concat(recent, rechunk=True)
            if sink is not None:
                sink.write(frame)
            kept.append(in_memory(frame))
            recent.clear()

        for frame in measure_records(records, pool, method=method, batch_size=batch_size,
                                     skip_invalid=skip_invalid, errors=errors,
                                     examples=heap, n_examples=n_examples, jobs=jobs):
            recent.append(frame)
            if len(recent) == 32:
                flush()
        if recent:
            flush()
        samples = pl.concat(kept) if kept else in_memory(pl.DataFrame(schema=SAMPLE_SCHEMA))
        del kept
        if samples.height == 0:
            raise TmcliError("no usable records in the input",
                             hint=f"{len(errors)} invalid line(s) were skipped" if errors
                             else "the input is empty")
        info = {
            "tokenizers": sorted(pool._encoders),
            "window": window, "window_method": method, "context": context,
            "n_samples": samples.height, "n_skipped": len(errors), "tmcli_version": __version__,
            **(meta or {}),
        }
        examples = [_example(item, pool) for item in sorted(heap, key=lambda x: x[0], reverse=True)]
        analysis = summarise_samples(samples, group_by=group_by, window=window, method=method,
                                     n_resamples=n_resamples, examples=examples, skipped=errors,
                                     meta=info, keep_duplicates=keep_duplicates)
        if sink is not None:
            sink.close(analysis.stored_metadata())
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return analysis


def summarise_samples(samples: pl.DataFrame, *, group_by: list[str] | None, window: int,
                      method: str, n_resamples: int = 2000, examples: list | None = None,
                      skipped: list | None = None, meta: dict | None = None,
                      keep_duplicates: bool = False) -> Analysis:
    """An `Analysis` from per-sample rows (just measured, or read back from parquet)."""
    meta = dict(meta or {})
    meta["n_duplicates"] = 0
    if not keep_duplicates:
        samples, meta["n_duplicates"] = drop_duplicates(samples)
        if meta["n_duplicates"]:
            seen, unique = set(), []
            for ex in examples or []:  # the same completion twice in the example viewer
                key = tuple(ex.get(k) for k in ("id", "model", "temperature"))
                if key not in seen:
                    seen.add(key)
                    unique.append(ex)
            examples = unique
    meta["n_samples"] = samples.height
    keys = list(group_by) if group_by else default_group_by(samples)
    missing = [k for k in keys if k not in samples.columns]
    if missing:
        raise TmcliError(f"cannot group by {', '.join(missing)}",
                         hint="choose from: " + ", ".join(samples.columns))
    groups = summarise(samples, keys, window, n_resamples=n_resamples)
    return Analysis(samples=samples, groups=groups, fits=sigmoid_fits(groups), group_by=keys,
                    window=window, method=method, examples=list(examples or []),
                    skipped=list(skipped or []), meta=meta,
                    comparison=canonical_comparison(samples, n_resamples=n_resamples))


def default_group_by(samples: pl.DataFrame) -> list[str]:
    keys = list(DEFAULT_GROUP_BY)
    if samples["canonical"].n_unique() > 1:
        keys.insert(1, "canonical")
    return keys


def analyze_file(path: str, *, ids_field: str | None = None, prompt_ids_field: str | None = None,
                 skip_invalid: bool = False, **kwargs) -> Analysis:
    """`analyze_records` over a file (``-`` for stdin) in any supported format.

    Whatever goes wrong while reading or measuring it is reported against the file: an OS error
    names it (a read error names no file of its own), and any other failure becomes a one-line
    `TmcliError` (exit 2 in the CLI) instead of a traceback."""
    errors: list = []
    try:
        records = read_records(path, ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                               skip_invalid=skip_invalid, errors=errors)
        return analyze_records(records, skip_invalid=skip_invalid, errors=errors,
                               meta={"inputs": [path]}, **kwargs)
    except InvalidRecord as exc:
        if "--skip-invalid" in str(exc):
            raise
        hint = f"{exc.hint}; or pass --skip-invalid to skip such lines" if exc.hint \
            else "fix or drop the line, or pass --skip-invalid to skip such lines"
        raise InvalidRecord(exc.source, exc.line, exc.detail, hint=hint) from None
    except (TmcliError, MemoryError):
        raise
    except OSError as exc:
        if exc.filename is None:  # a read error (the output's are reported by its sink)
            exc.filename = path
        raise
    except Exception as exc:
        text = one_line(exc, 200, ellipsis=False)
        raise TmcliError(f"{path}: cannot analyse this input ({type(exc).__name__}: {text})",
                         hint="run with --debug to see where; --skip-invalid skips records "
                         "that fail on their own") from exc
