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
from tmcli.aggregate.groups import canonical_comparison, drop_duplicates, sigmoid_fits, summarise
from tmcli.errors import InvalidRecord, TmcliError, one_line
from tmcli.io.readers.base import Record
from tmcli.io.records import read_records
from tmcli.measure.records import TokenizerPool, measure_records
from tmcli.measure.sample_table import SAMPLE_SCHEMA, in_memory

DEFAULT_GROUP_BY = ("model", "temperature")


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

    def to_json(self) -> dict:
        """Group summaries, fits, the canonical comparison and the curves along the completion
        (survival, pooled window profile) as plain JSON (`--json`)."""
        return {
            "tmcli_version": __version__,
            "window": self.window,
            "window_method": self.method,
            "group_by": self.group_by,
            "n_samples": self.samples.height,
            "n_skipped": len(self.skipped),
            "groups": _jsonable(self.groups.to_dicts()),
            "sigmoid_fits": _jsonable(self.fits.to_dicts()),
            "canonical_comparison": _rows(self.comparison),
            "survival": _rows(self.survival),
            "pooled_window_profile": _rows(self.pooled_windows),
            "meta": _jsonable(self.meta),
        }

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
                    keep_duplicates: bool = False, chat_template: str | None = None) -> Analysis:
    """Measure every record and summarise by group (the whole of `tmcli analyze`).

    ``output`` (.parquet) receives every sample row as it is measured, the per-span detail
    included; it is created before the first record is read, so a bad path fails at once.
    Trajectories (records with ``messages``) are checked for drift with their tokenizer's chat
    template, or the one in the file ``chat_template``, and measured turn by turn."""
    if window < 1:
        raise TmcliError(f"window must be a positive number of tokens, got {window}")
    if method not in ("aligned", "study"):
        raise TmcliError(f"unknown window method '{method}'", hint="use aligned or study")
    from tmcli.io.outputs import ParquetSink

    errors = [] if errors is None else errors
    pool = TokenizerPool(tokenizer, window=window, context=context, chat_template=chat_template)
    heap: list = []
    sink = ParquetSink(output, SAMPLE_SCHEMA) if output else None
    try:
        kept: list[pl.DataFrame] = []
        recent: list[pl.DataFrame] = []

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
        kept.clear()
        if samples.height == 0:
            raise TmcliError("no usable records in the input",
                             hint=f"{len(errors)} invalid line(s) were skipped" if errors
                             else "the input is empty")
        info = run_meta(sorted(pool._encoders), window=window, method=method, context=context,
                        n_samples=samples.height, n_skipped=len(errors), extra=meta)
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


def run_meta(tokenizers: list[str], *, window: int, method: str, context: bool, n_samples: int,
             n_skipped: int, extra: dict | None = None) -> dict:
    """What an analysis records about its run (`Analysis.meta`)."""
    return {"tokenizers": tokenizers, "window": window, "window_method": method,
            "context": context, "n_samples": n_samples, "n_skipped": n_skipped,
            "tmcli_version": __version__, **(extra or {})}


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
                    comparison=canonical_comparison(samples, n_resamples=n_resamples),
                    survival=survival(samples, keys),
                    pooled_windows=pooled_window_profile(samples, window, n_resamples))


def default_group_by(samples: pl.DataFrame) -> list[str]:
    keys = list(DEFAULT_GROUP_BY)
    if samples["canonical"].n_unique() > 1:
        keys.insert(1, "canonical")
    return keys


def analyze_file(path: str, *, ids_field: str | None = None, prompt_ids_field: str | None = None,
                 skip_invalid: bool = False, **kwargs) -> Analysis:
    """`analyze_records` over a file (``-`` for stdin) in any supported format."""
    errors: list = []
    with reported_against(path):
        records = read_records(path, ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                               skip_invalid=skip_invalid, errors=errors)
        return analyze_records(records, skip_invalid=skip_invalid, errors=errors,
                               meta={"inputs": [path]}, **kwargs)


@contextmanager
def reported_against(path: str):
    """Whatever goes wrong while reading or measuring ``path``, reported against the file: an OS
    error names it (a read error names no file of its own), and any other failure becomes a
    one-line `TmcliError` (exit 2 in the CLI) instead of a traceback."""
    try:
        yield
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
