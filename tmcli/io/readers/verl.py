"""Trajectories as verl's agent loop (``AgentLoopOutput``) and SkyRL write them: ``prompt_ids``,
``response_ids`` (everything after the prompt: the sampled turns and the tool or environment
turns) and ``response_mask`` (verl) or ``loss_mask`` (SkyRL), 1 for the ids the model sampled,
with the conversation's ``messages`` beside them. `tmcli.measure.turns` checks the record.
"""

from __future__ import annotations

from tmcli.io.readers.base import (
    MASK_FIELDS,
    Fields,
    Record,
    id_list,
    meta_of,
    record_id,
    trajectory_of,
)

NAME = "verl"
IDS, PROMPT = "response_ids", "prompt_ids"


def matches(obj: dict, fields: Fields) -> bool:
    return isinstance(obj.get("messages"), list) and IDS in obj and PROMPT in obj


def read(obj: dict, source: str, line: int, fields: Fields) -> list[Record]:
    ids = id_list(obj[IDS], source, line, IDS)
    prompt = id_list(obj[PROMPT], source, line, PROMPT)
    traj = trajectory_of(obj, source, line, len(ids))
    meta = meta_of(obj, IDS, PROMPT, "messages", "tools", *MASK_FIELDS)
    return [Record(source, line, record_id(obj, line), ids, prompt, meta, trajectory=traj)]
