"""What every reader shares: the `Record` it produces and the checks on id lists.

A reader turns one decoded JSON object (a JSONL line, or one row of a Parquet/Arrow table) into
records: (id, generated ids, prompt ids, metadata). Readers never load a tokenizer; a reader whose
format carries tokens as strings (OpenAI logprobs) leaves them in ``logprob_tokens`` for the
analysis to map with the record's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmcli.errors import InvalidRecord

DEFAULT_PROMPT_FIELD = "prompt_token_ids"
MASK_FIELDS = ("response_mask", "loss_mask")  # 1: sampled by the model (verl; SkyRL)


@dataclass
class Trajectory:
    """A multi-turn conversation as sampled, token-in/token-out: its ``messages`` (OpenAI chat
    format) and ``tools``, which ids after the first prompt the model sampled (``mask``: 1 for
    the model's, 0 for the environment's; None when the record gives no mask) and the template
    arguments the conversation was rendered with (``chat_template_kwargs``). The ids themselves
    are the record's: ``prompt_ids`` (the first prompt) and ``token_ids`` (everything after)."""

    messages: list
    tools: list | None = None
    mask: list[int] | None = None
    template_kwargs: dict = field(default_factory=dict)


@dataclass
class TurnColumns:
    """What a sampled turn's sample row carries of its trajectory: the trajectory's id, this
    turn's index among the sampled turns and its message, and the trajectory's verdict
    (``drift_turn``: the sampled turn at or after the first difference; ``drift_spans`` only on
    that turn's row). Filled by `tmcli.measure.turns`."""

    trajectory: str
    turn: int
    n_turns: int
    message: int
    drift: bool
    drift_message: int | None
    drift_cause: str | None
    drift_turn: int | None
    drift_position: int | None
    drift_spans: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Record:
    """One completion read from a file, before re-encoding.

    ``line`` is the input line (JSONL) or the 1-based row (Parquet/Arrow) it came from; one line
    can hold several completions (n > 1), which `tmcli filter` keeps or drops together.
    """

    source: str
    line: int
    id: str
    token_ids: list[int] | None
    prompt_ids: list[int] | None
    meta: dict = field(default_factory=dict)
    # OpenAI-style logprob tokens (bytes or strings) still to be mapped to ids
    logprob_tokens: list | None = None
    # a trajectory record (messages + ids as sampled), checked by `tmcli.measure.turns`
    trajectory: Trajectory | None = None
    # one sampled turn of a checked trajectory (`tmcli.measure.turns`)
    turn: TurnColumns | None = None


@dataclass(frozen=True)
class Fields:
    """Field names the user chose (``--ids-field``, ``--prompt-ids-field``); None = defaults."""

    ids: str | None = None
    prompt_ids: str | None = None

    @property
    def prompt_name(self) -> str:
        return self.prompt_ids or DEFAULT_PROMPT_FIELD


def id_list(value, source: str, line: int, name: str) -> list[int]:
    """``value`` as a list of integer ids, else a one-line error naming the field."""
    if not isinstance(value, list):
        raise InvalidRecord(source, line, f"'{name}' must be a list of integer token ids")
    if set(map(type, value)) - {int}:  # bool is not an id, and floats are not either
        v = next(v for v in value if type(v) is not int)
        raise InvalidRecord(source, line, f"'{name}' holds {v!r}, not an integer token id",
                            hint="token ids must be integers")
    return value


def prompt_ids(obj: dict, fields: Fields, source: str, line: int) -> list[int] | None:
    """The record's prompt ids (top-level field), or None when it has none."""
    value = obj.get(fields.prompt_name)
    if value is None:
        if fields.prompt_ids and fields.prompt_ids not in obj:
            raise InvalidRecord(source, line, f"no '{fields.prompt_ids}' field",
                                hint="check --prompt-ids-field against the file's field names")
        return None
    return id_list(value, source, line, fields.prompt_name)


def trajectory_of(obj: dict, source: str, line: int, n_ids: int) -> Trajectory:
    """The conversation part of a trajectory record: ``messages``, ``tools``, the mask of the
    ``n_ids`` ids after the first prompt (``response_mask``, else ``loss_mask``) and
    ``chat_template_kwargs``, each checked, with a one-line error naming the field."""
    messages = obj["messages"]
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRecord(source, line, f"messages[{k}] is not a message with a 'role'",
                                hint="messages are OpenAI chat messages: {\"role\": ..., "
                                "\"content\": ...}")
    if not messages:
        raise InvalidRecord(source, line, "'messages' is empty", hint="a trajectory needs its "
                            "conversation")
    tools = obj.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRecord(source, line, "'tools' must be a list of tool schemas")
    name = next((k for k in MASK_FIELDS if obj.get(k) is not None), None)
    mask = None
    if name is not None:
        mask = id_list(obj[name], source, line, name)
        if len(mask) != n_ids:
            raise InvalidRecord(source, line, f"'{name}' has {len(mask)} entries for {n_ids} ids "
                                "after the prompt", hint="the mask needs one 0/1 per id after "
                                "the first prompt")
        if set(mask) - {0, 1}:
            raise InvalidRecord(source, line, f"'{name}' holds values other than 0 and 1",
                                hint="1 marks an id the model sampled, 0 one the environment "
                                "added")
    kwargs = obj.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise InvalidRecord(source, line, "'chat_template_kwargs' must be an object")
    return Trajectory(list(messages), tools, mask, dict(kwargs))


def meta_of(obj: dict, *skip: str) -> dict:
    """Everything but the bulky id fields: model, tokenizer, temperature, prompt text..."""
    drop = {"token_ids", DEFAULT_PROMPT_FIELD, "outputs", "choices", "output_ids", *skip}
    return {k: v for k, v in obj.items() if k not in drop}


def record_id(obj: dict, line: int) -> str:
    return str(obj.get("id", obj.get("request_id", f"line{line}")))


def per_item(obj: dict, key: str, source: str, line: int, make) -> list[Record]:
    """One record per item of ``obj[key]`` (vLLM ``outputs``, OpenAI ``choices``): ``make(k,
    item)`` gives (ids, prompt ids, metadata, logprob tokens); ids are ``id`` or ``id/index``."""
    rid = record_id(obj, line)
    items = obj[key]
    return [Record(source, line, sub_id(rid, len(items), item, k), *make(k, item))
            for k, item in enumerate(items)]


def sub_id(rid: str, count: int, item: dict, k: int) -> str:
    """One id per completion: the response id alone, or ``id/index`` when it holds several."""
    return rid if count == 1 else f"{rid}/{item.get('index', k) if isinstance(item, dict) else k}"
