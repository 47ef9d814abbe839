"""Loading tokenizers as fast `tokenizers.Tokenizer`s, offline, and the private copies that
encode prompts and canonical text.

Conversions that need transformers (GGUF, SentencePiece ``.model``) run once and are cached as
tokenizer.json (first load 10-50 s, later ones well under a second).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from tmcli.errors import TmcliError, from_os_error, one_line
from tmcli.sources.aliases import ALIASES, cache_dir, write_atomically
from tmcli.sources.digest import content_digest
from tmcli.sources.gguf import _fix_gguf_tokenizer, _fix_sentencepiece_merges
from tmcli.sources.locate import Source, _alias_hint, resolve_source


@functools.lru_cache(maxsize=16)
def load_tokenizer(spec: str):
    """A fast `tokenizers.Tokenizer` for ``spec`` (alias, tokenizer.json, directory, GGUF, hub id).

    Conversions that need transformers (GGUF, SentencePiece .model) are cached as tokenizer.json.
    """
    from tokenizers import Tokenizer

    path = Path(spec).expanduser()
    _check_local(path, spec)
    if path.is_file() and path.suffix == ".json":
        return _tokenizer_file(path, spec)
    named = path.is_file() and path.suffix != ".gguf"  # a file, not its folder, must load
    source = Source(path.parent) if named else resolve_source(spec)
    if source.directory is not None and source.gguf_file is None and not named:
        tj = source.directory / "tokenizer.json"
        if tj.is_file():
            return _tokenizer_file(tj, spec)
    key = f"file:{_named_file_key(path)}" if named else source.key
    digest = hashlib.sha256(f"{CONVERSION}\0{key}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / digest / "tokenizer.json"
    if cached.is_file():
        return _tokenizer_file(cached, spec)
    hf = _load_named_file(path, spec) if named else load_hf_tokenizer(source, spec)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TmcliError(f"tokenizer {spec} has no fast (Rust) backend", hint="use a tokenizer.json")
    cached.parent.mkdir(parents=True, exist_ok=True)
    text = backend.to_str()
    if source.gguf_file and source.directory is not None:
        text = _fix_gguf_tokenizer(text, source.directory / source.gguf_file)
    elif named and path.suffix == ".model":
        text = _fix_sentencepiece_merges(text, path)
    elif not named and source.directory is not None \
            and (source.directory / "tokenizer.model").is_file():
        text = _fix_sentencepiece_merges(text, source.directory / "tokenizer.model")
    write_atomically(cached, text)
    return Tokenizer.from_file(str(cached))


def _named_file_key(path: Path) -> str:
    """A named tokenizer file's content, with the folder files read beside it
    (`_load_named_file`)."""
    parts = [content_digest(path)]
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (path.parent / name).is_file():
            parts.append(f"{name}:{content_digest(path.parent / name)}")
    return ",".join(parts)


_NOT_A_TOKENIZER_HINT = ("name a tokenizer.json, a SentencePiece .model, a GGUF file, a model "
                         "folder, a hub id or an alias")


def not_a_tokenizer(spec: str, what: str) -> TmcliError:
    """The error for a local file or folder that does not load as a tokenizer. It says what was
    expected, and nothing of what the file holds (a parser's message can quote it)."""
    return TmcliError(f"not a tokenizer: {spec} ({what})", hint=_NOT_A_TOKENIZER_HINT)


def _check_local(path: Path, spec: str) -> None:
    """A spec naming something local that cannot be a tokenizer fails here, saying what it is:
    a symbolic link loop or a dangling link, a device, a FIFO or a socket."""
    import stat

    if not os.path.lexists(path):
        return
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise from_os_error(exc, spec) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise not_a_tokenizer(spec, "a device, FIFO or socket, not a file")


def _tokenizer_file(path: Path, spec: str):
    """`Tokenizer.from_file`, with a corrupt file as one line naming it."""
    import re

    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        # where the parser stopped, never its words (serde quotes the values it rejects)
        at = re.search(r"line \d+ column \d+", str(exc))
        where = "it" if str(path) == spec else str(path)
        raise not_a_tokenizer(spec, f"{where} is not a valid tokenizer.json"
                              + (f": the JSON is wrong at {at.group()}" if at else "")) from None


def _load_named_file(path: Path, spec: str):
    """A transformers tokenizer from exactly the file named (e.g. ``dir/mytokenizer.model``),
    read as its folder's ``tokenizer.model`` with the folder's config but never the folder's
    own tokenizer.json, which would silently be another tokenizer."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(path.resolve(), Path(tmp) / "tokenizer.model")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (path.parent / name).is_file():
                os.symlink((path.parent / name).resolve(), Path(tmp) / name)
        try:
            return load_hf_tokenizer(Source(Path(tmp)), spec)
        except TmcliError as exc:
            if exc.message.startswith("not a tokenizer: "):  # said of the temporary folder
                raise not_a_tokenizer(spec, "not a SentencePiece model, nor named .json or .gguf") from None
            raise
        except Exception:  # sentencepiece/protobuf errors quote the file: never shown
            raise not_a_tokenizer(spec, "not a SentencePiece model, nor named .json or .gguf") from None


def private_copy(tokenizer, *, encode_special_tokens: bool):
    """A separate copy of a `tokenizers.Tokenizer`, with special-token strings in text kept as
    text (True) or parsed into special ids (False); changing it changes no other user."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.encode_special_tokens = encode_special_tokens
    return tok


def prompt_tokenizer(spec: str):
    """A tokenizer for encoding prompt *text*, separate from every other copy: text that spells a
    special token ("<unk>", "<|endoftext|>") stays text, and only the specials the tokenizer adds
    by itself (its post-processor's BOS) are added. A fresh object, so no other user of
    `load_tokenizer` can change how prompts are encoded, nor the other way round."""
    return private_copy(load_tokenizer(spec), encode_special_tokens=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The ids fed to a model for prompt ``text`` (see `prompt_tokenizer`)."""
    if not getattr(tokenizer, "encode_special_tokens", False):
        raise ValueError("encode prompts with a tokenizer from prompt_tokenizer()")
    return tokenizer.encode(text, add_special_tokens=True).ids


# Bump when the conversion below changes, so converted tokenizers cached by an older tmcli are
# rebuilt instead of reused.
CONVERSION = "tmcli-tokenizer-3"


def load_hf_tokenizer(source: Source, spec: str):
    """A transformers tokenizer (slow path: imports transformers). Used for conversion only."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        if source.directory is None:
            return AutoTokenizer.from_pretrained(source.hub_id)
        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        return AutoTokenizer.from_pretrained(str(source.directory), **kwargs)
    except ImportError as exc:  # a missing package: its name is the fix
        raise TmcliError(f"cannot load tokenizer '{spec}': {one_line(exc, 200)}",
                         hint="install the package it names") from None
    except Exception as exc:
        if source.directory is not None:  # local files: transformers' messages can quote them
            what = "a GGUF file transformers cannot read a tokenizer from" if source.gguf_file \
                else "a folder transformers finds no tokenizer in"
            raise not_a_tokenizer(spec, what) from None
        if not isinstance(exc, (OSError, ValueError)):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TmcliError(f"cannot load tokenizer '{spec}': {first}", hint=_alias_hint()) from None


def tokenizer_name(spec: str) -> str:
    """The name recorded in metadata for ``spec``: aliases stay aliases, paths become absolute."""
    if spec in ALIASES:
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec
