"""Known-answer tests of the measurement engine, with real tokenizers.

Every expected number is known by construction: a word spelled one token per character saves
exactly len-1 tokens, canonical text saves none, and so on.
"""

from __future__ import annotations

import pytest
from conftest import reencoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmcli.measure.alignment import Sample

FAMILIES = ["gpt2", "smollm2-135m", "mistral-v1", "gemma3-270m"]


def enc_ids(name: str, text: str) -> list[int]:
    return reencoder(name).vocab.original.encode(text, add_special_tokens=False).ids


def spell(name: str, text: str) -> list[int]:
    """``text`` spelled one token per character (each character must be a token)."""
    table = reencoder(name).vocab.bytes_to_id()
    return [table[ch.encode()] for ch in text]


@pytest.mark.parametrize("name", FAMILIES)
def test_canonical_text_is_canonical(name, wikitext_lines):
    r = reencoder(name)
    samples = []
    for line in wikitext_lines[:20]:
        ids = enc_ids(name, line)
        samples.append(Sample(ids))
        samples.append(Sample(ids[40:], ids[:40]))
    for m in r.measure(samples):
        assert m.compression == 0.0
        assert not m.noncanonical and m.spans == [] and m.kind == "canonical"
        assert not m.boundary_merge and m.byte_exact


@pytest.mark.parametrize("name", FAMILIES)
def test_word_spelled_per_character(name):
    r = reencoder(name)
    prompt = enc_ids(name, "We worked on it")
    word = spell(name, " together")  # 9 tokens; canonically " together" is one token
    assert len(enc_ids(name, "We worked on it together")) == len(prompt) + 1
    tail = enc_ids(name, " and it worked.")
    g = word + tail
    m = r.measure([Sample(g, prompt)])[0]
    assert m.n_tokens == 9 + len(tail)
    assert m.n_reencoded == 1 + len(tail)
    assert m.compression == pytest.approx(8 / (9 + len(tail)))
    assert m.kind == "merged" and m.noncanonical_tokens == 9
    assert m.spans == [{"position": 0, "before": word, "after": enc_ids(name, " together"),
                           "kind": "merged"}]
    assert m.first_divergence == 0 and not m.boundary_merge


def test_pair_that_reencodes_longer_is_negative():
    # STUDY.md: " loneliness" + "teacher" re-encodes to 4 tokens with SmolLM2's tokenizer.
    r = reencoder("smollm2-135m")
    tok = r.vocab.original
    g = [tok.token_to_id("Ġloneliness"), tok.token_to_id("teacher")]
    m = r.measure([Sample(g)])[0]
    assert m.n_reencoded == 4
    assert m.compression == -1.0
    assert m.kind == "lengthened" and m.noncanonical


def test_resegmented_same_length_different_ids():
    r = reencoder("smollm2-135m")
    tok = r.vocab.original
    g = [tok.token_to_id("Ġhe"), tok.token_to_id("rm")]
    m = r.measure([Sample(g)])[0]
    assert m.kind == "resegmented" and m.compression == 0.0 and m.noncanonical
    assert [tok.id_to_token(i) for i in m.spans[0]["after"]] == ["Ġher", "m"]


def test_multibyte_character_split_into_byte_tokens():
    r = reencoder("gpt2")
    table = r.vocab.bytes_to_id()
    e_acute = "é".encode()  # 2 bytes, emitted as two byte tokens
    g = enc_ids("gpt2", " caf") + [table[bytes([e_acute[0]])], table[bytes([e_acute[1]])]]
    canon = enc_ids("gpt2", " café")
    m = r.measure([Sample(g)])[0]
    assert m.byte_exact and m.n_reencoded == len(canon) < len(g)
    assert m.spans == [{"position": 0, "before": g, "after": canon, "kind": "merged"}]


def test_character_cut_at_the_end_is_counted_apart_not_miscounted():
    r = reencoder("gpt2")
    table = r.vocab.bytes_to_id()
    g = enc_ids("gpt2", " café au lait") + [table[b"\xe2"]]  # first byte of a 3-byte character
    m = r.measure([Sample(g)])[0]
    assert not m.byte_exact and m.cut_bytes == 1 and m.invalid_bytes == 0
    assert m.compression == 0.0 and not m.noncanonical and m.kind == "canonical"
    # the same byte anywhere but the very end is invalid UTF-8: non-canonical, its own kind
    m = r.measure([Sample(g + enc_ids("gpt2", " and more"))])[0]
    assert m.noncanonical and m.kind == "invalid_utf8" and m.invalid_bytes == 1
    assert m.spans == [{"position": len(g) - 1, "before": [table[b"\xe2"]],
                           "after": [table[b"\xe2"]], "kind": "invalid_utf8"}]


def test_invalid_utf8_mid_text_is_noncanonical_and_kept_verbatim():
    # A token spelling 2 of the 3 bytes of a Tamil letter, then ordinary text: no text encodes
    # to it, so it is non-canonical (kind invalid_utf8), kept as generated and counted, and the
    # text around it is judged as usual.
    r = reencoder("smollm2-135m")
    table = r.vocab.bytes_to_id()
    partial = table.get("அ".encode()[:2])
    assert partial is not None
    head = enc_ids("smollm2-135m", "The river")
    g = head + [partial] + enc_ids("smollm2-135m", " flows on")
    m = r.measure([Sample(g)])[0]
    assert m.noncanonical and m.kind == "invalid_utf8" and m.invalid_bytes == 2
    assert not m.byte_exact and m.compression == 0.0 and m.noncanonical_tokens == 1
    assert m.spans == [{"position": len(head), "before": [partial], "after": [partial],
                           "kind": "invalid_utf8"}]
    g2 = g + spell("smollm2-135m", " together")
    m2 = r.measure([Sample(g2)])[0]
    assert m2.n_tokens - m2.n_reencoded == 8 and m2.kind == "invalid_utf8"
    assert [s["kind"] for s in m2.spans] == ["invalid_utf8", "merged"]


def test_ids_the_tokenizer_lacks_are_noncanonical_not_an_error():
    # Real Qwen2.5 output at T>=1.5 samples unused embedding rows beyond the tokenizer.
    r = reencoder("gpt2")
    text = enc_ids("gpt2", "Hello there, general Kenobi.")
    g = text[:3] + [50257, 50300] + text[3:]
    m = r.measure([Sample(g)])[0]
    assert m.noncanonical and m.kind == "unknown_id" and m.unknown_ids == 2
    assert m.spans == [{"position": 3, "before": [50257, 50300], "after": [50257, 50300],
                           "kind": "unknown_id"}]
    assert m.compression == 0.0 and m.noncanonical_tokens == 2
    assert r.invalid_id(g) is None and r.invalid_id([1, -1]) == -1 and r.invalid_id([2**40]) == 2**40


def test_sentencepiece_completion_alone_has_no_false_prefix():
    # Out of context, Mistral's tokenizer would prepend "▁" to "ing" and call it non-canonical.
    r = reencoder("mistral-v1")
    ids = enc_ids("mistral-v1", "The cat was sitting on the mat quietly.")
    for cut in range(1, len(ids)):
        assert not r.measure([Sample(ids[cut:])])[0].noncanonical
        assert not r.measure([Sample(ids[cut:], ids[:cut])])[0].noncanonical
    # ...whereas the study's method (each window re-encoded alone) shows that artefact:
    study = reencoder("mistral-v1", 64).measure([Sample(ids[3:])], method="study")[0]
    tok = r.vocab.original
    alone = tok.encode(tok.decode(ids[3:]), add_special_tokens=False).ids
    assert study.study_compression == (len(ids[3:]) - len(alone)) / len(ids[3:])


def test_boundary_merge_reported_apart():
    r = reencoder("gpt2")
    tok = r.vocab.original
    prompt = enc_ids("gpt2", "I like to walk")
    g = [tok.token_to_id("ing")] + enc_ids("gpt2", " in the park.")
    assert len(enc_ids("gpt2", "I like to walking in the park.")) < len(prompt) + len(g)
    m = r.measure([Sample(g, prompt)])[0]
    assert m.boundary_merge and not m.noncanonical and m.compression == 0.0


def test_special_tokens_never_reencoded_as_text():
    r = reencoder("smollm2-135m")
    tok = r.vocab.original
    eos = tok.token_to_id("<|endoftext|>")
    text_ids = enc_ids("smollm2-135m", "Hello there.")
    m = r.measure([Sample(text_ids + [eos] + text_ids)])[0]
    assert not m.noncanonical and m.n_tokens == 2 * len(text_ids) + 1
    # The *text* "<|endoftext|>" spelled by ordinary tokens stays text: canonical as spelled.
    plain = r.vocab.encoder.encode("<|endoftext|>", add_special_tokens=False).ids
    assert eos not in plain
    assert not r.measure([Sample(plain)])[0].noncanonical


def test_aligned_windows_add_up_and_study_windows_follow_the_formula(wikitext_lines):
    W = 16
    r = reencoder("smollm2-135m", W)
    tok = r.vocab.original
    ids = enc_ids("smollm2-135m", wikitext_lines[0])[:100]
    # spell three words per character at known positions (10, 40, 90)
    g = []
    for i, t in enumerate(ids):
        piece = tok.id_to_token(t)
        if i in (10, 40, 90) and len(piece) > 1:
            g.extend(spell("smollm2-135m", r.vocab.token_bytes[t].decode()))
        else:
            g.append(t)
    m = r.measure([Sample(g)], method="study")[0]
    assert sum(m.window_delta) == pytest.approx(m.n_tokens - m.n_reencoded)
    assert m.n_tokens > m.n_reencoded
    assert sum(m.window_noncanonical) == m.noncanonical_tokens
    assert sum(m.window_tokens) == len(g)
    weighted = sum(c * t for c, t in zip(m.window_compression, m.window_tokens)) / len(g)
    assert weighted == pytest.approx(m.compression)
    expected = []
    for i in range(0, len(g), W):
        w = g[i : i + W]
        c = tok.encode(tok.decode(w, skip_special_tokens=True), add_special_tokens=True).ids
        expected.append((W - len(c)) / W)  # the script uses W, not len(w), even at the end
    assert m.study_window_compression == expected
    assert len(g) % W != 0  # so the short last window is exercised


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_invariants_on_random_ids(name, data):
    r = reencoder(name, 8)
    size = r.vocab.size
    g = data.draw(st.lists(st.integers(0, size - 1).filter(lambda i: bool(r.vocab.known[i])),
                           min_size=1, max_size=60))
    p = data.draw(st.lists(st.integers(0, size - 1).filter(lambda i: bool(r.vocab.known[i])),
                           max_size=10))
    m = r.measure([Sample(g, p)])[0]
    n = len(g)
    assert m.n_tokens == n
    assert m.compression == pytest.approx((n - m.n_reencoded) / n)
    assert sum(m.window_delta) == pytest.approx(n - m.n_reencoded)
    assert sum(m.window_noncanonical) == m.noncanonical_tokens <= n
    assert m.noncanonical == bool(m.spans) == (m.kind != "canonical")
    if m.spans:
        positions = [s["position"] for s in m.spans]
        assert positions == sorted(positions) and m.first_divergence == positions[0]
    if m.byte_exact:
        # Re-measuring the canonical form finds nothing: the re-encoding is a fixed point.
        canon, _ = r.canonical([p + g])
        assert not r.measure([Sample(canon[0])])[0].noncanonical
