"""Shared test set-up: offline, a persistent converted-tokenizer cache, real tokenizers."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIKITEXT = SHARED / "data" / "wikitext-2-test.txt"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# GGUF tokenizer conversion takes 10-60 s; keep it between runs (ignored by git).
os.environ.setdefault("TMCLI_CACHE", str(ROOT / ".cache" / "tmcli-test"))
os.environ.setdefault("COLUMNS", "160")
# vLLM imports setuptools (through torch.utils.cpp_extension); if stdlib distutils was imported
# earlier in the session, setuptools' distutils shim then fails an assertion. Keep stdlib's.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")


@functools.lru_cache(maxsize=None)
def reencoder(name: str, window: int = 64, context: bool = True):
    from tmcli.measure.reencode import Reencoder
    from tmcli.measure.token_bytes import vocab_for

    return Reencoder(vocab_for(name), window=window, context=context)


@pytest.fixture(scope="session")
def wikitext_lines() -> list[str]:
    if not WIKITEXT.exists():
        pytest.skip(f"{WIKITEXT} not found (tests read the shared WikiText file)")
    return [line.strip() for line in WIKITEXT.read_text(encoding="utf-8").splitlines()
            if len(line) > 640]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    path = os.environ.get("TMCLI_CACHE") or str(tmp_path_factory.mktemp("tmcli-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMCLI_CACHE", path)
        yield Path(path)


@pytest.fixture(scope="session")
def smol(cache):
    """The real SmolLM2-135M (converted from its GGUF once per cache) and its tokenizer."""
    from tmcli.sources.models import load_model
    from tmcli.sources.tokenizers import load_tokenizer

    return load_model("smollm2-135m", "cpu"), load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def local_ray(cache):
    """A small local Ray (2 CPUs, an 80 MiB object store, no dashboard) for the tests that scale
    out, started once (its start-up takes seconds) by the first test that asks for it. Started
    after `cache`, so its workers inherit TMCLI_CACHE."""
    import logging

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tmcli[ray]')")
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()
