"""`tmcli diff`: each differing span of each non-canonical sample, readable.

For every span: its position in the completion, the generated and the canonical tokens as visible
strings, K tokens of context either side, and its cause (`tmcli.measure.causes`). Records are measured a
chunk at a time in input order, so ``--limit`` stops reading once enough samples are shown.

Tokens are shown so that no two different byte strings look alike: a space is ``␣``, a newline
``\\n``, a tab ``\\t``, other control, format and space characters ``\\uXXXX``, a byte that is not
UTF-8 ``\\xNN``, a backslash ``\\\\``; ``│`` separates tokens, a special token is ``⟦<|im_end|>⟧``
and an id the tokenizer lacks ``⟦?50300⟧``. Any of these marks inside the text is escaped too.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator

from tmcli.errors import InvalidRecord, TmcliError
from tmcli.io.readers.base import Record
from tmcli.measure.causes import DESCRIPTIONS, sample_causes
from tmcli.measure.metrics import SampleMetrics

SEP = "│"
_MARKS = {"\\": "\\\\", " ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_RESERVED = set("␣│…‖⟦⟧")


def _char(ch: str) -> str:
    if ch in _MARKS:
        return _MARKS[ch]
    if ch in _RESERVED or unicodedata.category(ch)[0] in "CZ":
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
            else f"\\U{code:08x}"
    return ch


def visible(data: bytes) -> str:
    """``data`` as an unambiguous one-line string (see the module docstring)."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            text = data[pos:].decode("utf-8")
            pos = len(data)
        except UnicodeDecodeError as exc:
            text = data[pos : pos + exc.start].decode("utf-8")
            bad = data[pos + exc.start : pos + exc.end]
            pos += exc.end
            out.append("".join(map(_char, text)) + "".join(f"\\x{b:02x}" for b in bad))
            continue
        out.append("".join(map(_char, text)))
    return "".join(out)


def plain(value) -> str:
    """Metadata (a model name, an id) with control characters escaped; never markup."""
    return "".join(ch if unicodedata.category(ch)[0] != "C" else _char(ch) for ch in str(value))


def token_strings(vocab, ids) -> list[str]:
    """Each id as a visible string: its exact bytes, ``⟦special⟧``, or ``⟦?id⟧`` if unknown."""
    out = []
    for t in ids:
        if not (0 <= t < vocab.size) or not vocab.known[t]:
            out.append(f"⟦?{t}⟧")
        elif vocab.special[t]:
            out.append(f"⟦{plain(vocab.original.id_to_token(int(t)) or t)}⟧")
        else:
            out.append(visible(vocab.token_bytes[t]))
    return out


def measured(records: Iterable[Record], pool, *, skip_invalid: bool, errors: list,
             chunk: int = 64) -> Iterator[tuple[Record, str, object, SampleMetrics]]:
    """(record, tokenizer spec, sample, metrics) in input order, measured ``chunk`` at a time."""
    from tmcli.measure.records import _prepare

    batch: list = []

    def flush():
        by_spec: dict[str, list[int]] = {}
        for k, (_rec, spec, _smp) in enumerate(batch):
            by_spec.setdefault(spec, []).append(k)
        results: list = [None] * len(batch)
        for spec, idx in by_spec.items():
            enc = pool.encoder(spec)
            for k, m in zip(idx, enc.measure([batch[k][2] for k in idx])):
                m.causes = sample_causes(enc.vocab, m)
                results[k] = m
        out = [(*item, m) for item, m in zip(batch, results)]
        batch.clear()
        return out

    records = iter(records)
    while True:
        try:
            rec = next(records)
        except StopIteration:
            break
        except InvalidRecord:  # show what was read before the bad line, then stop there
            yield from flush()
            raise
        try:
            spec, _enc, smp = _prepare(rec, pool)
            batch.append((rec, spec, smp))
        except InvalidRecord as exc:
            if not skip_invalid:
                raise
            errors.append(exc)
        if len(batch) >= chunk:
            yield from flush()
    yield from flush()


def sample_diff(rec: Record, spec: str, smp, m: SampleMetrics, vocab, context: int) -> dict:
    """One sample's differences as plain data (what ``--json`` prints, one object per line)."""
    prompt = list(smp.prompt_ids or [])  # context shown from the prompt too
    full = prompt + list(smp.token_ids)
    p = len(prompt)
    spans = []
    for sp, cause in zip(m.spans, m.causes):
        start = p + sp["position"]
        end = start + len(sp["before"])
        left = max(0, start - context)
        spans.append({
            "position": sp["position"], "cause": cause,
            "generated": sp["before"], "canonical": sp["after"],
            "generated_tokens": token_strings(vocab, sp["before"]),
            "canonical_tokens": token_strings(vocab, sp["after"]),
            "context_before": token_strings(vocab, full[left:start]),
            "context_before_in_prompt": max(0, min(p, start) - left),
            "context_after": token_strings(vocab, full[end : end + context]),
            "more_before": left > 0, "more_after": end + context < len(full),
        })
    boundary = m.boundary_span
    meta = rec.meta
    turn = rec.turn
    drift = None
    if turn is not None and turn.drift and turn.drift_turn == turn.turn:
        drift = {"message": turn.drift_message, "cause": turn.drift_cause,
                 "position": turn.drift_position, "spans": [
                     {**sp, "sampled_tokens": token_strings(vocab, sp["sampled"]),
                      "rendered_tokens": token_strings(vocab, sp["rendered"])}
                     for sp in turn.drift_spans]}
    return {
        "source": rec.source, "line": rec.line, "id": rec.id,
        "model": str(meta.get("model") or spec), "tokenizer": spec,
        "temperature": meta.get("temperature"), "finish_reason": meta.get("finish_reason"),
        "n_tokens": m.n_tokens, "kind": m.kind, "n_spans": m.n_spans,
        "noncanonical_tokens": m.noncanonical_tokens, "spans": spans,
        "boundary": None if not boundary else {
            "generated_tokens": token_strings(vocab, boundary["before"]),
            "canonical_tokens": token_strings(vocab, boundary["after"])},
        **({} if turn is None else {"trajectory": turn.trajectory, "turn": turn.turn,
                                    "message": turn.message, "drift": drift}),
    }


def diff_records(path: str, *, tokenizer: str | dict | None = None, ids_field: str | None = None,
                 prompt_ids_field: str | None = None, record_id: str | None = None,
                 limit: int | None = 10, context: int = 3, in_context: bool = True,
                 skip_invalid: bool = False, stats: dict | None = None,
                 chat_template: str | None = None) -> Iterator[dict]:
    """The differences of each non-canonical sample of ``path`` (every sample with ``record_id``
    when given, canonical or not), at most ``limit`` samples; a trajectory's sampled turns are
    samples, and the turn its drift is attributed to also shows the drift (message, cause, the
    sampled and rendered tokens of each differing span). ``stats`` (a dict) receives the counts
    read so far: samples, non-canonical, trajectories, drift, shown, skipped, and whether
    reading stopped early."""
    from tmcli.aggregate.stored import is_stored_analysis
    from tmcli.io.records import read_records
    from tmcli.measure.records import TokenizerPool
    from tmcli.measure.turns import expand

    if is_stored_analysis(path):
        raise TmcliError(f"{path} is a stored analysis; diff needs the records themselves",
                         hint="give the raw outputs (.jsonl, or a table of ids)")
    if context < 0 or (limit is not None and limit < 1):
        raise TmcliError("--context must be >= 0 and --limit >= 1")
    stats = {} if stats is None else stats
    stats.update(samples=0, noncanonical=0, trajectories=0, drift=0, shown=0, skipped=0,
                 stopped=False)
    errors: list = []
    pool = TokenizerPool(tokenizer, window=64, context=in_context, chat_template=chat_template)
    records = read_records(path, ids_field=ids_field, prompt_ids_field=prompt_ids_field,
                           skip_invalid=skip_invalid, errors=errors)
    if record_id is not None:  # a trajectory's id, or one of its turns' (ID/turnK)
        records = (r for r in records if r.id == record_id or (
            r.trajectory is not None and record_id.startswith(f"{r.id}/turn")))
    records = expand(records, pool, skip_invalid=skip_invalid, errors=errors)
    if record_id is not None:
        records = (r for r in records if r.id == record_id
                   or (r.turn is not None and r.turn.trajectory == record_id))
    try:
        for rec, spec, smp, m in measured(records, pool, skip_invalid=skip_invalid, errors=errors):
            stats["samples"] += 1
            stats["noncanonical"] += bool(m.noncanonical)
            stats["skipped"] = len(errors)
            turn = rec.turn
            drifts = turn is not None and turn.drift and turn.drift_turn == turn.turn
            if turn is not None and turn.turn == 0:
                stats["trajectories"] += 1
                stats["drift"] += bool(turn.drift)
            if m.noncanonical or drifts or record_id is not None:
                yield sample_diff(rec, spec, smp, m, pool.encoder(spec).vocab, context)
                stats["shown"] += 1
                if limit is not None and stats["shown"] >= limit:
                    stats["stopped"] = True
                    return
    finally:
        stats["skipped"] = len(errors)
    if record_id is not None and stats["samples"] == 0:
        raise TmcliError(f"no record with id '{plain(record_id)}' in {path}",
                         hint="ids are the records' id (or request_id) field; n > 1 completions "
                         "are ID/INDEX")


def render(diff: dict):
    """One sample's differences as Rich `Text` (styles show on a terminal only; data is never
    read as markup)."""
    from rich.text import Text

    t = Text()
    t.append(f"{plain(diff['source'])}:{diff['line']}", style="bold")
    t.append(f"  id {plain(diff['id'])}  model {plain(diff['model'])}")
    if diff.get("temperature") is not None:
        t.append(f"  T={plain(diff['temperature'])}")
    if diff.get("trajectory") is not None:
        t.append(f"  turn {diff['turn']} (message {diff['message']})")
    if diff.get("drift"):
        _drift(t, diff["drift"])
    if not diff["spans"]:
        t.append("  the turn's ids: canonical\n" if diff.get("drift")
                 else "  canonical: no difference\n", style="green")
        return t
    t.append(f"  {diff['kind']}: {diff['noncanonical_tokens']} of {diff['n_tokens']} tokens "
             f"in {diff['n_spans']} span(s)\n")
    for k, sp in enumerate(diff["spans"], start=1):
        t.append(f"  span {k} at token {sp['position']}, "
                 f"{len(sp['generated'])} -> {len(sp['canonical'])} tokens: ")
        t.append(sp["cause"], style="bold yellow")
        t.append(f" — {DESCRIPTIONS.get(sp['cause'], '')}\n")
        before = sp["context_before"]
        n_prompt = sp["context_before_in_prompt"]
        shown = (SEP.join(before[:n_prompt]) + (" ‖ " if n_prompt else "")
                 + SEP.join(before[n_prompt:]))
        _row(t, "before", ("…" if sp["more_before"] else "") + shown, "dim")
        _row(t, "generated", SEP.join(sp["generated_tokens"]), "red")
        _row(t, "canonical", SEP.join(sp["canonical_tokens"]), "green")
        _row(t, "after", SEP.join(sp["context_after"]) + ("…" if sp["more_after"] else ""), "dim")
    if diff.get("boundary"):
        b = diff["boundary"]
        _row(t, "boundary", f"{SEP.join(b['generated_tokens'])} -> "
             f"{SEP.join(b['canonical_tokens'])} (merge across the prompt/completion boundary)",
             "dim")
    return t


def _drift(t, drift: dict) -> None:
    """A trajectory's drift: where the trainer's rendering first differs, and each span."""
    t.append("\n  drift: ", style="bold")
    t.append(drift["cause"] or "", style="bold yellow")
    t.append(f" at message {drift['message']}, token {drift['position']} — the chat template's "
             "rendering trains on other ids than were sampled\n")
    for sp in drift["spans"]:
        t.append(f"  drift span at token {sp['position']} (message {sp['message']}): ")
        t.append(sp["cause"], style="yellow")
        t.append("\n")
        _row(t, "sampled", SEP.join(sp["sampled_tokens"]) or "(nothing)", "red")
        _row(t, "rendered", SEP.join(sp["rendered_tokens"]) or "(nothing)", "green")


def _row(t, label: str, value: str, style: str) -> None:
    t.append(f"    {label:<10} ")
    t.append(value, style=style)
    t.append("\n")
