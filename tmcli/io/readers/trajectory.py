"""Trajectories token-in/token-out as tmcli and vLLM write them: ``messages`` (OpenAI chat format,
``tools`` beside them) with ``prompt_token_ids`` (the first prompt as fed to the model) and
``token_ids`` (every id after it: the sampled turns and the environment's turns between them),
and optionally ``response_mask`` or ``loss_mask`` (1 for the ids the model sampled).

Without a mask every id after the prompt counts as the model's: one sampled turn, the last
assistant message (a single-turn chat completion). `tmcli.measure.turns` checks the record.
"""

from __future__ import annotations

from tmcli.errors import InvalidRecord
from tmcli.io.readers.base import (
    MASK_FIELDS,
    Fields,
    Record,
    id_list,
    meta_of,
    record_id,
    trajectory_of,
)

NAME = "trajectory"


def matches(obj: dict, fields: Fields) -> bool:
    return isinstance(obj.get("messages"), list) and (fields.ids or "token_ids") in obj


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    name, prompt_name = fields.ids or "token_ids", fields.prompt_name
    ids = id_list(obj[name], source, line, name)
    if obj.get(prompt_name) is None:
        raise InvalidRecord(source, line, f"a trajectory (a record with 'messages') has no "
                            f"'{prompt_name}'", hint="give the first prompt's ids (or name "
                            "their field with --prompt-ids-field)")
    prompt = id_list(obj[prompt_name], source, line, prompt_name)
    traj = trajectory_of(obj, source, line, len(ids))
    meta = meta_of(obj, name, prompt_name, "messages", "tools", *MASK_FIELDS)
    return [Record(source, line, record_id(obj, line), ids, prompt, meta, trajectory=traj)]
