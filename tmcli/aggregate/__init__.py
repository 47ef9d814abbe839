"""From per-sample rows to groups: statistics with intervals (`stats`), group summaries,
sigmoid fits and the canonical-mode comparison (`groups`), `score --divergence`'s group figures
(`divergence`) and `score --merge`'s curves (`merge`), the study script's group arithmetic
(`study_script`), the `Analysis` result of `tmcli analyze` (`analysis`), shards measured on Ray
(`distributed`) and analyses stored as Parquet (`stored`).
"""
