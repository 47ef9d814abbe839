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
from contextlib import contextmanager
from dataclasses import dataclass

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
    read: int = 0  # lines (rows) read: kept + dropped + invalid


def _verdicts(path: str, *, tokenizer, ids_field, prompt_ids_field, skip_invalid: bool,
              context: bool, jobs: int | None, name: str | None, counts: dict,
              chat_template: str | None = None) -> bytearray:
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
                           skip_invalid=skip_invalid, errors=errors, counts=counts, name=name)
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


@contextmanager
def _rereadable(path: str):
    """(a path that can be read twice, the name to show) for ``path``: a regular file as it
    is; stdin, a FIFO or a device copied once into a nameless temporary file (it never appears
    in the temporary folder, so nothing is left behind, even after Ctrl-C or a kill)."""
    from tmcli.io.input_files import is_regular, open_input

    if is_regular(path):
        yield path, None
        return
    handle = open_input(path)  # waits interruptibly; keeps what the format sniff read
    name = handle.source
    try:
        spool = tempfile.TemporaryFile(prefix="tmcli-filter-")
    except BaseException:
        handle.close()
        raise
    with spool:
        try:
            if handle.table is not None:
                spool.write(handle.table)
            else:
                shutil.copyfileobj(handle.raw, spool, 1 << 20)  # compressed stays compressed
        finally:
            handle.close()
        spool.flush()
        proc = f"/proc/self/fd/{spool.fileno()}"
        if os.path.exists(proc):
            yield proc, name
            return
        with tempfile.NamedTemporaryFile(prefix="tmcli-filter-") as named:  # no /proc
            spool.seek(0)
            shutil.copyfileobj(spool, named)
            named.flush()
            yield named.name, name


def filter_file(path: str, output: str, *, keep: str = "canonical",
                tokenizer: str | dict | None = None, ids_field: str | None = None,
                prompt_ids_field: str | None = None, skip_invalid: bool = False,
                context: bool = True, jobs: int | None = None,
                chat_template: str | None = None) -> FilterSummary:
    """Write the records of ``path`` whose verdict is ``keep`` to ``output`` (``-``: stdout).
    A trajectory is non-canonical when it drifts from its chat template (or ``chat_template``,
    a template file) or any of its sampled turns is.

    Refused before any work: an output that is the input itself (by inode), that is not a
    regular file, or whose name says another format than the input's. The output is written to
    a temporary file beside it and moved into place at the end, so an existing file is
    replaced whole or left as it was. Every line (or row) read is kept, dropped, or invalid:
    the three counts add up to the lines read."""
    from tmcli.io.input_files import input_format
    from tmcli.io.outputs import AtomicFile, check_format, same_file

    if keep not in KEEP:
        raise TmcliError(f"unknown --keep '{keep}'", hint="use canonical or noncanonical")
    if output != "-" and path != "-" and same_file(path, output):
        raise TmcliError(f"the output {output} is the input", hint="choose another -o path")
    with _rereadable(path) as (readable, name):
        kind = input_format(readable)
        check_format(output, kind)
        out = AtomicFile(output) if output != "-" else None  # fails now if it cannot be written
        try:
            counts: dict = {}
            states = _verdicts(readable, tokenizer=tokenizer, ids_field=ids_field,
                               prompt_ids_field=prompt_ids_field, skip_invalid=skip_invalid,
                               context=context, jobs=jobs, name=name, counts=counts,
                               chat_template=chat_template)
            want = _CANONICAL if keep == "canonical" else _NONCANONICAL
            if out is None:
                _write_lines(readable, sys.stdout.buffer, states, want, skip_invalid)
                sys.stdout.buffer.flush()
            else:
                tmp = str(out.tmp)
                if kind == "jsonl":
                    with _open_output(tmp, output) as fh:
                        _write_lines(readable, fh, states, want, skip_invalid)
                else:
                    _write_table(readable, tmp, kind, states, want)
                out.commit()
        except BaseException:
            if out is not None:
                out.abort()
            raise
    counts_by = [states.count(s) for s in (_CANONICAL, _NONCANONICAL, _INVALID)]
    kept = counts_by[want - 1]
    summary = FilterSummary(output, keep, kept, counts_by[0] + counts_by[1] - kept, counts_by[2],
                            counts.get("lines", 0))
    if summary.kept + summary.dropped + summary.invalid != summary.read:  # every line accounted
        raise RuntimeError(f"filter counted {summary.kept + summary.dropped + summary.invalid} "
                           f"verdicts for {summary.read} lines read")
    return summary
