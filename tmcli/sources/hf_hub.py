"""Hugging Face hub ids: the local cache first, then at most one short look at the hub.

Left to itself, transformers retries an unreachable hub for 25-55 s and then blames the network
even for a mistyped name. Here a hub id resolves to its cached snapshot without any request; an
id that is not cached costs one request with a hard deadline (`PROBE_SECONDS`), and failing that,
one line says both things the user needs: the name is unknown locally, and the hub could not be
asked (or answered that no such repository exists).
"""

from __future__ import annotations

import difflib
import functools
import os
import threading
from pathlib import Path

from tmcli.errors import TmcliError

PROBE_SECONDS = 4.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it."""
    return any(os.environ.get(v, "").upper() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def cached_repos() -> list[str]:
    """Model ids with a folder in the local hub cache (names only; nothing is read)."""
    try:
        names = os.listdir(_hub_cache())
    except OSError:
        return []
    return [n[len("models--"):].replace("--", "/") for n in names if n.startswith("models--")]


def cached_snapshot(repo_id: str, *, model: bool = False) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (no network), or None. With ``model``, a
    snapshot without a config.json (only a tokenizer was fetched) does not count."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True,
                                        cache_dir=_hub_cache()))
    except Exception:  # LocalEntryNotFoundError, or a half-written cache entry
        return None
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    if model and not (folder / "config.json").is_file():
        return None
    return folder


@functools.lru_cache(maxsize=32)
def probe(repo_id: str) -> str:
    """One look at the hub, within `PROBE_SECONDS`: "exists", "missing", "gated" or
    "unreachable" (no answer in time, or no connection)."""
    from huggingface_hub import HfApi  # imported here: the deadline is for the network alone
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    result = ["unreachable"]

    def ask():
        try:
            HfApi().model_info(repo_id, timeout=PROBE_SECONDS)
            result[0] = "exists"
        except GatedRepoError:
            result[0] = "gated"
        except RepositoryNotFoundError:
            result[0] = "missing"
        except Exception:  # connection refused, DNS, TLS, proxy, 5xx: the hub did not answer
            result[0] = "unreachable"

    thread = threading.Thread(target=ask, daemon=True)  # a hung DNS lookup ignores timeouts
    thread.start()
    thread.join(PROBE_SECONDS)
    return result[0]


def _unknown(spec: str, what: str, why: str, aliases) -> TmcliError:
    close = difflib.get_close_matches(spec, list(aliases) + cached_repos(), n=1, cutoff=0.6)
    hint = (f"did you mean '{close[0]}'? " if close else "") + \
        f"{what} aliases: " + ", ".join(aliases) + "; or a local path, a GGUF file, a hub id"
    return TmcliError(f"unknown {what} '{spec}': not an alias, a local path, or in the local "
                      f"Hugging Face cache, {why}", hint=hint)


def resolve(spec: str, *, what: str, aliases, model: bool = False) -> Path | None:
    """Where hub id ``spec`` is: its cached snapshot, or None when the hub has it (transformers
    then downloads it). Raises the one-line error otherwise, within a few seconds."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except Exception:
        raise _unknown(spec, what, "and not a valid hub id", aliases) from None
    folder = cached_snapshot(spec, model=model)
    if folder is not None:
        return folder
    if offline():
        raise _unknown(spec, what, "and the hub was not asked (HF_HUB_OFFLINE is set)",
                       aliases)
    state = probe(spec)
    if state == "exists":
        return None
    if state == "gated":
        raise TmcliError(f"'{spec}' is gated on the Hugging Face hub",
                         hint="accept its terms on huggingface.co, then log in: hf auth login")
    if state == "missing":
        raise _unknown(spec, what, "and the Hugging Face hub has no such repository (or it "
                                   "is private: log in with hf auth login)", aliases)
    raise _unknown(spec, what, "and the Hugging Face hub is unreachable (no network?)", aliases)
