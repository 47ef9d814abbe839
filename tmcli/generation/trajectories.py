"""`generate --turns N`: multi-turn conversations sampled token-in/token-out, as an agent loop
samples them, written as trajectory records that `analyze` checks for drift.

Each conversation takes N consecutive prompts of the prompt file as its user turns. The first
prompt's ids are the chat template's rendering of the first user message with the generation
prompt (transformers' `apply_chat_template`, the model's own template), encoded as a trainer
encodes it. The model then samples until its end-of-turn token (kept: it is sampled), and the
next user turn's ids are the template's text between that token and the next generation prompt,
encoded the same way and appended to the ids as they are: the sampled ids are never re-encoded.
A turn that reaches ``max_new_tokens`` without ending ends its conversation there
(``finish_reason`` ``length``), as an agent loop stops.

Every engine and the sampler are the sweep's (`tmcli.generation.engines`): all active turns of
all conversations, temperatures and truncation settings decode together, each row with its own
seeded generator. The sampling axes are the sweep's too (`sweep.truncation_grid`,
`truncation.sampling_axes`): one conversation per (model, user turns, temperature, truncation
setting), its truncation applied to every turn, and recorded as single-turn records state it. A
record is written when its conversation ends; a rerun skips the conversations already written.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tmcli.errors import TmcliError
from tmcli.generation.progress import NoProgress, Progress
from tmcli.generation.prompts import Prompt
from tmcli.generation.sweep import GenerateInterrupted, GenerateSummary, row_seed, truncation_grid
from tmcli.generation.truncation import NONE, Truncation, sampling_axes, truncation_arg


@dataclass
class _Conversation:
    """One conversation at one temperature and truncation setting, as far as it has been
    sampled."""

    id: str
    index: int
    users: list[Prompt]
    temperature: float
    truncation: Truncation = NONE
    messages: list = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    finish_reason: str = "eos"
    done: bool = False

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.token_ids


def conversations_of(prompts: Sequence[Prompt], turns: int) -> list[list[Prompt]]:
    """Consecutive groups of ``turns`` prompts (a last, shorter group is left out)."""
    if turns < 1:
        raise TmcliError(f"--turns must be positive, got {turns}")
    groups = [list(prompts[i : i + turns]) for i in range(0, len(prompts) - turns + 1, turns)]
    if not groups:
        raise TmcliError(f"--turns {turns} needs at least {turns} prompts (one conversation "
                         f"takes {turns} consecutive prompts as its user turns); got "
                         f"{len(prompts)}", hint="give more prompts or fewer --turns")
    return groups


def conversation_id(model: str, users: list[Prompt], temperature: float, seed: int, *,
                    max_new_tokens: int, template: str, truncation: Truncation = NONE) -> str:
    """Readable and deterministic; the digest covers the user turns, lengths and template.
    Truncation is in the id only when it truncates (as in `sweep.record_id`), so a
    pure-sampling conversation keeps the id it always had."""
    extra, cut = truncation.id_parts()
    key = "\0".join([model, *(u.text for u in users), repr(temperature), str(seed),
                     str(max_new_tokens), template]) + extra
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{model}:T{temperature:g}:{cut}c{users[0].index}:s{seed}:turns{len(users)}:{digest}"


def end_of_turn(renderer, eos_ids: Sequence[int], vocab) -> int:
    """The id that ends an assistant turn: the model's one EOS id, or of several the one the
    template writes right after an assistant message's text."""
    if len(eos_ids) == 1:
        return int(eos_ids[0])
    text = renderer.render([{"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"}], None, {})
    after = text[text.rfind("b") + 1 :]
    for i in eos_ids:
        name = vocab.original.id_to_token(int(i))
        if name and after.startswith(name):
            return int(i)
    raise TmcliError(f"cannot tell which of the end-of-sequence ids {list(eos_ids)} ends an "
                     "assistant turn in this chat template",
                     hint="use a model whose template closes a turn with one of them")


def _env_ids(renderer, conv: _Conversation, user: Prompt, eot_text: str) -> list[int]:
    """The ids of the template's text from the end of the last sampled turn to the next
    generation prompt (the next user message included)."""
    before = renderer.render(conv.messages, None, {})
    after = renderer.render([*conv.messages, {"role": "user", "content": user.text}], None,
                            {"add_generation_prompt": True})
    k = before.rfind(eot_text) + len(eot_text)
    if k < len(eot_text) or after[:k] != before[:k]:
        raise TmcliError("the chat template renders earlier messages differently once a "
                         "message is added, so a conversation cannot grow token-in/token-out "
                         "with it", hint="use a template that appends (ChatML templates do)")
    return renderer.encode([after[k:]])[0]


def generate_trajectories(models: str | Sequence[str], prompts: Sequence[Prompt | str],
                          output: str | os.PathLike, *, turns: int,
                          temperatures: Sequence[float] | None = None,
                          top_k: int | Sequence[int] | None = None,
                          top_p: float | Sequence[float] | None = None,
                          min_p: float | Sequence[float] | None = None,
                          sampling_config: str | None = None, max_new_tokens: int = 256,
                          seed: int = 0, device: str = "auto", dtype: str = "auto",
                          threads: int | None = None, batch_size: int | None = None,
                          trust_remote_code: bool = False, engine: str = "auto",
                          progress: Progress | None = None) -> GenerateSummary:
    """One trajectory record per (model, conversation, temperature, truncation setting) into
    ``output`` (JSONL), resuming; see the module docstring. ``temperatures``, ``top_k``,
    ``top_p``, ``min_p``, ``sampling_config`` and ``progress`` are as for `sweep.generate`."""
    from tmcli import __version__
    from tmcli.generation.engines import EngineOptions, load_engine, resolve_engine
    from tmcli.io.writer import RecordWriter, existing_ids
    from tmcli.measure.chat_render import renderer_for
    from tmcli.sources.models import model_prompt_tokenizer, needs_conversion
    from tmcli.sources.tokenizers import tokenizer_name

    models = [models] if isinstance(models, str) else list(dict.fromkeys(models))
    chosen = [p if isinstance(p, Prompt) else Prompt(i, p) for i, p in enumerate(prompts)]
    temperatures = None if temperatures is None else \
        list(dict.fromkeys(float(t) for t in temperatures))
    cuts = truncation_grid(top_k, top_p, min_p, sampling_config)
    if not models or not chosen:
        raise TmcliError("no model or no prompts given", hint="pass --model and --prompts")
    if temperatures is not None and (not temperatures or any(t < 0 or t != t for t in temperatures)):
        raise TmcliError("temperatures must be >= 0", hint="e.g. --temperatures 0,1")
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                        ("--threads", threads)):
        if value is not None and value <= 0:
            raise TmcliError(f"{flag} must be positive, got {value}")
    groups = conversations_of(chosen, turns)
    progress = progress or NoProgress()
    out = Path(output)
    done = existing_ids(out)  # reads only: a torn last line is cut by the first write
    summary = GenerateSummary(str(out), models=models)
    try:
        with RecordWriter(out) as writer:
            for spec in models:
                model_prompt_tokenizer(spec)  # an unknown model fails here, before loading
                renderer, vocab = renderer_for(tokenizer_name(spec))
                temps, spec_cuts = sampling_axes(spec, temperatures, cuts, sampling_config,
                                                 trust_remote_code=trust_remote_code,
                                                 note=progress.note)
                convs = []
                for users in groups:
                    for t in temps:
                        for cut in spec_cuts:
                            cid = conversation_id(spec, users, t, seed, truncation=cut,
                                                  max_new_tokens=max_new_tokens,
                                                  template=renderer.template)
                            if cid in done:
                                summary.skipped += 1
                            else:
                                convs.append(_Conversation(cid, users[0].index, users, t, cut))
                if not convs:
                    continue
                name = resolve_engine(engine, spec, device)
                if needs_conversion(spec):
                    progress.note(f"converting {spec} to a checkpoint (first use, 20-90 s)")
                progress.describe(f"loading {spec}")
                started = time.perf_counter()
                eng = load_engine(engine, spec, EngineOptions(
                    device=device, dtype=dtype, threads=threads,
                    trust_remote_code=trust_remote_code,
                    progress=progress.bars), resolved=name)
                summary.load_seconds += time.perf_counter() - started
                try:
                    _run(eng, convs, renderer, vocab, writer, summary, progress, turns=turns,
                         seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         version=__version__, sampling_config=sampling_config)
                finally:
                    eng.close()
    except KeyboardInterrupt:
        raise GenerateInterrupted(summary) from None
    return summary


def _run(eng, convs: list[_Conversation], renderer, vocab, writer, summary, progress, *,
         turns: int, seed: int, max_new_tokens: int, batch_size: int | None,
         version: str, sampling_config: str | None = None) -> None:
    """Sample every conversation turn by turn on ``eng``, writing each when it ends."""
    eot = end_of_turn(renderer, eng.eos_ids, vocab)
    eot_text = vocab.original.id_to_token(eot)
    eng.eos_ids = (eot,)  # a turn ends at the template's end-of-turn token, as a stop id
    meta = eng.metadata()
    sampling = {"repetition_penalty": 1.0, "min_new_tokens": 0, "max_new_tokens": max_new_tokens,
                "stop_at_eos": True, "eos_token_ids": [eot],
                **({"config": sampling_config} if sampling_config else {})}
    progress.start(len(convs) * turns * max_new_tokens)
    progress.describe(f"{eng.spec} ({meta['engine']}, {turns} turns)")
    for conv in convs:
        conv.messages = [{"role": "user", "content": conv.users[0].text}]
        conv.prompt_ids = renderer.encode([renderer.render(
            conv.messages, None, {"add_generation_prompt": True})])[0]
    started = time.perf_counter()
    try:
        for turn in range(turns):
            active = sorted((c for c in convs if not c.done), key=lambda c: -len(c.ids))
            if not active:
                break
            size = eng.batch_size(len(active[0].ids) + max_new_tokens, batch_size, len(active))
            for b in range(0, len(active), size):
                batch = active[b : b + size]
                seeds = [row_seed(Prompt(c.index, "\0".join(u.text for u in c.users[: turn + 1])),
                                  c.temperature, seed) for c in batch]
                results = eng.decode([c.ids for c in batch], list(range(len(batch))),
                                     [c.temperature for c in batch], seeds, mode="off",
                                     max_new_tokens=max_new_tokens, stop_at_eos=True,
                                     **truncation_arg([c.truncation for c in batch]),
                                     on_step=progress.advance)
                for conv, (gen, reason, _stats) in zip(batch, results):
                    _take_turn(conv, gen, reason, eot, eot_text, renderer, vocab, turn, turns)
                    summary.new_tokens += len(gen)
                progress.advance(sum(max_new_tokens - len(g) for g, *_ in results))
                finished = [c for c in batch if c.done]
                if finished:
                    writer.write([_record(c, eng, meta, sampling, seed, size, version)
                                  for c in finished])
                    summary.written += len(finished)
    finally:
        summary.seconds += time.perf_counter() - started


def _take_turn(conv: _Conversation, gen: list[int], reason: str, eot: int, eot_text: str,
               renderer, vocab, turn: int, turns: int) -> None:
    """Append one sampled turn (and, unless it was the last, the next user turn's ids)."""
    sampled = list(gen) + ([eot] if reason == "eos" else [])
    conv.token_ids += sampled
    conv.mask += [1] * len(sampled)
    conv.messages.append({"role": "assistant",
                          "content": vocab.original.decode(list(gen), skip_special_tokens=False)})
    if reason != "eos":
        conv.finish_reason, conv.done = reason, True
        return
    if turn + 1 == turns:
        conv.done = True
        return
    user = conv.users[turn + 1]
    env = _env_ids(renderer, conv, user, eot_text)
    conv.token_ids += env
    conv.mask += [0] * len(env)
    conv.messages.append({"role": "user", "content": user.text})


def _record(conv: _Conversation, eng, meta: dict, sampling: dict, seed: int, size: int,
            version: str) -> dict:
    """``sampling``: the settings every conversation of the run shares (lengths, stop ids)."""
    return {
        "id": conv.id, "model": eng.spec, "model_id": eng.model_id, "tokenizer": eng.tokenizer,
        "temperature": conv.temperature, **conv.truncation.as_dict(), "prompt_index": conv.index,
        "prompt": conv.users[0].text, "messages": conv.messages,
        "prompt_token_ids": conv.prompt_ids, "token_ids": conv.token_ids,
        "response_mask": conv.mask, "n_turns": sum(m["role"] == "assistant"
                                                  for m in conv.messages),
        "finish_reason": conv.finish_reason, "seed": seed,
        "sampling": {"do_sample": conv.temperature > 0, "temperature": conv.temperature,
                     **conv.truncation.as_dict(), **sampling},
        "canonical": "off", **meta, "batch_size": size, "tmcli_version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
