"""`check_trajectory`: does a multi-turn trajectory train on the ids it sampled?

An agent loop samples token-in/token-out: the first prompt's ids, then each turn's sampled ids
and the environment's ids between them. A trainer that rebuilds the conversation from its
``messages`` renders them with the chat template and trains on that encoding; where the two
differ it trains on ids the model never sampled ("retokenization drift").

The check does what such a trainer does, with transformers' own machinery: the messages are
rendered by `apply_chat_template` (the tokenizer's template and special tokens, ``tools`` and
the record's template arguments) and the text encoded as `apply_chat_template(tokenize=True)`
encodes it (special-token strings parsed, nothing added). The result is compared id for id
with the sampled ids (first prompt + everything after it):

- no difference, or only text the template writes after the last sampled end-of-turn token
  (a trailing newline), is no drift;
- otherwise ``position`` is the first differing id, ``message`` the index into ``messages``
  where it falls (the message of the sampled turn that holds it; elsewhere, the message whose
  text the rendered text is in, markup before a message counting as that message's), and
  ``cause`` is ``template`` when the rendered text differs from the sampled text there
  (reasoning dropped, an empty think block added, a tool call re-serialised, whitespace
  trimmed) and ``tokenization`` when the text is the same and the ids are not (non-canonical
  sampling, special-token parsing, a normaliser); every differing span is listed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

from tmcli.measure.chat_render import Renderer, TrajectoryError, renderer_for, spellings

__all__ = ["CAUSES", "DriftSpan", "Renderer", "TrajectoryCheck", "TrajectoryError", "Turn",
           "check_trajectory", "finish", "prepare", "renderer_for"]

CAUSES = ("template", "tokenization")
_MAX_DIFF = 40_000  # ids compared span by span; past this the rest is one span
_RUN = re.compile(b"\x01+")  # a run of ids the model sampled, in the mask's bytes


@dataclass
class DriftSpan:
    """One difference: from ``position`` (an index into prompt ids + ids after the prompt) the
    model sampled ``sampled`` where the trainer's rendering has ``rendered``."""

    position: int
    sampled: list[int]
    rendered: list[int]
    message: int
    cause: str


@dataclass
class Turn:
    """A turn the model sampled: ids [start, end) of prompt ids + ids after the prompt, and the
    assistant message (index into ``messages``) they are."""

    message: int
    start: int
    end: int


@dataclass
class TrajectoryCheck:
    """The verdict on one trajectory. ``drift`` is False when the trainer's rendering gives the
    sampled ids (up to text after the last sampled end-of-turn token); else ``position``,
    ``message``, ``cause`` and ``turn`` (the sampled turn at or after that message) say where
    the first difference is and why, and ``spans`` lists every difference. ``rendered_ids`` is
    what the trainer trains on."""

    drift: bool
    message: int | None
    cause: str | None
    position: int | None
    turn: int | None
    spans: list[DriftSpan] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    rendered_ids: list[int] = field(default_factory=list)
    n_ids: int = 0

    def __bool__(self) -> bool:  # `if check_trajectory(...)`: it trains on what it sampled
        return not self.drift


@dataclass
class _Pending:
    """A trajectory rendered and laid out, waiting for its encoding."""

    messages: list
    text: str
    ids: list[int]  # prompt ids + ids after the prompt
    mask: bytes  # 1 where the model sampled the id
    turns: list[Turn]


def prepare(renderer: Renderer, messages: list, prompt_ids: list[int], token_ids: list[int],
            mask: list[int] | None = None, *, tools=None, kwargs: dict | None = None) -> _Pending:
    """Lay a trajectory out (its sampled turns, each the assistant message it is) and render
    it; `TrajectoryError` for a record that cannot be checked."""
    prompt, after = prompt_ids, token_ids
    if not messages:
        raise TrajectoryError("no messages", hint="a trajectory needs its conversation")
    if not after:
        raise TrajectoryError("no ids after the first prompt (the ids are no longer than the "
                              "prompt)", hint="token_ids / response_ids hold every id after "
                              "the first prompt: the sampled turns and the environment's")
    if mask is None:
        if messages[-1].get("role") != "assistant":
            raise TrajectoryError("without a response_mask the ids after the prompt are the last "
                                  "message's, but it is not the assistant's",
                                  hint="give response_mask (1 for the ids the model sampled)")
        mask = [1] * len(after)
    elif len(mask) != len(after):
        raise TrajectoryError(f"the mask has {len(mask)} entries for {len(after)} ids after "
                              "the prompt", hint="one 0/1 per id after the first prompt")
    try:
        full_mask = bytes(len(prompt)) + bytes(mask)
    except (TypeError, ValueError):
        full_mask = b"?"
    if full_mask.translate(None, b"\x00\x01"):
        raise TrajectoryError("the mask holds values other than 0 and 1",
                              hint="1 marks an id the model sampled, 0 one the environment "
                              "added")
    runs = [m.span() for m in _RUN.finditer(full_mask)]
    starts, ends = [s for s, _e in runs], [e for _s, e in runs]
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not len(starts):
        raise TrajectoryError("the mask marks no id as sampled by the model",
                              hint="1 marks an id the model sampled")
    if len(starts) > len(assistant):
        raise TrajectoryError(f"the mask marks {len(starts)} sampled turns but the messages "
                              f"hold {len(assistant)} assistant message(s)",
                              hint="check that messages and ids are the same conversation")
    turns = [Turn(m, int(s), int(e)) for m, s, e in zip(assistant[-len(starts):], starts, ends)]
    text = renderer.render(messages, tools, kwargs or {})
    return _Pending(messages, text, prompt + after, full_mask, turns)


def _texts(message: dict) -> list[bytes]:
    """A message's own text, in order: its content (or content blocks' text), then each tool
    call's name and string arguments."""
    texts: list = []
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        texts += [b.get("text") for b in content if isinstance(b, dict)]
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        texts += [fn.get("name"), fn.get("arguments")] if isinstance(fn, dict) else []
    return [t.encode("utf-8", "surrogatepass") for t in texts if isinstance(t, str) and t.strip()]


def _anchors(messages: list, data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, message) of each message's own text in the rendered bytes, searched from
    the end (a message's text follows its header, which may repeat words of it); messages whose
    text is not there (empty, or dropped by the template) are left out."""
    out = []
    limit = len(data)
    for i in range(len(messages) - 1, -1, -1):
        found = []
        for t in reversed(_texts(messages[i])):
            k = data.rfind(t, 0, limit)
            if k >= 0:
                found.append((k, k + len(t)))
                limit = k
        if found:
            out.append((min(s for s, _ in found), max(e for _, e in found), i))
    return out[::-1]


def _clean_tail(pend: _Pending, tail: list[int], table: list[bytes]) -> bool | None:
    """Whether the rendered ids past the sampled ones are only template text after the last
    message's own text (None: cannot tell without the tokenizer's offsets)."""
    data = pend.text.encode("utf-8", "surrogatepass")
    spelled = b"".join(table[i] if 0 <= i < len(table) else b"\0" for i in tail)
    if not data.endswith(spelled):
        return None
    last = next((e for _s, e, _i in reversed(_anchors(pend.messages[-1:], data))), 0)
    return last <= len(data) - len(spelled)


class _Layout:
    """Byte offsets of the sampled ids and of the rendered ids in the rendered text, and which
    message a position is in."""

    def __init__(self, pend: _Pending, rendered: np.ndarray, renderer: Renderer, vocab):
        table, lengths = spellings(vocab)
        self.pend, self.table = pend, table
        size = len(table)
        a = np.asarray(pend.ids, dtype=np.int64)
        self.s_len = np.where((a >= 0) & (a < size), lengths[np.clip(a, 0, size - 1)], 0)
        self.s_end = np.cumsum(self.s_len)
        self.sampled = b"".join(table[i] if 0 <= i < size else b"" for i in a.tolist())
        self.text = pend.text.encode("utf-8", "surrogatepass")
        b_len = lengths[np.clip(rendered, 0, size - 1)]
        if b"".join(table[i] for i in rendered.tolist()) == self.text:
            self.r_end = np.cumsum(b_len)
            self.r_start = self.r_end - b_len
        else:  # a normaliser or prefix space: the tokenizer's own offsets
            self.r_start, self.r_end = renderer.offsets(pend.text)
        self._anchors: list | None = None

    def s_at(self, q: int) -> int:
        return int(self.s_end[q - 1]) if q > 0 else 0

    def r_at(self, q: int) -> int:
        return int(self.r_start[q]) if q < len(self.r_start) else len(self.text)

    def anchors(self) -> list:
        if self._anchors is None:
            self._anchors = _anchors(self.pend.messages, self.text)
        return self._anchors

    def message_at(self, q: int, x: int) -> int:
        """The message of sampled position ``q`` (its turn's, if the model sampled it), else
        of rendered byte ``x``: the first message whose text ends at or after it (a difference
        right at the end of a message's text is that message's; markup after it, the next's)."""
        pend = self.pend
        if q < len(pend.mask) and pend.mask[q]:
            return next(t.message for t in pend.turns if t.start <= q < t.end)
        return next((i for _s, e, i in self.anchors() if e >= x), len(pend.messages) - 1)

    def cause(self, q: int, sampled: list[int], rendered_from: int, rendered_to: int) -> str:
        """``tokenization`` when the sampled ids from ``q`` spell the rendered text of tokens
        [rendered_from, rendered_to), else ``template``."""
        got = b"".join(self.table[i] if 0 <= i < len(self.table) else b"\0" for i in sampled)
        start = self.r_at(rendered_from)
        end = int(self.r_end[rendered_to - 1]) if rendered_to > rendered_from else start
        return "tokenization" if got == self.text[start:end] else "template"


def _first_cause(lay: _Layout, p: int, a: np.ndarray, b: np.ndarray) -> str:
    """At the first difference: the same text up to the first token boundary both id sequences
    share after it (tokenization), or other text before that (template)."""
    if p >= len(a) or p >= len(b):
        return "template"  # text one side has and the other lacks
    s0, r0 = lay.s_at(p), lay.r_at(p)
    s_rel = lay.s_end[p:] - s0
    r_rel = lay.r_end[p:] - r0
    common = np.intersect1d(s_rel[s_rel > 0], r_rel[r_rel > 0])
    c = int(common[0]) if len(common) else min(len(lay.sampled) - s0, len(lay.text) - r0)
    same = lay.sampled[s0 : s0 + c] == lay.text[r0 : r0 + c] and c > 0
    return "tokenization" if same else "template"


def _spans(lay: _Layout, a: np.ndarray, b: np.ndarray, p: int, tail_ok: bool) -> list[DriftSpan]:
    if tail_ok:  # the rendered ids after the last sampled end-of-turn token are no span
        ends = np.flatnonzero(b[p:] == a[-1])
        b = b[: p + int(ends[-1]) + 1] if len(ends) else b
    n = min(len(a), len(b)) - p
    tail = np.flatnonzero(a[len(a) - n :][::-1] != b[len(b) - n :][::-1]) if n > 0 else None
    suffix = int(tail[0]) if tail is not None and len(tail) else max(n, 0)
    x, y = a[p : len(a) - suffix].tolist(), b[p : len(b) - suffix].tolist()
    ops: list = [("replace", 0, len(x), 0, len(y))] if len(x) + len(y) > _MAX_DIFF else \
        difflib.SequenceMatcher(None, x, y, autojunk=False).get_opcodes()
    out = []
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal" or (tail_ok and tag == "insert" and i1 == len(x) and not suffix):
            continue  # (text after the last sampled end-of-turn token is not drift)
        q = p + i1
        out.append(DriftSpan(q, x[i1:i2], y[j1:j2], lay.message_at(q, lay.r_at(p + j1)),
                             lay.cause(q, x[i1:i2], p + j1, p + j2)))
    return out


def finish(pend: _Pending, rendered_ids: list[int], renderer: Renderer, vocab) -> TrajectoryCheck:
    """The verdict on a prepared trajectory, given the encoding of its rendered text."""
    ids = pend.ids

    def verdict(message: int | None = None, cause: str | None = None, p: int | None = None,
                turn: int | None = None, spans: list | None = None) -> TrajectoryCheck:
        return TrajectoryCheck(message is not None, message, cause, p, turn, spans or [],
                               pend.turns, rendered_ids, len(ids))

    if ids == rendered_ids:  # (lists compared in C: the common cases cost next to nothing)
        return verdict()
    last = ids[-1]
    tail_ok = bool(0 <= last < len(vocab.special) and vocab.special[last] and pend.mask[-1])
    clean: bool | None = False
    if tail_ok and rendered_ids[: len(ids)] == ids:
        clean = _clean_tail(pend, rendered_ids[len(ids) :], spellings(vocab)[0])
        if clean:  # only text after the last sampled end-of-turn token, no message's
            return verdict()
    a, b = np.asarray(ids, dtype=np.int64), np.asarray(rendered_ids, dtype=np.int64)
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    p = int(differ[0]) if len(differ) else n
    lay = _Layout(pend, b, renderer, vocab)
    if clean is None and not any(e > lay.r_at(p) for _s, e, _i in lay.anchors()):
        return verdict()
    message = lay.message_at(p, lay.r_at(p))
    turn = next((k for k, t in enumerate(pend.turns) if t.start <= p < t.end), None)
    if turn is None:
        turn = next((k for k, t in enumerate(pend.turns) if t.message >= message),
                    len(pend.turns) - 1)
    return verdict(message, _first_cause(lay, p, a, b), p, turn, _spans(lay, a, b, p, tail_ok))


def check_trajectory(tokenizer, messages: list, prompt_ids, token_ids, response_mask=None, *,
                     tools: list | None = None, chat_template: str | None = None,
                     template_kwargs: dict | None = None) -> TrajectoryCheck:
    """Whether a trainer that rebuilds this trajectory from ``messages`` trains on the ids it
    sampled: ``prompt_ids`` (the first prompt as fed), ``token_ids`` (every id after it: the
    sampled turns and the environment's) and ``response_mask`` (1 for the model's ids; None:
    all of them, one turn). See the module docstring for the verdict."""
    renderer, vocab = renderer_for(tokenizer, chat_template)
    mask = None if response_mask is None else _ids(response_mask)
    pend = prepare(renderer, list(messages), _ids(prompt_ids), _ids(token_ids), mask,
                   tools=tools, kwargs=template_kwargs)
    return finish(pend, renderer.encode([pend.text])[0], renderer, vocab)


def _ids(values) -> list[int]:
    """A list of ids from a list, numpy array or torch tensor."""
    return values.tolist() if hasattr(values, "tolist") else list(values)
