"""`tmcli analyze`: records in, one row per sample and one summary per group out.

Records are streamed in batches through one `Reencoder` per tokenizer. Memory grows only by what
the group statistics need per sample (its scalars and window profile, a few hundred bytes): the
per-span detail (`DETAIL_COLUMNS`) goes straight to the parquet sink of ``output`` (`analyze
--output`) and is not kept, and only the few most non-canonical completions are kept in full, for
the report's example viewer.

Duplicates (the same record twice, e.g. from two runs appending to one file) would count twice
and narrow every interval: a sample whose `groups.DUPLICATE_KEY` was seen before is dropped from
the statistics (and counted in ``meta["n_duplicates"]``) unless ``keep_duplicates``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import polars as pl

from tmcli import __version__
from tmcli.aggregate.curves import pooled_window_profile, survival
from tmcli.aggregate.groups import Summariser, sigmoid_fits
from tmcli.errors import InvalidRecord, TmcliError
from tmcli.io.readers.base import Record
from tmcli.io.records import read_records
from tmcli.measure.records import TokenizerPool, measure_records
from tmcli.measure.sample_table import SAMPLE_SCHEMA, in_memory, natural_types, schema_with

# Bootstrap resamples: from 100 (fewer cannot place a 95% interval's ends) to 100,000 (the
# intervals stop moving long before; time and memory grow with the count: 10^9 took 8.5 GB).
MIN_RESAMPLES, MAX_RESAMPLES = 100, 100_000


def check_resamples(n: int, minimum: int = MIN_RESAMPLES) -> int:
    """``n`` if it is a usable number of bootstrap resamples (``minimum`` to `MAX_RESAMPLES`:
    the command line asks for `MIN_RESAMPLES`, the library for 1), else the one-line error."""
    if isinstance(n, bool) or not isinstance(n, int) or not minimum <= n <= MAX_RESAMPLES:
        raise TmcliError(f"--resamples {n} is outside {minimum:,} to {MAX_RESAMPLES:,}",
                         hint="the intervals stop moving long before the top (2,000, the "
                         "default, is plenty), while time and memory grow with the count")
    return n


@dataclass
class Analysis:
    """The result of analysing one input: per-sample rows (without `DETAIL_COLUMNS`, which
    `analyze --output` writes), group summaries, sigmoid fits, and every other number the
    report draws (`tmcli.aggregate.curves`)."""

    samples: pl.DataFrame
    groups: pl.DataFrame
    fits: pl.DataFrame
    group_by: list[str]
    window: int
    method: str
    examples: list[dict] = field(default_factory=list)
    skipped: list[InvalidRecord] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # canonical modes vs free generation (`groups.canonical_comparison`); empty with one mode
    comparison: pl.DataFrame | None = None
    # per group: the share still canonical after each number of tokens (`curves.survival`)
    survival: pl.DataFrame | None = None
    # per temperature, all models pooled: mean compression by window (`curves.pooled_window_profile`)
    pooled_windows: pl.DataFrame | None = None
    # per sampled turn of the trajectories: how many first drift there (`Summariser.drift_by_turn`)
    drift_turns: pl.DataFrame | None = None

    @property
    def n_samples(self) -> int:
        """Samples counted (``samples`` may be empty: `analyze_records` ``keep_samples``)."""
        return int(self.meta.get("n_samples", self.samples.height))

    def to_json(self) -> dict:
        """Group summaries, fits, the canonical comparison and the curves along the completion
        (survival, pooled window profile) as plain JSON (`--json`)."""
        return {
            "tmcli_version": __version__,
            "window": self.window,
            "window_method": self.method,
            "group_by": self.group_by,
            "n_samples": self.n_samples,
            "n_skipped": len(self.skipped),
            "skipped_reasons": self.skipped_reasons(),
            "groups": _jsonable(self.groups.to_dicts()),
            "sigmoid_fits": _jsonable(self.fits.to_dicts()),
            "canonical_comparison": _rows(self.comparison),
            "survival": _rows(self.survival),
            "pooled_window_profile": _rows(self.pooled_windows),
            "meta": _jsonable(self.meta),
        }

    def skipped_reasons(self) -> dict[str, int]:
        """Lines skipped (``skip_invalid``) by reason, most frequent first."""
        counts: dict[str, int] = {}
        for exc in self.skipped:
            reason = getattr(exc, "detail", str(exc))
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def stored_metadata(self) -> dict:
        """What a parquet file of the samples keeps beside them to rebuild this analysis
        (`stored.read_parquet`): the run's metadata, example completions and window settings."""
        return {
            "meta": _jsonable(self.meta),
            "examples": _jsonable(self.examples),
            "window": self.window,
            "window_method": self.method,
        }


def _rows(frame: pl.DataFrame | None) -> list:
    return _jsonable(frame.to_dicts()) if frame is not None else []


def _jsonable(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _example(item, pool: TokenizerPool) -> dict:
    """An example for the report: generated and canonical tokens side by side, per segment."""
    _key, rec, spec, smp, m = item
    vocab = pool.encoder(spec).vocab
    g = list(smp.token_ids)
    segments = []
    pos = 0
    for span, cause in zip(m.spans, m.causes):
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
        "temperature": rec.meta.get("temperature"), "n_tokens": m.n_tokens,
        "noncanonical_tokens": m.noncanonical_tokens, "n_spans": m.n_spans,
        "compression": m.compression, "prompt": rec.meta.get("prompt"),
        "segments": segments,
    }


def analyze_records(records: Iterable[Record], *, tokenizer: str | dict | None = None,
                    window: int = 64, method: str = "aligned", context: bool = True,
                    group_by: list[str] | None = None, batch_size: int = 256,
                    skip_invalid: bool = False, errors: list | None = None,
                    n_examples: int = 12, n_resamples: int = 2000, meta: dict | None = None,
                    jobs: int | None = None, output: str | None = None,
                    keep_duplicates: bool = False, keep_samples: bool = True,
                    chat_template: str | None = None, line_counts: dict | None = None
                    ) -> Analysis:
    """Measure every record and summarise by group (the whole of `tmcli analyze`).

    Group summaries are streamed (`groups.Summariser`): memory does not grow with the input,
    except by ``samples`` when ``keep_samples`` (without it ``samples`` is empty, and
    ``meta["n_samples"]`` counts them). ``output`` (.parquet) receives every sample row as it is
    measured, the per-span detail included; it is created before the first record is read, so a
    bad path fails at once. Trajectories (records with ``messages``) are checked for drift with
    their tokenizer's chat template, or the one in the file ``chat_template``, and measured turn
    by turn."""
    if window < 1:
        raise TmcliError(f"window must be a positive number of tokens, got {window}")
    check_resamples(n_resamples, minimum=1)  # the memory bound; the CLI also asks for >= 100
    if method not in ("aligned", "study"):
        raise TmcliError(f"unknown window method '{method}'", hint="use aligned or study")
    from tmcli.io.outputs import ParquetSink

    errors = [] if errors is None else errors
    pool = TokenizerPool(tokenizer, window=window, context=context, chat_template=chat_template)
    heap: list = []
    fields = [k for k in group_by or () if k not in SAMPLE_SCHEMA]  # the records' own fields
    summariser = Summariser(group_by, window, n_resamples, dedupe=not keep_duplicates)
    sink = ParquetSink(output, schema_with(fields)) if output else None
    try:
        kept: list[pl.DataFrame] = []
        recent: list[pl.DataFrame] = []

        def flush():
            # A few large chunks (and parquet row groups): per-batch ones cost ~30% more memory.
            if sink is not None:
                sink.write(pl.concat([f for f, _u in recent], rechunk=True))
            if keep_samples:
                kept.append(in_memory(pl.concat([u for _f, u in recent], rechunk=True)))
            recent.clear()

        for frame in measure_records(records, pool, method=method, batch_size=batch_size,
                                     skip_invalid=skip_invalid, errors=errors,
                                     examples=heap, n_examples=n_examples, jobs=jobs,
                                     fields=fields):
            unique = summariser.add(frame)
            if sink is not None or keep_samples:
                recent.append((frame, unique))
            if len(recent) == 32:
                flush()
        if recent:
            flush()
        samples = pl.concat(kept) if kept else in_memory(pl.DataFrame(schema=schema_with(fields)))
        kept.clear()
        if summariser.n == 0:
            where = ", ".join("<stdin>" if str(p) == "-" else str(p)
                              for p in (meta or {}).get("inputs") or []) or "the input"
            raise TmcliError(f"no usable records in {where}",
                             hint=f"{len(errors)} invalid line(s) were skipped" if errors
                             else "the input is empty")
        info = run_meta(sorted(pool._encoders), window=window, method=method, context=context,
                        n_samples=summariser.n, n_skipped=len(errors), extra=meta)
        if line_counts is not None:  # filled by read_records as the records were read
            info["n_lines"] = line_counts.get("lines", 0)
        examples = [_example(item, pool) for item in sorted(heap, key=lambda x: x[0], reverse=True)]
        analysis = _analysis(summariser, samples, window, method, examples, errors, info)
        if sink is not None:
            sink.close(analysis.stored_metadata())
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return analysis


def run_meta(tokenizers: list[str], *, window: int, method: str, context: bool, n_samples: int,
             n_skipped: int, extra: dict | None = None) -> dict:
    """What an analysis records about its run (`Analysis.meta`)."""
    return {"tokenizers": tokenizers, "window": window, "window_method": method,
            "context": context, "n_samples": n_samples, "n_skipped": n_skipped,
            "tmcli_version": __version__, **(extra or {})}


def _analysis(summariser: Summariser, samples: pl.DataFrame, window: int, method: str,
              examples: list | None, skipped: list | None, meta: dict,
              schema: dict = SAMPLE_SCHEMA) -> Analysis:
    """The `Analysis` of the rows a `Summariser` was given."""
    meta = dict(meta)
    meta["n_duplicates"] = summariser.n_duplicates
    meta["n_samples"] = summariser.n
    if summariser.n_duplicates:
        seen, unique = set(), []
        for ex in examples or []:  # the same completion twice in the example viewer
            key = tuple(ex.get(k) for k in ("id", "model", "temperature"))
            if key not in seen:
                seen.add(key)
                unique.append(ex)
        examples = unique
    keys = summariser.keys_used()
    own = [k for k in keys if k not in SAMPLE_SCHEMA]  # fields carried from the records
    groups = summariser.groups()
    empty = [k for k in own if groups[k].null_count() == groups.height]
    if empty:
        raise TmcliError(f"no record has a field {', '.join(map(repr, empty))} to group by",
                         hint="check the field name (a dotted path reaches into objects: "
                              "sampling.top_k)")
    curves = survival(summariser, schema)
    if own:  # numbers carried as text sort as numbers (step 2 before step 10)
        groups, curves = (natural_types(f, own).sort(keys, nulls_last=True, maintain_order=True)
                          for f in (groups, curves))
        samples = natural_types(samples, own)
    return Analysis(samples=samples, groups=groups, fits=sigmoid_fits(groups, keys),
                    group_by=keys, window=window, method=method,
                    examples=list(examples or []), skipped=list(skipped or []), meta=meta,
                    comparison=summariser.comparison(),
                    survival=curves,
                    pooled_windows=pooled_window_profile(summariser),
                    drift_turns=summariser.drift_by_turn())


def summarise_samples(samples: pl.DataFrame, *, group_by: list[str] | None, window: int,
                      method: str, n_resamples: int = 2000, examples: list | None = None,
                      skipped: list | None = None, meta: dict | None = None,
                      keep_duplicates: bool = False) -> Analysis:
    """An `Analysis` from per-sample rows (just measured, or read back from parquet)."""
    check_resamples(n_resamples, minimum=1)  # the memory bound; the CLI also asks for >= 100
    keys = list(group_by or ())
    missing = [k for k in keys if k not in samples.columns]
    if missing:
        raise TmcliError(f"cannot group by {', '.join(missing)}: no such column in this stored "
                         "analysis", hint="choose from: " + ", ".join(samples.columns) + "; or "
                         "analyse the records again with --group-by, which carries any field")
    summariser = Summariser(group_by, window, n_resamples, dedupe=not keep_duplicates)
    unique = [summariser.add(samples.slice(start, 8192))
              for start in range(0, samples.height, 8192)]
    if summariser.n_duplicates:
        samples = pl.concat(unique)
    return _analysis(summariser, samples, window, method, examples, skipped, meta or {},
                     dict(samples.schema))


def analyze_file(path: str, *, ids_field: str | None = None, prompt_ids_field: str | None = None,
                 skip_invalid: bool = False, **kwargs) -> Analysis:
    """`analyze_records` over a file (``-`` for stdin) in any supported format.

    ``meta["n_lines"]`` is the lines (or table rows) read: each was measured (``n_samples``
    counts its completions) or skipped with its reason (``skipped``)."""
    errors: list = []
    counts: dict = {}
    with reported_against(path):
        records = read_records(path, ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                               skip_invalid=skip_invalid, errors=errors, counts=counts)
        return analyze_records(records, skip_invalid=skip_invalid, errors=errors,
                               meta={"inputs": [path]}, line_counts=counts, **kwargs)


@contextmanager
def reported_against(path: str):
    """An OS error met while reading or measuring ``path`` names it (a read error names no file
    of its own). Anything else propagates as it is: an invalid line names its own file:line
    (the CLI adds --skip-invalid when it can be skipped: `InvalidRecord.skippable`), and a bug is
    never reported as a problem of the input."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:  # a read error (the output's are reported by its sink)
            exc.filename = path
        raise
