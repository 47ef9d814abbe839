"""Files in and out: opening any input once (`input_files`: plain, gzip, zstd, stdin, FIFOs,
tables, over the raw byte `streams`), one reader per record format detected per line
(`readers/`, multi-turn trajectories included), `read_records`, the single door for input
(`records`), appending generated records safely (`writer`), and atomic writes of regular files
only and the per-sample Parquet stream (`outputs`). Imports nothing of tmcli but `errors`.
"""
