"""Trajectory records (messages + ids as sampled) as tmcli/vLLM, verl and SkyRL write them, in
JSONL and Parquet, detected per line like every other format; bad ones get one line each."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tmcli.errors import InvalidRecord
from tmcli.io.records import parse_line, read_records

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "and?"}, {"role": "assistant", "content": "so"}]


def line(**obj) -> bytes:
    return orjson.dumps(obj)


def test_each_layout_is_detected_with_its_mask():
    tmcli_rec = parse_line("f", 1, line(id="t", messages=MESSAGES, prompt_token_ids=[1, 2],
                                        token_ids=[3, 4, 5, 6], response_mask=[1, 0, 0, 1],
                                        model="m", chat_template_kwargs={"enable_thinking": False},
                                        tools=[{"type": "function"}]))[0]
    verl_rec = parse_line("f", 2, line(messages=MESSAGES, prompt_ids=[1, 2],
                                       response_ids=[3, 4, 5, 6], response_mask=[1, 0, 0, 1]))[0]
    skyrl_rec = parse_line("f", 3, line(messages=MESSAGES, prompt_ids=[1, 2],
                                        response_ids=[3, 4, 5, 6], loss_mask=[1, 1, 0, 1]))[0]
    for rec in (tmcli_rec, verl_rec, skyrl_rec):
        assert (rec.prompt_ids, rec.token_ids) == ([1, 2], [3, 4, 5, 6])
        assert rec.trajectory.messages == MESSAGES
    assert tmcli_rec.trajectory.mask == verl_rec.trajectory.mask == [1, 0, 0, 1]
    assert skyrl_rec.trajectory.mask == [1, 1, 0, 1]
    assert tmcli_rec.trajectory.template_kwargs == {"enable_thinking": False}
    assert tmcli_rec.trajectory.tools == [{"type": "function"}]
    assert tmcli_rec.meta == {"id": "t", "model": "m",
                              "chat_template_kwargs": {"enable_thinking": False}}
    assert verl_rec.id == "line2"
    # a record without messages is a plain completion, as before
    plain = parse_line("f", 4, line(prompt_token_ids=[1], token_ids=[2]))[0]
    assert plain.trajectory is None


@pytest.mark.parametrize("obj, message", [
    (dict(messages=MESSAGES, prompt_token_ids=[1], token_ids=[2, 3], response_mask=[1]),
     "'response_mask' has 1 entries for 2 ids after the prompt"),
    (dict(messages=MESSAGES, prompt_token_ids=[1], token_ids=[2, 3], loss_mask=[1, 2]),
     "'loss_mask' holds values other than 0 and 1"),
    (dict(messages=[], prompt_token_ids=[1], token_ids=[2]), "'messages' is empty"),
    (dict(messages=[{"content": "x"}], prompt_token_ids=[1], token_ids=[2]),
     r"messages\[0\] is not a message with a 'role'"),
    (dict(messages=MESSAGES, prompt_token_ids=[1], token_ids=[2], tools={"a": 1}),
     "'tools' must be a list"),
    (dict(messages=MESSAGES, token_ids=[2]), "has no 'prompt_token_ids'"),
    (dict(messages=MESSAGES, prompt_ids=[1], response_ids=[2, "x"]),
     "'response_ids' holds 'x'"),
])
def test_bad_trajectory_records_get_one_line(obj, message):
    with pytest.raises(InvalidRecord, match=message) as err:
        parse_line("f.jsonl", 7, orjson.dumps(obj))
    assert str(err.value).startswith("f.jsonl:7: ")


def test_parquet_rows_with_message_structs(tmp_path):
    # a table's struct column gives every row every field (null where a message had none)
    messages = [{"role": "user", "content": "hi", "reasoning_content": None},
                {"role": "assistant", "content": "yo", "reasoning_content": "think"}]
    table = pa.table({"messages": [messages, messages], "prompt_ids": [[1, 2], [1]],
                      "response_ids": [[3, 4], [5]], "response_mask": [[1, 1], [1]]})
    path = tmp_path / "rollouts.parquet"
    pq.write_table(table, path)
    recs = list(read_records(str(path)))
    assert [(r.line, r.prompt_ids, r.token_ids) for r in recs] == [(1, [1, 2], [3, 4]),
                                                                   (2, [1], [5])]
    assert recs[0].trajectory.messages == messages and recs[0].trajectory.mask == [1, 1]
