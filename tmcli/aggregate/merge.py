"""Seed 001's curves from records scored with `score --merge`: agreement of the merged model with
the unmerged one per layer cut and prefix length, each with its interval (Wilson for the
top-k shares, bootstrap over records for KL and the top-5 overlap).
"""

from __future__ import annotations

import polars as pl

from tmcli.aggregate import stats
from tmcli.errors import TmcliError

SHARES = ("top1", "top3", "top5")
MEANS = ("overlap5", "kl", "kl_rev")


def merge_rows(path: str) -> pl.DataFrame:
    """One row per (record, layer cut, length) of the ``merge`` fields in ``path``."""
    from tmcli.io.input_files import iter_json

    rows = []
    for source, line, obj in iter_json(path):
        merge = obj.get("merge") if isinstance(obj, dict) else None
        if not isinstance(merge, dict) or not isinstance(merge.get("rows"), list):
            continue
        for r in merge["rows"]:
            rows.append({"model": str(merge.get("model")), "positions": merge.get("positions"),
                         "id": str(obj.get("id", f"{source}:{line}")), **r})
    if not rows:
        raise TmcliError(f"{path}: no record holds a merge field",
                         hint="score it first: tmcli score FILE --merge slerp -o OUT")
    return pl.DataFrame(rows, infer_schema_length=None)


def merge_table(rows: pl.DataFrame | str, n_resamples: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Per (model, positions, layer, length): n records, the shares of top-1/3/5 agreement with
    Wilson intervals, and mean top-5 overlap and KL (both ways) with bootstrap intervals."""
    if isinstance(rows, str):
        rows = merge_rows(rows)
    keys = [k for k in ("model", "positions", "layer", "length") if k in rows.columns]
    out = []
    for key, g in rows.group_by(keys, maintain_order=True):
        row = dict(zip(keys, key))
        n = g.height
        row["n"] = n
        for m in SHARES:
            k = int(g[m].sum())
            row[m] = k / n
            row[m + "_lo"], row[m + "_hi"] = stats.wilson(k, n)
        for m in MEANS:
            row[m], row[m + "_lo"], row[m + "_hi"] = stats.mean_ci(
                g[m].drop_nulls().to_numpy(), n_resamples, seed)
        out.append(row)
    return pl.DataFrame(out).sort(keys)
