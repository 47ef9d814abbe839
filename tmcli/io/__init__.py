"""Files in and out: opening any input (`input_files`: plain, gzip, zstd, stdin, tables),
one reader per record format detected per line (`readers/`, multi-turn trajectories
included), `read_records`, the single door for
input (`records`), appending generated records safely (`writer`), and atomic writes and the
per-sample Parquet stream (`outputs`). Imports nothing of tmcli but `errors`.
"""
