"""`score --divergence` in the analysis: record fields to sample columns, group figures and the
by-position profile, with numbers known by construction (no model needed)."""

from __future__ import annotations

import polars as pl
import pytest

from tmcli.aggregate.divergence import divergence_profile, divergence_summary
from tmcli.measure.sample_table import SAMPLE_SCHEMA
from tmcli.measure.scored import DIVERGENCE_SCHEMA, divergence_columns
from tmcli.present.figures.divergence import by_since, by_temperature


def field(since, kl, top1, end_kl=0.5):
    n = len(since)
    mean = {"kl": sum(kl) / n, "top1": sum(top1) / n} if n else {"kl": None, "top1": None}
    return {"positions": n, "since": since, "kl": kl, "top1": top1, "mean": mean,
            "end": {"since": 3, "kl": end_kl, "top1": 1.0}}


def row(temperature, f, model="m"):
    return {"model": model, "temperature": temperature, **divergence_columns(f)}


def test_record_fields_become_columns_and_bad_ones_nulls():
    cols = divergence_columns(field([0, 1, 0], [1.0, 2.0, 3.0], [0.0, 1.0, 1.0]))
    assert cols["div_positions"] == 3 and cols["div_kl"] == 2.0
    assert cols["div_since"] == [0, 1, 0] and cols["div_end_kl"] == 0.5
    assert set(cols) == set(DIVERGENCE_SCHEMA) and set(DIVERGENCE_SCHEMA) <= set(SAMPLE_SCHEMA)
    for bad in (None, "x", {"positions": True, "since": []},
                {"positions": 1, "since": [0], "kl": [1.0], "top1": []},
                {"positions": 1, "since": ["a"], "kl": [1.0], "top1": [1.0]}):
        assert all(v is None for v in divergence_columns(bad).values())


def test_group_figures_and_profile_by_construction():
    samples = pl.DataFrame([
        row(1.0, field([0, 1, 0], [1.0, 2.0, 3.0], [0.0, 1.0, 1.0])),  # since 0: mean 2.0
        row(1.0, field([0, 1], [4.0, 6.0], [1.0, 1.0], end_kl=1.5)),
        row(1.0, field([], [], [], end_kl=0.0)),  # canonical: no position, end exactly 0
        row(1.0, None),  # not scored
    ], schema={"model": pl.String, "temperature": pl.Float64, **DIVERGENCE_SCHEMA})
    s = divergence_summary(samples, 200)
    assert s["div_n"] == 3 and s["div_n_after"] == 2
    assert s["div_kl"] == pytest.approx((2.0 + 5.0) / 2)  # per-sample means, then the mean
    assert s["div_end_kl"] == pytest.approx((0.5 + 1.5 + 0.0) / 3)
    assert s["div_kl_lo"] <= s["div_kl"] <= s["div_kl_hi"]
    prof = divergence_profile(samples, n_resamples=200)
    by = {r["since"]: r for r in prof.iter_rows(named=True)}
    assert by[0]["n"] == 2 and by[0]["kl"] == pytest.approx((2.0 + 4.0) / 2)
    assert by[0]["top1"] == pytest.approx((0.5 + 1.0) / 2)
    assert by[1]["kl"] == pytest.approx((2.0 + 6.0) / 2) and by[1]["top1"] == 1.0
    assert divergence_summary(samples.filter(pl.col("div_positions").is_null())) == {}
    fig = by_since(prof)
    assert {t.name for t in fig.data if t.showlegend} == {"m T=1"}
    groups = pl.DataFrame([{"model": "m", "temperature": 1.0, "n": 4, "few_samples": True, **s}])
    fig = by_temperature(groups)
    assert sorted(t.name for t in fig.data if t.showlegend is not False) == \
        ["m after a span", "m end of completion"]
