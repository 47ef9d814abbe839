"""Measuring one sample exactly: each token's bytes (`token_bytes`), the canonical
re-encoding aligned by byte offsets (`alignment`, `reencode`), why each span differs (`causes`),
text-quality proxies (`text_quality`), the study script's own arithmetic (`study_script`), the
per-sample table (`sample_table`) with what `score` wrote into a record (`scored`), records measured in batches on every core (`records`,
`parallel`), and the in-loop rollout check (`rollout_check`).
"""
