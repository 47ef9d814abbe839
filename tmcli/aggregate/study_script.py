"""The study script's group arithmetic (``--window-method study``): its per-group centre and
SEM, from the per-sample figures of `tmcli.measure.study_script`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tmcli.measure.study_script import sample_centres, truncated


def study_summary(lists_by_model: Sequence[Sequence[Sequence[float]]], n_resamples: int = 1000,
                  seed: int = 0) -> dict:
    """The script's window means and centre of gravity for one group. ``lists_by_model`` holds
    each model's window lists (the script cut lists per model and temperature)."""
    from tmcli.aggregate import stats

    mats = [truncated(lists) for lists in lists_by_model]
    mats = [m for m in mats if m.size or m.shape[0]]
    centres = np.concatenate([sample_centres(m) for m in mats]) if mats else np.zeros(0)
    centres = centres[~np.isnan(centres)]
    width = min((m.shape[1] for m in mats), default=0)
    means = np.mean([m[:, :width].mean(axis=0) for m in mats if len(m)], axis=0) \
        if mats and width else np.zeros(0)
    out = {"study_window_mean": np.asarray(means, dtype=float).tolist(),
           "study_centre_n": len(centres),
           "study_median_position": (width - 1) / 2 if width else math.nan}
    if len(centres):
        out["study_centre"] = float(centres.mean())
        out["study_centre_sem"] = (float(centres.std(ddof=1) / math.sqrt(len(centres)))
                                   if len(centres) > 1 else math.nan)
        _m, out["study_centre_lo"], out["study_centre_hi"] = stats.mean_ci(centres, n_resamples,
                                                                           seed)
    else:
        out.update(study_centre=math.nan, study_centre_sem=math.nan, study_centre_lo=math.nan,
                   study_centre_hi=math.nan)
    return out
