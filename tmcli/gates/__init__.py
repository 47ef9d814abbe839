"""Acting on measurements: the CI gate (`check`), readable differing spans (`diff`),
keeping the canonical records (`filter`), and the tokenizer self-test (`selftest`, with its
varied texts in `selftest_texts`).
"""
