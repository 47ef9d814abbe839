"""Where a model or tokenizer spec's files are (a `Source`): an alias's (`Alias.source`), a GGUF
file, a local directory, or a hub id found in the local Hugging Face cache (asked of the hub at
most once, briefly; never with ``HF_HUB_OFFLINE=1``, see `tmcli.sources.hf_hub`).
"""

from __future__ import annotations

from pathlib import Path

from tmcli.errors import TmcliError
from tmcli.sources.aliases import ALIASES, Source, alias_names

__all__ = ["Source", "resolve_alias_source", "resolve_source"]


def resolve_alias_source(name: str) -> Source:
    """The local files behind alias ``name`` (`Alias.source`); KeyError for no such alias."""
    return ALIASES[name].source()


def resolve_source(spec: str, *, model: bool = False) -> Source:
    """Turn a user's model/tokenizer spec into local files: alias, GGUF file, directory, or hub id.

    A hub id resolves to its snapshot in the local Hugging Face cache without a request (with
    ``model``, only a snapshot that has the model's config.json); an id not cached is looked up
    once on the hub, within seconds (`tmcli.sources.hf_hub`), and an unknown one fails with one line."""
    if spec in ALIASES:
        return resolve_alias_source(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TmcliError(f"GGUF file not found: {spec}", hint="check the path")
        return Source(path.parent, path.name)
    if path.exists():
        if path.is_file():
            return Source(path.parent)
        return Source(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise TmcliError(f"no such file or directory: {spec}", hint=_alias_hint())
    from tmcli.sources import hf_hub

    aliases = alias_names(models=model)
    snapshot = hf_hub.resolve(spec, what="model" if model else "tokenizer", aliases=aliases,
                           model=model)
    return Source(snapshot, hub_id=spec) if snapshot else Source(None, hub_id=spec)


def _alias_hint() -> str:
    return "use a local path, a GGUF file, a cached hub id, or an alias: " + ", ".join(alias_names())
