"""`tmcli filter`: keep the canonical (or the non-canonical) input records, unchanged.

An RL pipeline's "drop" policy as one command: the kept records are written byte for byte as
they were read (JSONL lines, compressed or not), or row for row with the same schema (Parquet in,
Parquet out; Arrow in, Arrow out), in input order. Two passes: the first measures every record
exactly as `tmcli analyze` does and keeps one byte of verdict per line; the second copies.

A line (or row) holding several completions (n > 1) is one unit: ``--keep canonical`` keeps it
when all of them are canonical, ``--keep noncanonical`` when any is not, so the two outputs
split the valid input between them. Invalid lines stop the command (exit 2, nothing written),
or with ``skip_invalid`` are dropped and counted.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError

KEEP = ("canonical", "noncanonical")
_CANONICAL, _NONCANONICAL, _INVALID = 1, 2, 3


@dataclass
class FilterSummary:
    """What `filter_file` wrote: lines (or rows) kept, dropped for their verdict, and invalid."""

    output: str
    keep: str
    kept: int
    dropped: int
    invalid: int


def _kind_of_output(output: str) -> str:
    from tmcli.io.input_files import TABLE_SUFFIXES

    return TABLE_SUFFIXES.get(Path(output).suffix.lower(), "jsonl")


def _check_paths(path: str, output: str, kind: str) -> None:
    out_kind = _kind_of_output(output) if output != "-" else "jsonl"
    if out_kind.split("-")[0] != kind.split("-")[0]:
        want = {"parquet": ".parquet", "arrow": ".arrow"}.get(kind.split("-")[0], ".jsonl")
        raise TmcliError(f"filter writes the input's own format ({kind}), not {out_kind}",
                         hint=f"name the output {want}")
    if output == "-":
        return
    out = Path(output)
    if not out.parent.is_dir():
        raise TmcliError(f"cannot write {output}: no directory {out.parent}",
                         hint="create it first, or choose another -o path")
    if path != "-" and out.exists() and out.resolve() == Path(path).resolve():
        raise TmcliError("the output would overwrite the input", hint="choose another -o path")


def _verdicts(path: str, *, tokenizer, ids_field, prompt_ids_field, skip_invalid: bool,
              context: bool, jobs: int | None, chat_template: str | None = None) -> bytearray:
    """One byte per input line/row (index = line number): canonical, non-canonical, invalid."""
    from tmcli.io.records import read_records
    from tmcli.measure.records import TokenizerPool, measure_records

    errors: list = []
    states = bytearray()

    def mark(line: int, state: int) -> None:
        if line >= len(states):
            states.extend(bytes(line + 1 - len(states) + len(states) // 2))
        states[line] = max(states[line], state)

    pool = TokenizerPool(tokenizer, window=64, context=context, chat_template=chat_template)
    records = read_records(path, ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                           skip_invalid=skip_invalid, errors=errors)
    for frame in measure_records(records, pool, method="aligned", batch_size=256,
                                 skip_invalid=skip_invalid, errors=errors, jobs=jobs):
        bad = frame["noncanonical"] | frame["drift"].fill_null(False)  # a trajectory's drift too
        for line, nc in zip(frame["line"].to_list(), bad.to_list()):
            mark(line, _NONCANONICAL if nc else _CANONICAL)
    for exc in errors:
        mark(exc.line, _INVALID)
    return states


def _open_output(tmp: str, output: str):
    """A binary file at ``tmp`` compressed as ``output``'s suffix says (.gz, .zst) or plain."""
    name = output.lower()
    if name.endswith(".gz"):
        import gzip

        return gzip.open(tmp, "wb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(open(tmp, "wb"), closefd=True)
    return open(tmp, "wb")


def _write_lines(path: str, fh, states: bytearray, want: int, skip_invalid: bool) -> None:
    from tmcli.io.input_files import iter_lines

    for _source, line, raw in iter_lines(path, keep_ends=True,
                                         errors=[] if skip_invalid else None):
        if line < len(states) and states[line] == want:
            fh.write(raw)


def _write_table(path: str, tmp: str, kind: str, states: bytearray, want: int) -> None:
    import pyarrow as pa

    from tmcli.io.readers.table import open_table

    schema, batches = open_table(path, kind)
    row = 1

    def kept(batch):
        nonlocal row
        mask = [row + i < len(states) and states[row + i] == want for i in range(batch.num_rows)]
        row += batch.num_rows
        return batch.filter(pa.array(mask, pa.bool_()))

    if kind == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        codec = (meta.row_group(0).column(0).compression.lower()
                 if meta.num_row_groups and meta.num_columns else "snappy")
        with pq.ParquetWriter(tmp, schema, compression="none" if codec == "uncompressed"
                              else codec) as writer:
            for batch in batches:
                writer.write_batch(kept(batch))
        return
    new = pa.ipc.new_file if kind == "arrow-file" else pa.ipc.new_stream
    with pa.OSFile(tmp, "wb") as sink, new(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(kept(batch))


def filter_file(path: str, output: str, *, keep: str = "canonical",
                tokenizer: str | dict | None = None, ids_field: str | None = None,
                prompt_ids_field: str | None = None, skip_invalid: bool = False,
                context: bool = True, jobs: int | None = None,
                chat_template: str | None = None) -> FilterSummary:
    """Write the records of ``path`` whose verdict is ``keep`` to ``output`` (``-``: stdout).
    A trajectory is non-canonical when it drifts from its chat template (or ``chat_template``,
    a template file) or any of its sampled turns is."""
    from tmcli.io.input_files import input_format

    if keep not in KEEP:
        raise TmcliError(f"unknown --keep '{keep}'", hint="use canonical or noncanonical")
    spool = None
    if path == "-":  # two passes need the input twice
        spool = tempfile.NamedTemporaryFile(prefix="tmcli-filter-", delete=False)
        with spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
        path = spool.name
    try:
        kind = input_format(path)
        _check_paths(path, output, kind)
        states = _verdicts(path, tokenizer=tokenizer, ids_field=ids_field,
                           prompt_ids_field=prompt_ids_field, skip_invalid=skip_invalid,
                           context=context, jobs=jobs, chat_template=chat_template)
        want = _CANONICAL if keep == "canonical" else _NONCANONICAL
        if output == "-":
            _write_lines(path, sys.stdout.buffer, states, want, skip_invalid)
            sys.stdout.buffer.flush()
        else:
            tmp = f"{output}.tmp"
            try:
                if kind == "jsonl":
                    with _open_output(tmp, output) as fh:
                        _write_lines(path, fh, states, want, skip_invalid)
                else:
                    _write_table(path, tmp, kind, states, want)
                os.replace(tmp, output)
            except OSError as exc:
                raise TmcliError(f"cannot write {output} ({exc.strerror or exc})",
                                 hint="check the disk and the directory's permissions") from None
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    finally:
        if spool is not None:
            os.remove(spool.name)
    counts = [states.count(s) for s in (_CANONICAL, _NONCANONICAL, _INVALID)]
    kept = counts[want - 1]
    return FilterSummary(output, keep, kept, counts[0] + counts[1] - kept, counts[2])
