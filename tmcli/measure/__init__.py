"""Measuring one sample exactly: each token's bytes (`token_bytes`), the canonical
re-encoding aligned by byte offsets (`alignment`, `reencode`), what a measurement holds
(`metrics`) and a batch of them as columns (`columns`), why each span differs (`causes`),
text-quality proxies (`text_quality`), the study script's own arithmetic (`study_script`), the
per-sample table (`sample_table`) with what `score` wrote into a record (`scored`), records
measured in batches on every core (`records`, `parallel`), the in-loop rollout check
(`rollout_check`), multi-turn trajectories: the drift check against their chat template
(`trajectory`, rendering with `chat_render`) and their sampled turns as samples (`turns`), and
tmcli on Ray: its session and the `CheckIds` Ray Data UDF (`ray_udf`, exported as `tmcli.ray`).
"""
