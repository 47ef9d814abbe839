"""`tmcli selftest`: canonically encoded text must come back 0% non-canonical.

This settles most pitfalls at once for a tokenizer (prefix spaces, byte fallback, normalisers,
special tokens, multi-byte characters): every text is encoded by the tokenizer itself, then
re-encoded by tmcli whole, and split into prompt + completion at several points. A positive
control (a word spelled one token per character) must be detected, or the test is meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmcli.gates.selftest_texts import varied_texts
from tmcli.measure.alignment import Sample
from tmcli.measure.reencode import Reencoder
from tmcli.measure.token_bytes import vocab_for

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " Leading space, and  two  spaces, and trailing space ",
    "Robert <unk> is an English film , television and theatre actor . He had a guest @-@ "
    "starring role on the television series The Bill in 2000 .",
    "naïve café résumé — “quotes” ‘single’ … ½ ± × ÷ € £ ¥",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀🎉👩‍👩‍👧‍👦 🇫🇷 and flags; math 𝔸𝔹ℂ",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\n\n\nclass A:\n    pass\n",
    "Numbers 1234567890 3.14159 -42 1e-9 0x1F 2024-11-23 12:30:45",
    "Mixed\r\nline\rendings\n\n\n   indented\ttabs\t\tdouble",
    "<|endoftext|> <s> </s> [INST] <bos> text that looks like special tokens",
    "ÀÉÎÕÜ àéîõü ß ẞ ﬁ ﬂ Ω ω ∑ ∫ √ ∞",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;:::---___===+++***&&&^^^%%%$$$###@@@",
    "https://example.org/path?query=1&b=2#frag user@example.com",
]


@dataclass
class SelftestResult:
    tokenizer: str
    family: str
    n_samples: int = 0
    n_noncanonical: int = 0
    n_boundary_merges: int = 0
    n_lossy: int = 0  # texts the tokenizer cannot encode losslessly (skipped)
    control_detected: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.n_noncanonical == 0 and self.control_detected

    def to_json(self) -> dict:
        return {"tokenizer": self.tokenizer, "family": self.family, "passed": self.passed,
                "n_samples": self.n_samples, "n_noncanonical": self.n_noncanonical,
                "n_boundary_merges": self.n_boundary_merges, "n_lossy": self.n_lossy,
                "control_detected": self.control_detected, "failures": self.failures}


def selftest(spec: str, texts: list[str] | None = None, *, splits: int = 4,
             n_generated: int = 400) -> SelftestResult:
    """Round-trip ``texts`` (default: a built-in multilingual set plus ``n_generated`` varied
    texts from `tmcli.gates.selftest_texts`) through tokenizer ``spec``.

    A text the tokenizer cannot encode losslessly (its vocabulary lacks a byte it needs, so
    ``encode`` drops it) is not a fixed point of encode∘decode: it is skipped and counted in
    ``n_lossy``, since the definition calls its ids non-canonical."""
    from tmcli.sources.tokenizers import private_copy

    vocab = vocab_for(spec)
    tok = private_copy(vocab.original, encode_special_tokens=True)  # a special's text is text
    enc = Reencoder(vocab, window=8)
    result = SelftestResult(spec, vocab.family)
    samples, labels = [], []
    for t, text in enumerate(texts or TEXTS + varied_texts(n_generated, seed=7)):
        ids = tok.encode(text, add_special_tokens=False).ids
        if not ids:
            continue
        try:
            lossless = tok.encode(vocab.spell(ids).decode("utf-8"),
                                  add_special_tokens=False).ids == ids
        except UnicodeDecodeError:
            lossless = False
        if not lossless:
            result.n_lossy += 1
            continue
        samples.append(Sample(ids))
        labels.append(f"text {t} whole")
        for k in range(1, splits + 1):
            cut = len(ids) * k // (splits + 1)
            if 0 < cut < len(ids):
                samples.append(Sample(ids[cut:], ids[:cut]))
                labels.append(f"text {t} split at token {cut}")
    for label, m in zip(labels, enc.measure(samples)):
        result.n_samples += 1
        result.n_boundary_merges += m.boundary_merge
        if m.noncanonical or m.boundary_merge:
            result.n_noncanonical += 1
            first = m.spans[0] if m.spans else None
            result.failures.append(
                f"{label}: {len(m.spans)} span(s), first {first}"
                + (" (boundary merge)" if m.boundary_merge else ""))
    result.control_detected = _control(vocab.original, enc)
    return result


def _control(tok, enc: Reencoder) -> bool:
    """A multi-character word spelled one character per token must be flagged as merged."""
    word = " together"
    ids = tok.encode(word, add_special_tokens=False).ids
    table = enc.vocab.bytes_to_id()
    found = [table.get(ch.encode()) for ch in word]
    spelled = [t for t in found if t is not None]
    if len(spelled) < len(found):
        return False
    m = enc.measure([Sample(spelled)])[0]
    return m.kind == "merged" and m.n_reencoded == len(ids)
