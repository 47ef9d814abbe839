"""What every command checks before any work: its output paths (one policy, `check_output`)
and the option values the library takes already parsed (`parse_tokenizer_option`,
`parse_report_temperatures`).

The output policy, in order (each a one-line error naming the path and the fix, exit 2):

1. the name says the format the command writes (``.parquet`` for ``analyze -o``, ``.html`` for
   ``report --html``, the input's own format for ``filter``, JSONL for ``generate``/``score``);
2. what is there is a regular file or nothing: never a folder, a device (``/dev/null``), a FIFO
   or a socket (a symbolic link is followed: its target is what gets written);
3. it is none of the command's inputs (compared by device and inode, so a hard link, a
   symbolic link or ``- < file`` is caught too);
4. its folder exists (``generate``/``score`` create missing folders: the nearest existing one
   must then be a folder) and takes a new file: tried for real with a nameless temporary file,
   so a read-only, immutable or full location fails now, not after the work;
5. no other tmcli process is writing it.

The writers themselves (`tmcli.io.outputs`, `tmcli.io.writer`) refuse again what they must when
called from Python: a target that is not a regular file, a busy one, and they never change an
existing file before they have something to write to it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tmcli.errors import TmcliError, from_os_error

# What each kind of output must be named.
PARQUET = (".parquet", ".pq")
HTML = (".html", ".htm")
# Names that say a format `generate`/`score` do not write (they append plain JSONL).
NOT_RECORDS = (".parquet", ".pq", ".arrow", ".feather", ".ipc", ".arrows", ".gz", ".zst",
               ".zstd", ".html", ".htm", ".csv")


def _suffix_error(path: str, kind: str) -> TmcliError | None:
    name = str(path).lower()
    if kind == "parquet" and not name.endswith(PARQUET):
        return TmcliError(f"cannot write samples as '{path}'", hint="name the file .parquet")
    if kind == "html" and not name.endswith(HTML):
        return TmcliError(f"cannot write a report as '{Path(path).suffix or Path(path).name}'",
                          hint="name the file with .html, e.g. --html report.html")
    if kind == "records" and name.endswith(NOT_RECORDS):
        return TmcliError(f"cannot append records to '{path}': its name says another format",
                          hint="records are plain JSONL: name the file .jsonl")
    return None


def _same_as_input(out: Path, inputs) -> str | None:
    from tmcli.io.outputs import same_file

    try:
        st = os.stat(out)
    except OSError:
        return None
    for given in inputs:
        if given is None:
            continue
        if given == "-":
            try:
                si = os.fstat(0)
            except OSError:
                continue
            if (si.st_dev, si.st_ino) == (st.st_dev, st.st_ino):
                return "stdin"
        elif same_file(given, out):
            return str(given)
    return None


def _probe_folder(folder: Path, shown: str) -> None:
    """Create (and at once lose) a nameless file in ``folder``: the real test of whether a new
    file can be made there (permissions, a read-only or immutable folder, a full disk)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        err = from_os_error(exc, shown)
        raise TmcliError(f"cannot write {shown}: {exc.strerror or exc}", hint=err.hint) from None


def check_output(path: str, kind: str, *, inputs=(), create_folders: bool = False) -> Path:
    """``path`` if the command may write its ``kind`` of output ('parquet', 'html', 'records',
    or None for any name) there; else the one-line error (see the module's policy). Run it
    before any work."""
    from tmcli.io.outputs import busy_error, other_writer, refuse_special, target

    bad = _suffix_error(path, kind) if kind else None
    if bad is not None:
        raise bad
    out = target(path)
    refuse_special(out)
    same = _same_as_input(out, inputs)
    if same is not None:
        raise TmcliError(f"the output {path} is the input {same}",
                         hint="write to another file (it would be destroyed before it was read)")
    folder = out.parent
    if create_folders:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise TmcliError(f"cannot create {path}: {folder} is not a folder",
                             hint="check the path")
    elif not folder.is_dir():
        if folder.exists():
            raise TmcliError(f"cannot create {path}: {folder} is not a folder",
                             hint="check the path")
        raise TmcliError(f"no such folder: {folder}", hint="create it first")
    _probe_folder(folder, str(path))
    if out.exists():
        try:
            with open(out, "ab"):  # opening to append changes nothing; it fails as a write would
                pass
        except OSError as exc:
            raise TmcliError(f"cannot write {path}: {exc.strerror or exc}",
                             hint=from_os_error(exc, str(path)).hint) from None
    if other_writer(out):
        raise busy_error(path)
    return out


def check_output_folder(path: str) -> Path:
    """A folder that files will be written into (``report --png-dir``): created if missing, so
    the nearest existing part must be a folder that takes new files."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise TmcliError(f"{path} is not a folder", hint="give a folder for the figures")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TmcliError(f"cannot create {path}: {existing} is not a folder", hint="check the path")
    _probe_folder(existing, str(path))
    return folder


def parse_tokenizer_option(values: list[str] | None) -> str | dict | None:
    """`--tokenizer SPEC` (one for all) or repeated `--tokenizer NAME=SPEC` (a mapping)."""
    if not values:
        return None
    pairs = [v for v in values if "=" in v]
    if not pairs:
        if len(values) > 1:
            raise TmcliError("several --tokenizer values given",
                             hint="give one, or map each as --tokenizer NAME=SPEC")
        if not values[0].strip():
            raise TmcliError("--tokenizer is empty", hint="name a tokenizer (an alias, a path, "
                             "a GGUF file or a hub id)")
        return values[0]
    if len(pairs) != len(values):
        raise TmcliError("mix of --tokenizer SPEC and NAME=SPEC", hint="use one form")
    mapping: dict[str, str] = {}
    for value in values:
        name, spec = value.split("=", 1)
        if not name.strip() or not spec.strip():
            raise TmcliError(f"--tokenizer '{value}' lacks a {'name' if not name.strip() else 'spec'}",
                             hint="map a name found in the records to a tokenizer: "
                             "--tokenizer NAME=SPEC (or give SPEC alone for every record)")
        if name in mapping and mapping[name] != spec:
            raise TmcliError(f"--tokenizer maps '{name}' twice", hint="map each name once")
        mapping[name] = spec
    return mapping


def parse_report_temperatures(text: str) -> tuple[float, ...]:
    """`report --temperatures`: '2.0,0.8' -> (2.0, 0.8); each a finite number >= 0."""
    import math

    try:
        temps = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise TmcliError(f"--temperatures must be numbers separated by commas, got '{text}'",
                         hint="e.g. --temperatures 2.0,0.8") from None
    if not temps or any(t < 0 or not math.isfinite(t) for t in temps):
        raise TmcliError(f"no usable temperature in '{text}'", hint="e.g. --temperatures 2.0,0.8")
    return temps
