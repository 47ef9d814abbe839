"""Storing an analysis: the per-sample table as parquet, and reading it (or raw records) back.

The parquet file holds only the per-sample rows (`SAMPLE_SCHEMA`) plus, under the key-value
metadata key ``tmcli``, the run's metadata, example completions and window settings. Group
summaries are not stored: `summarise` recomputes them from the rows, so a stored file never
disagrees with the code that reads it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from tmcli.errors import TmcliError

META_KEY = b"tmcli"
PARQUET_SUFFIXES = (".parquet", ".pq")


def write_parquet(analysis, path: str | Path) -> Path:
    """Write ``analysis.samples`` to ``path`` with the metadata needed to rebuild the analysis."""
    import pyarrow.parquet as pq

    from tmcli.analysis import _jsonable

    table = analysis.samples.to_arrow()
    extra = {
        "meta": _jsonable(analysis.meta),
        "examples": _jsonable(analysis.examples),
        "window": analysis.window,
        "window_method": analysis.method,
    }
    metadata = dict(table.schema.metadata or {})
    metadata[META_KEY] = orjson.dumps(extra)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.replace_schema_metadata(metadata), tmp)
    tmp.replace(path)
    return path


def read_parquet(path: str | Path, *, n_resamples: int = 2000, group_by: list[str] | None = None):
    """Rebuild an `Analysis` from a parquet file written by `write_parquet` (no re-encoding)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tmcli.analysis import SAMPLE_SCHEMA, Analysis, default_group_by
    from tmcli.summary import canonical_comparison, sigmoid_fits, summarise

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TmcliError(f"cannot read {path} as parquet ({exc})",
                         hint="give a file written by `tmcli analyze --output x.parquet`") from None
    from tmcli.quality import QUALITY_COLUMNS

    for name in QUALITY_COLUMNS:  # files written before these columns existed: all null
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    if "causes" not in table.column_names:  # written before span causes existed
        table = table.append_column("causes", pa.nulls(table.num_rows, pa.list_(pa.string())))
    missing = [c for c in SAMPLE_SCHEMA if c not in table.column_names]
    if missing:
        raise TmcliError(f"{path} lacks the per-sample column(s) {', '.join(missing[:5])}",
                         hint="write it with this tmcli's `analyze --output x.parquet`")
    raw = (table.schema.metadata or {}).get(META_KEY)
    try:
        extra = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise TmcliError(f"{path}: the 'tmcli' metadata is not valid JSON",
                         hint="re-run `tmcli analyze --output`") from None
    samples = pl.from_arrow(table.select(list(SAMPLE_SCHEMA)))
    samples = samples.cast(SAMPLE_SCHEMA)  # type: ignore[arg-type]
    if samples.height == 0:
        raise TmcliError(f"{path} holds no samples", hint="analyze a non-empty input")
    window = int(extra.get("window") or 64)
    keys = list(group_by) if group_by else default_group_by(samples)
    missing = [k for k in keys if k not in samples.columns]
    if missing:
        raise TmcliError(f"cannot group by {', '.join(missing)}",
                         hint="choose from: " + ", ".join(samples.columns))
    groups = summarise(samples, keys, window, n_resamples=n_resamples)
    meta = dict(extra.get("meta") or {})
    meta.setdefault("inputs", [str(path)])
    return Analysis(samples=samples, groups=groups, fits=sigmoid_fits(groups), group_by=keys,
                    window=window, method=str(extra.get("window_method") or "aligned"),
                    examples=list(extra.get("examples") or []), meta=meta,
                    comparison=canonical_comparison(samples, n_resamples=n_resamples))


def is_stored_analysis(path: str | Path) -> bool:
    """Whether ``path`` is an `analyze --output` file (Parquet with tmcli's metadata), as opposed
    to a table of records (rollouts, dataset dumps) that is still to be measured."""
    text = str(path)
    if text == "-" or not text.lower().endswith(PARQUET_SUFFIXES) or not Path(text).is_file():
        return False
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return META_KEY in (pq.read_schema(text).metadata or {})
    except (OSError, pa.ArrowException):
        return True  # let read_parquet report what is wrong with it


def load_analysis(path: str | Path, *, n_resamples: int = 2000,
                  group_by: list[str] | None = None, **analyze_kwargs):
    """An `Analysis` from raw outputs (.jsonl, analysed now) or a stored analysis (.parquet).

    ``analyze_kwargs`` (tokenizer, window, skip_invalid...) apply to JSONL input only; a parquet
    file was measured already, with its own settings.
    """
    from tmcli.records import is_records_input

    text = str(path)
    suffix = Path(text).suffix.lower()
    if text != "-" and Path(text).is_dir():
        raise TmcliError(f"{text} is a directory", hint="give raw outputs (.jsonl, - for stdin) "
                         "or an `analyze --output` file (.parquet)")
    if suffix in PARQUET_SUFFIXES and not Path(text).is_file():
        raise TmcliError(f"no such file: {text}", hint="check the path")
    if is_stored_analysis(text):
        given = {k for k, v in analyze_kwargs.items() if v is not None}
        if given:
            raise TmcliError(f"{', '.join(sorted(given))} cannot apply to a stored analysis",
                             hint="pass them to `tmcli analyze`, or give the raw .jsonl outputs")
        return read_parquet(text, n_resamples=n_resamples, group_by=group_by)
    if is_records_input(text):
        from tmcli.analysis import analyze_file

        kwargs = {k: v for k, v in analyze_kwargs.items() if v is not None}
        return analyze_file(text, n_resamples=n_resamples, group_by=group_by, **kwargs)
    raise TmcliError(f"cannot tell what {text} holds from its suffix '{suffix or '(none)'}'",
                     hint="give raw outputs as .jsonl (.gz, .zst), a Parquet/Arrow table of "
                     "records, or an `analyze --output` file as .parquet")
