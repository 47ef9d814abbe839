"""Records I/O: reading completions from JSONL in several formats, and appending them safely.

Formats read (detected per line):
- tmcli's own records: ``token_ids`` (+ ``prompt_token_ids``, ``model``, ``tokenizer``, ``temperature``...)
- vLLM offline outputs: ``prompt_token_ids`` and ``outputs[].token_ids`` (one sample per output)
- OpenAI-compatible responses with logprobs: ``choices[].logprobs`` (token bytes or strings; mapped
  back to ids through the tokenizer by the caller, see `analysis.py`)
- any JSONL whose ids field is named with ``ids_field``.

Files are streamed line by line (``-`` is stdin), so memory does not grow with the input.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tmcli.errors import InvalidRecord, TmcliError, from_os_error

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass
class Record:
    """One completion read from a file, before re-encoding."""

    source: str
    line: int
    id: str
    token_ids: list[int] | None
    prompt_ids: list[int] | None
    meta: dict = field(default_factory=dict)
    # OpenAI-style logprob tokens (bytes or strings) still to be mapped to ids
    logprob_tokens: list | None = None


def _open(path: str):
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    p = Path(path)
    if not p.exists():
        raise TmcliError(f"no such file: {path}", hint="check the path, or use - for stdin")
    if p.is_dir():
        raise TmcliError(f"{path} is a directory", hint="give a JSONL file")
    return open(p, "rb"), path


def iter_lines(path: str) -> Iterator[tuple[str, int, bytes]]:
    """(source, line number, raw line) for each non-blank line; BOM and CRLF tolerated."""
    fh, source = _open(path)
    try:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if len(raw) > MAX_LINE_BYTES:
                raise InvalidRecord(
                    source, number,
                    f"line is {len(raw) / 2**20:.0f} MiB, over the {MAX_LINE_BYTES // 2**20} MiB limit",
                    hint="write one completion per line (JSONL), not one JSON document",
                )
            raw = raw.strip()
            if raw:
                yield source, number, raw
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _ids(value, source: str, line: int, name: str) -> list[int]:
    if not isinstance(value, list):
        raise InvalidRecord(source, line, f"'{name}' must be a list of integer token ids")
    if set(map(type, value)) - {int}:  # bool is not an id, and floats are not either
        v = next(v for v in value if type(v) is not int)
        raise InvalidRecord(source, line, f"'{name}' holds {v!r}, not an integer token id",
                            hint="token ids must be integers")
    return value


def _meta(obj: dict) -> dict:
    skip = {"token_ids", "prompt_token_ids", "outputs", "choices"}
    return {k: v for k, v in obj.items() if k not in skip}


def parse_line(source: str, line: int, raw: bytes, ids_field: str | None = None) -> list[Record]:
    """The records in one JSONL line (a vLLM or OpenAI line can hold several completions)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = "each line must be one JSON object"
        if raw[:1] == b"[" and line == 1:
            hint = "this looks like a JSON array; write one object per line (JSONL)"
        raise InvalidRecord(source, line, f"malformed JSON ({exc.args[0].split(':')[0]})",
                            hint=hint) from None
    if not isinstance(obj, dict):
        raise InvalidRecord(source, line, "expected a JSON object", hint="one object per line")
    rid = str(obj.get("id", obj.get("request_id", f"line{line}")))
    prompt = obj.get("prompt_token_ids")
    prompt = _ids(prompt, source, line, "prompt_token_ids") if prompt is not None else None
    if ids_field:
        if ids_field not in obj:
            raise InvalidRecord(source, line, f"no '{ids_field}' field",
                                hint="check --ids-field against the file's field names")
        ids = _ids(obj[ids_field], source, line, ids_field)
        return [Record(source, line, rid, ids, prompt, _meta(obj))]
    if "token_ids" in obj:
        ids = _ids(obj["token_ids"], source, line, "token_ids")
        return [Record(source, line, rid, ids, prompt, _meta(obj))]
    if isinstance(obj.get("outputs"), list):  # vLLM RequestOutput
        recs = []
        for k, out in enumerate(obj["outputs"]):
            if not isinstance(out, dict) or "token_ids" not in out:
                raise InvalidRecord(source, line, f"outputs[{k}] has no 'token_ids'")
            ids = _ids(out["token_ids"], source, line, f"outputs[{k}].token_ids")
            meta = _meta(obj)
            if "text" in out:
                meta["completion"] = out["text"]
            sid = rid if len(obj["outputs"]) == 1 else f"{rid}/{out.get('index', k)}"
            recs.append(Record(source, line, sid, ids, prompt, meta))
        return recs
    if isinstance(obj.get("choices"), list):  # OpenAI-compatible response
        recs = []
        for k, ch in enumerate(obj["choices"]):
            tokens = _logprob_tokens(ch, source, line, k)
            meta = _meta(obj)
            text = ch.get("text") or (ch.get("message") or {}).get("content")
            if text is not None:
                meta["completion"] = text
            sid = rid if len(obj["choices"]) == 1 else f"{rid}/{ch.get('index', k)}"
            recs.append(Record(source, line, sid, None, prompt, meta, logprob_tokens=tokens))
        return recs
    raise InvalidRecord(
        source, line, "no token ids found (looked for 'token_ids', 'outputs[].token_ids', "
        "'choices[].logprobs')",
        hint="name the ids field with --ids-field",
    )


def _logprob_tokens(choice: dict, source: str, line: int, k: int) -> list:
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(lp, dict):
        raise InvalidRecord(source, line, f"choices[{k}] has no logprobs",
                            hint="request the completion with logprobs enabled")
    if isinstance(lp.get("content"), list):  # chat completions: token + bytes
        out = []
        for item in lp["content"]:
            b = item.get("bytes")
            out.append(bytes(b) if isinstance(b, list) else item.get("token"))
        return out
    if isinstance(lp.get("tokens"), list):  # legacy completions: token strings
        return list(lp["tokens"])
    raise InvalidRecord(source, line, f"choices[{k}].logprobs has neither 'content' nor 'tokens'")


def read_records(path: str, *, ids_field: str | None = None,
                 skip_invalid: bool = False, errors: list | None = None) -> Iterator[Record]:
    """Stream records from ``path``; invalid lines raise, or are skipped into ``errors``."""
    for source, line, raw in iter_lines(path):
        try:
            records = parse_line(source, line, raw, ids_field)
        except (InvalidRecord, ValueError, TypeError, KeyError, AttributeError) as exc:
            # a reader that fails on a line in any way fails on that line (--skip-invalid)
            if not isinstance(exc, InvalidRecord):
                text = " ".join(str(exc).split())[:200] or type(exc).__name__
                exc = InvalidRecord(source, line, f"unreadable record ({text})",
                                    hint="fix or drop the line, or pass --skip-invalid")
            if not skip_invalid:
                raise exc from None
            if errors is not None:
                errors.append(exc)
            continue
        yield from records


# -- writing ------------------------------------------------------------------------------------
#
# One writer per output file: `RecordWriter` holds an exclusive advisory lock (flock) on the file
# from the moment it exists until it is closed, and `repair_tail` takes it for the repair. A
# second `generate`/`score` on the same file therefore stops at once with one line, instead of
# both appending every record. (It does not wait: rerunning after the first one ends resumes.)

_HELD: set[str] = set()  # files this process holds the lock of (flock is per open file)


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _regular(path: Path) -> bool:
    """A regular file (not a device, FIFO or /dev/stdout): only those can be repaired or resumed."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _lock(fh, path: Path) -> None:
    """Take the exclusive lock on open file ``fh`` or fail with the one-line error."""
    if fcntl is None:  # no flock (Windows): one writer is then the user's to ensure
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise TmcliError(f"{path} is being written by another tmcli process",
                         hint="wait for it to end (running the command again then resumes), "
                         "or write to another file with -o") from None
    except OSError as exc:  # a file system without locks (some network mounts): go on unlocked
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            fh.close()
            raise


def repair_tail(path: Path) -> int:
    """Cut a last line left incomplete by a crash; returns the bytes removed.

    Takes the output lock for the repair (unless this process holds it), so it never cuts a
    line that another writer is still appending."""
    path = Path(path)
    if not _regular(path) or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        if _key(path) not in _HELD:
            _lock(fh, path)  # released when fh closes
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        pos = size
        chunk = 1 << 16
        tail = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            nl = tail.rfind(b"\n")
            if nl != -1:
                last = tail[nl + 1 :]
                keep = pos + nl + 1
                break
        else:
            last, keep = tail, 0
        if not last.strip():
            return 0
        try:
            orjson.loads(last)
            fh.write(b"\n")  # complete object without its newline: keep it
            return 0
        except orjson.JSONDecodeError:
            fh.truncate(keep)
            return size - keep


def existing_ids(path: Path) -> set[str]:
    """Ids already written to ``path`` (for resuming); none for a device or a FIFO."""
    done: set[str] = set()
    if not _regular(Path(path)):
        return done
    for _source, _line, raw in iter_lines(str(path)):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "id" in obj:
            done.add(str(obj["id"]))
    return done


def check_writable(path: Path) -> None:
    """Fail now, with the path and the fix, if ``path`` cannot become a file we write: before
    any work, not after it. Missing folders are fine (they are created); a file in their place
    is not."""
    path = Path(path)
    if path.is_dir():
        raise TmcliError(f"{path} is a folder", hint="give a file name, e.g. -o out/outputs.jsonl")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TmcliError(f"cannot create {path}: {parent} is not a folder", hint="check the path")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise TmcliError(f"cannot write {path}: permission denied",
                         hint="check the permissions, or write elsewhere with -o")


class RecordWriter:
    """Appends one JSON object per line and flushes+fsyncs each batch, so a crash loses at most
    the batch in flight and never leaves a corrupt file behind after `repair_tail`.

    The file (and its folder) is created with the first record, so a run that fails before it
    has one (a model that cannot load) leaves nothing behind. The file is locked from then (from
    the start if it exists) until `close`; ids already in it when the lock is taken are not
    written again, so two runs that planned the same work before either wrote still add no
    duplicate. Write errors (a full disk) become one line naming the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None
        self._ids: set[str] = set()
        check_writable(self.path)
        if self.path.exists():
            self._open()  # a second writer fails here, before any work

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab")
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        _lock(fh, self.path)
        _HELD.add(_key(self.path))
        self._fh = fh
        repair_tail(self.path)
        self._ids = existing_ids(self.path)

    def write(self, records: list[dict]) -> int:
        """Append ``records`` (those whose id is not in the file yet); returns how many."""
        if not records:
            return 0
        if self._fh is None:
            self._open()
        records = [r for r in records if "id" not in r or str(r["id"]) not in self._ids]
        try:
            self._fh.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            self._fh.flush()
            if _regular(self.path):
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        self._ids.update(str(r["id"]) for r in records if "id" in r)
        return len(records)

    def close(self) -> None:
        if self._fh is not None:
            _HELD.discard(_key(self.path))
            try:
                self._fh.close()
            except OSError:  # what could not be written was reported by write()
                pass
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
