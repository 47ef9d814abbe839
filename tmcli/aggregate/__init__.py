"""From per-sample rows to groups: statistics with intervals (`stats`), a group's running sums
(`accumulate`), group summaries streamed, sigmoid fits and the canonical-mode comparison
(`groups`), group keys and their labels (`keys`), `score --divergence`'s group figures
(`divergence`) and `score --merge`'s curves (`merge`), the study script's group arithmetic
(`study_script`), curves drawn by the report (`curves`), the `Analysis` result of `tmcli
analyze` (`analysis`), shards measured on Ray (`distributed`) and analyses stored as Parquet
(`stored`).
"""
