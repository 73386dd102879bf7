"""The model against a baseline, paired over the held-out subjects both were tested on (its own module so
that train, which never compares, does not depend on it)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def paired_comparison(model: dict[int, dict], baseline: dict[int, dict], seed: int) -> dict:
    """The model minus a baseline, paired over the held-out subjects both were tested on, per level:
    mean difference in accuracy, its 95 % bootstrap interval (subjects resampled, percentile method) and
    the two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0); wins/ties/losses count
    subjects."""
    subjects = sorted(set(model) & set(baseline))
    out = {"n_subjects": len(subjects)}
    for level in ("trial", "window"):
        diff = np.array([model[s][level]["accuracy"] - baseline[s][level]["accuracy"] for s in subjects])
        if np.ptp(diff) == 0:   # no spread: the interval is the point, and there is nothing to rank
            low = high = float(diff[0])
        else:
            interval = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=10_000,
                                       method="percentile", rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(interval.low), float(interval.high)
        out[level] = {"mean_difference": float(diff.mean()), "ci95_low": low, "ci95_high": high,
                      "wilcoxon_p": float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0,
                      "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())}
    return out
