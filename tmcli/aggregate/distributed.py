"""`tmcli analyze --ray`: shards measured on Ray workers, the summary built by the driver.

The input is a folder or a glob of shards (JSONL, .gz/.zst, Parquet or Arrow tables of records),
taken in name order. Ray Data maps `MeasureShards` over them (``map_batches`` on a pool of actors,
one shard per call): a worker reads its shard with tmcli's readers and measures it with
`measure_records`, the code of a local ``analyze``, so every verdict is exact; with ``--output``
it writes the shard's per-sample rows (all of `SAMPLE_SCHEMA`) as ``part-NNNNN.parquet`` of the
output folder, and it sends back the columns the summary needs, the lines it skipped and its
most non-canonical examples. The driver stacks the shards' rows in shard order, the order a
local ``analyze`` of their concatenation sees, and builds the `Analysis` with
`summarise_samples`: the same numbers, bootstrap intervals included, for the same seed. (Rows
are stacked per shard, and a local run stacks them per tokenizer batch: the two orders agree
within every group whose records share one tokenizer, which grouping by model ensures.)

A shard is the unit of work: a retried call (a worker lost) rewrites the same part file, so the
dataset never holds a shard twice; split a very large file into shards to spread it.
"""

from __future__ import annotations

import glob
import logging
import pickle
import shutil
import sys
from pathlib import Path

import orjson
import polars as pl

from tmcli.aggregate.analysis import (
    Analysis,
    _example,
    reported_against,
    run_meta,
    summarise_samples,
)
from tmcli.aggregate.stored import DATASET_METADATA
from tmcli.errors import InvalidRecord, TmcliError, from_os_error
from tmcli.io.records import read_records
from tmcli.measure.records import TokenizerPool, measure_records
from tmcli.measure.sample_table import DETAIL_COLUMNS, SAMPLE_SCHEMA, in_memory


def find_shards(spec: str) -> list[str]:
    """The shard files ``spec`` names, sorted: a folder's record files, or a glob's matches."""
    from tmcli.io.input_files import is_records_input

    path = Path(spec)
    if path.is_dir():
        files = [str(p) for p in sorted(path.iterdir())
                 if p.is_file() and not p.name.startswith((".", "_")) and is_records_input(str(p))]
    elif glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    elif path.is_file():
        files = [spec]
    else:
        raise TmcliError(f"no such file or folder: {spec}", hint="give a folder of shards or a "
                         "quoted glob such as 'rollouts/*.parquet'")
    if not files:
        raise TmcliError(f"no shards in {spec}", hint="give a folder of .jsonl (.gz, .zst) or "
                         ".parquet files, or a quoted glob such as 'rollouts/*.parquet'")
    return files


def measure_shard(index: int, path: str, *, output: str | None, tokenizer, window: int,
                  method: str, context: bool, ids_field: str | None,
                  prompt_ids_field: str | None, skip_invalid: bool, n_examples: int) -> dict:
    """Measure one shard as a local ``analyze`` measures a file (in this process); write its
    part of the dataset; return what the driver needs (see `MeasureShards`)."""
    import pyarrow as pa

    errors: list = []
    heap: list = []
    pool = TokenizerPool(tokenizer, window=window, context=context)
    with reported_against(path):
        records = read_records(path, ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                               skip_invalid=skip_invalid, errors=errors)
        frames = list(measure_records(records, pool, method=method, batch_size=256,
                                      skip_invalid=skip_invalid, errors=errors, examples=heap,
                                      n_examples=n_examples, jobs=1))
    samples = pl.concat(frames) if frames else pl.DataFrame(schema=SAMPLE_SCHEMA)
    if output is not None:
        _write_part(samples, Path(output) / f"part-{index:05d}.parquet")
    kept = samples.drop([c for c in DETAIL_COLUMNS if c in samples.columns]).to_arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, kept.schema) as stream:
        stream.write_table(kept)
    # a heap item's key is (non-canonical tokens, spans, -its order in the shard)
    examples = [{"key": [item[0][0], item[0][1], -item[0][2]], "example": _example(item, pool)}
                for item in heap]
    return {"index": index, "samples": sink.getvalue().to_pybytes(),
            "skipped": orjson.dumps([[e.source, e.line, e.detail, e.hint] for e in errors]),
            "examples": orjson.dumps(examples), "tokenizers": orjson.dumps(sorted(pool._encoders))}


def _write_part(samples: pl.DataFrame, path: Path) -> None:
    """One shard's rows, written whole or not at all (a retry replaces the same file)."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(samples.to_arrow().cast(pl.DataFrame(schema=SAMPLE_SCHEMA).to_arrow().schema),
                       tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise from_os_error(exc, str(path)) from None


class MeasureShards:
    """The Ray Data UDF of ``analyze --ray``: a batch of (index, path) rows in, one row per shard
    out: its index, its summary columns (Arrow IPC bytes), the lines it skipped, its examples and
    tokenizers (JSON), and the tmcli error that stopped it (pickled; empty if none: Ray Data
    would pass on only its text)."""

    def __init__(self, settings: dict):
        self.settings = settings

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {}
        for index, path in zip(batch["index"], batch["path"]):
            try:
                row = {**measure_shard(int(index), str(path), **self.settings), "error": b""}
            except TmcliError as exc:
                row = {"index": int(index), "samples": b"", "skipped": b"[]", "examples": b"[]",
                       "tokenizers": b"[]", "error": pickle.dumps(exc)}
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return out


def check_output_folder(output: str) -> Path:
    """``output`` can become the dataset's folder: new, or empty. Checked before any work."""
    path = Path(output)
    if path.is_file():
        raise TmcliError(f"{output} is a file", hint="with --ray, --output names a folder for "
                         "the per-sample Parquet dataset")
    if path.is_dir() and any(path.iterdir()):
        raise TmcliError(f"{output} is not empty", hint="give a new folder for the per-sample "
                         "dataset (or empty this one)")
    return path


def analyze_on_ray(inputs: str, *, address: str | None = None, output: str | None = None,
                   tokenizer: str | dict | None = None, window: int = 64,
                   method: str = "aligned", context: bool = True,
                   group_by: list[str] | None = None, ids_field: str | None = None,
                   prompt_ids_field: str | None = None, skip_invalid: bool = False,
                   n_examples: int = 12, n_resamples: int = 2000,
                   keep_duplicates: bool = False, workers: int | None = None) -> Analysis:
    """`analyze_file` over the shards ``inputs`` names (`find_shards`), measured on Ray (the
    cluster at ``address``, else a local Ray; see `ray_session`). ``output``: a folder that
    receives the per-sample Parquet dataset (one part per shard, and `DATASET_METADATA`), readable
    as a stored analysis (``tmcli analyze``/``report``/``check`` FOLDER). ``workers``: actors
    measuring at once (default: one per CPU of the cluster, at most one per shard)."""
    from tmcli.measure.ray_udf import ray_session, user_error

    if window < 1:
        raise TmcliError(f"window must be a positive number of tokens, got {window}")
    if method not in ("aligned", "study"):
        raise TmcliError(f"unknown window method '{method}'", hint="use aligned or study")
    shards = find_shards(inputs)
    folder = check_output_folder(output) if output else None
    created = folder is not None and not folder.exists()
    settings = dict(output=str(folder.resolve()) if folder else None, tokenizer=tokenizer,
                    window=window, method=method, context=context, ids_field=ids_field,
                    prompt_ids_field=prompt_ids_field, skip_invalid=skip_invalid,
                    n_examples=n_examples)
    try:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        with ray_session(address) as ray:
            try:
                rows = _run(ray, shards, settings, workers)
            except ray.exceptions.RayError as exc:
                err = user_error(exc)
                if err is None:
                    raise
                raise err from None
        analysis = _summarise(rows, shards, settings, group_by=group_by,
                              n_resamples=n_resamples, keep_duplicates=keep_duplicates)
        if folder is not None:
            (folder / DATASET_METADATA).write_bytes(orjson.dumps(analysis.stored_metadata()))
    except BaseException:
        if created and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return analysis


def _run(ray, shards: list[str], settings: dict, workers: int | None) -> list[dict]:
    """The shards' result rows from Ray Data, in shard order."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()  # Ray Data's own bars, on a terminal only
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # progress lines; errors come here
    size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"index": i, "path": str(Path(p).resolve())} for i, p in enumerate(shards)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(MeasureShards, fn_constructor_args=(settings,), batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=min(size, len(shards))),
                        num_cpus=1)
    return sorted(ds.take_all(), key=lambda row: row["index"])


def _summarise(rows: list[dict], shards: list[str], settings: dict, **kwargs) -> Analysis:
    """The driver's half: the shards' rows stacked in shard order, then `summarise_samples`.
    A shard's error stops it as a local run on the concatenation stops: the first one, in order."""
    for row in rows:
        if row["error"]:
            raise pickle.loads(row["error"])
    errors = [InvalidRecord(s, line, detail, hint=hint)
              for row in rows for s, line, detail, hint in orjson.loads(row["skipped"])]
    frames = [pl.DataFrame(_read_ipc(row["samples"])) for row in rows]
    frames = [f for f in frames if f.height]
    if not frames:
        raise TmcliError("no usable records in the input",
                         hint=f"{len(errors)} invalid line(s) were skipped" if errors
                         else "the shards are empty")
    samples = in_memory(pl.concat(frames))
    candidates = []
    for row in rows:
        for item in orjson.loads(row["examples"]):
            nt, spans, counter = item["key"]
            candidates.append(((nt, spans, -row["index"], -counter), item["example"]))
    candidates.sort(key=lambda c: c[0], reverse=True)
    tokenizers = sorted({t for row in rows for t in orjson.loads(row["tokenizers"])})
    meta = run_meta(tokenizers, window=settings["window"], method=settings["method"],
                    context=settings["context"], n_samples=samples.height,
                    n_skipped=len(errors), extra={"inputs": shards})
    return summarise_samples(samples, window=settings["window"], method=settings["method"],
                             examples=[ex for _k, ex in candidates[:settings["n_examples"]]],
                             skipped=errors, meta=meta, **kwargs)


def _read_ipc(data: bytes):
    import pyarrow as pa

    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()
