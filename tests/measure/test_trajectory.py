"""The drift check on trajectories built independently with transformers' own
`apply_chat_template` (tests/trajectory_data.py), on Qwen3's template and SmolLM2's: every verdict,
message, cause and position below is known by construction, and the ids the check says a trainer
trains on are `apply_chat_template(messages, tokenize=True)` exactly."""

from __future__ import annotations

import pytest
from trajectory_data import (
    A1,
    A2,
    Q1,
    Q2,
    SYSTEM,
    WEATHER_TOOL,
    enc,
    qwen,
    render_ids,
    smol,
    trajectory,
    turn,
    user_env,
)

from tmcli.errors import TmcliError
from tmcli.measure.trajectory import TrajectoryError, check_trajectory

THINK = "<think>\n\n</think>\n\n"
NEWLINE = 198  # "\n": both tokenizers' id for the newline the templates write after <|im_end|>


def check(name, hf, messages, traj, **kw):
    """tmcli's verdict, with the trainer's ids checked against transformers' own."""
    c = check_trajectory(name, messages, traj["prompt_token_ids"], traj["token_ids"],
                         traj.get("response_mask"), **kw)
    assert c.rendered_ids == render_ids(hf, messages, tools=kw.get("tools"))
    return c


def qwen_conversation(first_answer: str, second_answer: str, reasoning: str | None = None):
    hf = qwen()
    first = {"role": "assistant", "content": A1}
    if reasoning is not None:
        first["reasoning_content"] = reasoning
    messages = [SYSTEM, {"role": "user", "content": Q1}, first, {"role": "user", "content": Q2},
                {"role": "assistant", "content": A2}]
    prompt = render_ids(hf, messages[:2], add_generation_prompt=True)
    traj = trajectory(prompt, [("model", turn(hf, first_answer)), ("env", user_env(hf, Q2)),
                               ("model", turn(hf, second_answer))])
    return messages, traj


def test_qwen3_clean_multi_turn_does_not_drift():
    hf = qwen()
    # sampled as Qwen3's template renders it: no think block before the last query, an empty
    # one in the last turn
    messages, traj = qwen_conversation(A1, THINK + A2)
    sampled = traj["prompt_token_ids"] + traj["token_ids"]
    assert render_ids(hf, messages) == sampled + [NEWLINE]  # by construction
    c = check("qwen3", hf, messages, traj)
    assert not c.drift and c.message is None and c.spans == [] and bool(c)
    assert [t.message for t in c.turns] == [2, 4]
    assert [(t.end - t.start) for t in c.turns] == [len(turn(hf, A1)), len(turn(hf, THINK + A2))]


def test_qwen3_reasoning_dropped_drifts_at_that_assistant_message():
    hf = qwen()
    think = "<think>\nadd them up\n</think>\n\n"
    messages, traj = qwen_conversation(think + A1, THINK + A2, reasoning="add them up")
    c = check("qwen3", hf, messages, traj)
    p = len(traj["prompt_token_ids"])  # the turn's first id: <think> sampled, dropped rendered
    assert (c.drift, c.message, c.cause, c.position, c.turn) == (True, 2, "template", p, 0)
    assert len(c.spans) == 1
    span = c.spans[0]
    assert (span.position, span.message, span.cause) == (p, 2, "template")
    assert hf.decode(span.sampled) == think and span.rendered == []


def test_qwen3_empty_think_block_added_to_the_last_turn():
    hf = qwen()
    messages = [SYSTEM, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    prompt = render_ids(hf, messages[:2], add_generation_prompt=True)
    traj = {"prompt_token_ids": prompt, "token_ids": turn(hf, A1)}  # no mask: one turn
    c = check("qwen3", hf, messages, traj)
    assert (c.drift, c.message, c.cause, c.position, c.turn) == (True, 2, "template",
                                                                 len(prompt), 0)
    assert [(s.sampled, hf.decode(s.rendered)) for s in c.spans] == [([], THINK)]


def tool_conversation(call_text: str):
    hf = qwen()
    call = {"type": "function", "function": {"name": "get_weather",
                                             "arguments": {"city": "Paris"}}}
    messages = [SYSTEM, {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": '{"temp": 21}'},
                {"role": "assistant", "content": "It is 21 degrees."}]
    prompt = render_ids(hf, messages[:2], tools=[WEATHER_TOOL], add_generation_prompt=True)
    env = enc(hf, '\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>'
                  "<|im_end|>\n<|im_start|>assistant\n")
    traj = trajectory(prompt, [("model", turn(hf, f"<tool_call>\n{call_text}\n</tool_call>")),
                               ("env", env), ("model", turn(hf, THINK + "It is 21 degrees."))])
    return messages, traj


def test_qwen3_tool_call_turn():
    hf = qwen()
    messages, traj = tool_conversation('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    sampled = traj["prompt_token_ids"] + traj["token_ids"]
    assert render_ids(hf, messages, tools=[WEATHER_TOOL]) == sampled + [NEWLINE]
    c = check("qwen3", hf, messages, traj, tools=[WEATHER_TOOL])
    assert not c.drift and [t.message for t in c.turns] == [2, 4]
    # the model wrote the arguments without spaces; the template re-serialises them with
    messages, traj = tool_conversation('{"name": "get_weather", "arguments": {"city":"Paris"}}')
    c = check("qwen3", hf, messages, traj, tools=[WEATHER_TOOL])
    assert (c.drift, c.message, c.cause, c.turn) == (True, 2, "template", 0)
    start = len(traj["prompt_token_ids"])
    assert start < c.position < start + len(turn(hf, "<tool_call>\n{}"))  + 20


def split_word(hf, word: str, cut: int) -> list[int]:
    """``word`` as two tokens where the tokenizer writes one."""
    whole, left, right = enc(hf, word), enc(hf, word[:cut]), enc(hf, word[cut:])
    assert len(whole) == len(left) == len(right) == 1
    return left + right


def test_qwen3_word_split_inside_a_turn_is_tokenization_at_that_message():
    hf = qwen()
    messages = [SYSTEM, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    prompt = render_ids(hf, messages[:2], add_generation_prompt=True)
    head = enc(hf, THINK + "It is")
    ids = head + split_word(hf, " four", 3) + enc(hf, ".")
    c = check("qwen3", hf, messages, {"prompt_token_ids": prompt, "token_ids": turn(hf, ids)})
    p = len(prompt) + len(head)
    assert (c.drift, c.message, c.cause, c.position, c.turn) == (True, 2, "tokenization", p, 0)
    assert [(s.position, s.sampled, s.rendered, s.cause) for s in c.spans] == [
        (p, split_word(hf, " four", 3), enc(hf, " four"), "tokenization")]


def smol_conversation(second_turn, env_text: str = Q2):
    hf = smol()
    messages = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
                {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]
    prompt = render_ids(hf, messages[:1], add_generation_prompt=True)
    traj = trajectory(prompt, [("model", turn(hf, A1)), ("env", user_env(hf, env_text)),
                               ("model", turn(hf, second_turn))])
    return messages, traj


def test_smollm2_clean_multi_turn_and_a_split_word_in_the_second_turn():
    hf = smol()
    messages, traj = smol_conversation(A2)
    sampled = traj["prompt_token_ids"] + traj["token_ids"]
    assert render_ids(hf, messages) == sampled + [NEWLINE]  # the default system prompt too
    c = check("smollm2-135m", hf, messages, traj)
    assert not c.drift and [t.message for t in c.turns] == [1, 3]
    head = enc(hf, "It is")
    messages, traj = smol_conversation(head + split_word(hf, " six", 2) + enc(hf, "."))
    c = check("smollm2-135m", hf, messages, traj)
    p = len(traj["prompt_token_ids"]) + c.turns[1].start - len(traj["prompt_token_ids"]) \
        + len(head)
    assert (c.drift, c.message, c.cause, c.position, c.turn) == (True, 3, "tokenization", p, 1)


def test_smollm2_whitespace_the_environment_added_is_template_drift_at_its_message():
    hf = smol()
    messages, traj = smol_conversation(A2, env_text=Q2 + " ")  # the loop sent "And 3+3? "
    c = check("smollm2-135m", hf, messages, traj)
    assert (c.drift, c.message, c.cause, c.turn) == (True, 2, "template", 1)


def test_a_transformers_tokenizer_gives_the_same_verdicts():
    hf = smol()  # what an RL loop holds: its own tokenizer object, its own template
    head = enc(hf, "It is")
    messages, traj = smol_conversation(head + split_word(hf, " six", 2) + enc(hf, "."))
    c = check_trajectory(hf, messages, traj["prompt_token_ids"], traj["token_ids"],
                         traj["response_mask"])
    assert (c.drift, c.message, c.cause, c.turn) == (True, 3, "tokenization", 1)
    assert c.rendered_ids == render_ids(hf, messages)


def test_trajectories_that_cannot_be_checked_say_why():
    hf = qwen()
    messages, traj = qwen_conversation(A1, THINK + A2)
    prompt, ids, mask = traj["prompt_token_ids"], traj["token_ids"], traj["response_mask"]
    with pytest.raises(TrajectoryError, match="no ids after the first prompt"):
        check_trajectory("qwen3", messages, prompt, [])
    with pytest.raises(TrajectoryError, match="mask has 3 entries"):
        check_trajectory("qwen3", messages, prompt, ids, mask[:3])
    with pytest.raises(TrajectoryError, match="marks no id"):
        check_trajectory("qwen3", messages, prompt, ids, [0] * len(ids))
    with pytest.raises(TrajectoryError, match="2 sampled turns but the messages hold 1"):
        check_trajectory("qwen3", messages[:3], prompt, ids, mask)
    with pytest.raises(TmcliError, match="'gpt2' has no chat template"):
        check_trajectory("gpt2", messages, prompt, ids, mask)
    with pytest.raises(TrajectoryError, match="chat template fails"):
        check_trajectory("qwen3", [{"role": "assistant", "content": None, "x": 1}], prompt,
                         ids[:2])
    assert hf is not None
