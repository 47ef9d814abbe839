"""Varied text for self-tests: many scripts, other scripts' numerals, whitespace runs of every
length, code, emoji, normalisation traps and special-token look-alikes, generated from a seed.

Canonically encoded, every one of these texts must come back 0% non-canonical (`tmcli selftest`,
the test suite). The pools are chosen to reach the places where a tokenizer's rules differ between
implementations: Unicode categories (letters vs numerals vs marks, ``str.isnumeric()`` vs ``\\p{N}``),
whitespace classes and lookaheads, byte fallback, normalisers (NFC, compatibility characters) and
added or special tokens spelled as text.
"""

from __future__ import annotations

import random

POOLS: dict[str, list[str]] = {
    "latin": ["the", " the", "The", "cat", " quick", " brown", "fox", " jumps", "ing", "tion",
              " naïve", " café", " résumé", "straße", " STRASSE", "ﬁ", "ﬂ", "Æ", "œ", "ß", "ẞ",
              " loneliness", "teacher", "'s", "'ll", "'RE", "'T", "n't", "don't"],
    "scripts": ["Привет", " мир", "Γειά", " σου", "مرحبا", " بالعالم", "שלום", " עולם",
                "नमस्ते", " दुनिया", "สวัสดี", "ชาวโลก", "你好", "世界", "日本語", "テキスト", "ひらがな",
                "한국어", " 텍스트", "ქართული", "Հայերեն", "አማርኛ", "தமிழ்", "ಕನ್ನಡ", "ᠮᠣᠩᠭᠣᠯ",
                "𐌰𐌱𐌲", "ꦗꦮ", "ᏣᎳᎩ"],
    "numerals": ["0", "7", "42", "1234567890", "3.14159", "-273.15", "1e-9", "0x1F", "2024-11-23",
                 "二", "三百", "〇", "١٢٣", "۴۵۶", "०१२", "๑๒๓", "১২", "௧௨", "Ⅻ", "ⅷ", "½", "¾", "⅓",
                 "①", "⑳", "²", "³", "₄", "１２３", "𝟘𝟙", "𒐀", "፲"],
    "marks": ["e\u0301", "a\u0308", "\u0915\u094d\u0937", "\u05d0\u05b8", "n\u0303", "\u0301",
              "\u20dd", "\u200b", "\u200c", "\u200d", "\ufeff", "\u200e", "\u200f", "\u2060",
              "\u00ad", "\u034f"],
    "nfc": ["\uf905", "\uf900", "\u2126", "\u212b", "\u1100\u1161", "\uac00", "\u0041\u030a",
            "\u00c5", "\u1e9b\u0323", "\uff76", "\u3131"],
    "emoji": ["😀", "🎉", "👩‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "👍🏽", "1️⃣", "❤️", "🏳️‍🌈", "🫠", "🧑‍💻",
              "©", "™", "→", "∑", "∞", "√", "≠", "𝔸𝔹ℂ", "♪", "☃"],
    "code": ["def f(x):", "\n\treturn {'a': [1, 2, 3]}", "  # comment", "x += 1;", "if (a &&b)",
             "}}", "{{", "</div>", "<br/>", "=>", "::", "->", "!==", "**kwargs", "\\n", "\\\\",
             "`code`", "\"quoted\"", "https://example.org/a?b=1&c=2#d", "user@example.com",
             "SELECT * FROM t;", "#!/bin/sh", "@-@", " @,@ ", " <unk> "],
    "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<pad>",
                 "<bos>", "<eos>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<unused0>",
                 "<think>", "</think>", "<tool_call>", "[INST]", "[/INST]", "<|begin_of_text|>",
                 "<|eot_id|>", "<0x0A>", "<0xE4>", "▁", "▁▁", "Ġ", "Ċ", "<table>", "<h1>",
                 "[multimodal]", "<start_of_image>"],
    "punct": [".", ",", "!", "?", "...", "…", "—", "–", "-", "(", ")", "[", "]", "«", "»", "“",
              "”", "‘", "’", "¿", "¡", "。", "、", "，", "！", "؟", "।", "%", "$", "€", "£", "¥",
              "#", "&", "*", "~", "^", "|", "_", "=", "+", "<", ">", "/", "'", "\""],
}
WHITESPACE = [" ", "\n", "\t", "\r", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2029", "\x0b",
              "\x0c", "\u2009", "\u202f", "\u205f", "\u1680", "\u0085"]
CONTROL = ["\x00", "\x01", "\x1b", "\x7f", "\x1b[31m", "\ufffd"]


def _whitespace(rng: random.Random) -> str:
    """A run of whitespace: mostly short, sometimes very long (SentencePiece user-defined space
    pieces stop at 31; tokenizers merge runs differently before letters, digits and ends)."""
    ch = rng.choice(WHITESPACE) if rng.random() < 0.3 else rng.choice([" ", "\n", "\t"])
    length = rng.choice([1, 1, 1, 2, 3, 4, rng.randint(5, 40), rng.randint(30, 100)])
    if rng.random() < 0.2:
        return "".join(rng.choice(WHITESPACE) for _ in range(length))
    return ch * length


def _any_char(rng: random.Random) -> str:
    """Any Unicode scalar value, assigned or not (surrogates excluded)."""
    while True:
        cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF),
                         rng.randint(0x3000, 0xFFFF), rng.randint(0x10000, 0x10FFFF)])
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def varied_text(rng: random.Random, max_parts: int = 24) -> str:
    """One text of 1 to ``max_parts`` fragments, joined with or without whitespace."""
    parts = []
    for _ in range(rng.randint(1, max_parts)):
        r = rng.random()
        if r < 0.2:
            parts.append(_whitespace(rng))
        elif r < 0.25:
            parts.append(_any_char(rng) * rng.choice([1, 1, 2, 5]))
        elif r < 0.28:
            parts.append(rng.choice(CONTROL))
        else:
            pool = POOLS[rng.choice(list(POOLS))]
            parts.append(rng.choice(pool) * (rng.choice([1, 1, 1, 3, 12]) if rng.random() < 0.1
                                             else 1))
        if rng.random() < 0.35:
            parts.append(" ")
    return "".join(parts)


def varied_texts(n: int, seed: int = 0, max_parts: int = 24) -> list[str]:
    """``n`` varied texts, the same for the same seed."""
    rng = random.Random(seed)
    return [varied_text(rng, max_parts) for _ in range(n)]
