"""The model against each baseline, paired over the held-out subjects both were tested on (its own module
so that train, which never compares, does not depend on it).

Per level (trial, window) the statistic is the mean over subjects of model minus baseline accuracy, with
what MOABB-style evaluations report beside it: a sign-flip permutation p (exact up to 16 subjects), a BCa
bootstrap and a t interval, the standardized paired effect size (Cohen's d_z), and subjects won / tied /
lost. One ``comparison.json`` is one family of tests (every baseline × level), Holm-corrected together.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

LEVELS = ("trial", "window")
ALPHA = 0.05
RESAMPLES = 10_000     # bootstrap resamples, and sign flips when the exact test is too large
EXACT_MAX = 16         # up to 2^16 = 65536 sign flips: the exact permutation distribution
DECIMALS = 12          # floats written are rounded here: 1e-17 noise reads 0, never "below 0"
TOLERANCE = 1e-12      # a difference this close to 0 is a tie; differences this close together are equal


def clean(value):
    """``value`` with every float rounded to ``DECIMALS`` (``-0.0`` written as ``0.0``), so that a
    difference that is 0 in exact arithmetic is exactly 0 in the file."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return float(np.round(value, DECIMALS)) + 0.0
    return value


def t_interval(x) -> tuple[float | None, float | None]:
    """95 % t interval of the mean of ``x``: ``(None, None)`` under 2 values, the point when they are all
    equal within ``TOLERANCE`` (no spread to scale it by)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return None, None
    if np.ptp(x) < TOLERANCE:
        return float(x.mean()), float(x.mean())
    interval = stats.ttest_1samp(x, 0).confidence_interval(1 - ALPHA)
    return float(interval.low), float(interval.high)


def differences(model: dict[int, dict], baseline: dict[int, dict], level: str) -> np.ndarray:
    """Model minus baseline accuracy per subject both were tested on (subject order); one within
    ``TOLERANCE`` of 0 is 0 (equal accuracies computed two ways, e.g. averaged over seeds, are a tie)."""
    subjects = sorted(set(model) & set(baseline))
    diff = np.array([model[s][level]["accuracy"] - baseline[s][level]["accuracy"] for s in subjects])
    return np.where(np.abs(diff) < TOLERANCE, 0.0, diff)


def paired_test(diff: np.ndarray, seed: int) -> dict:
    """One level's paired statistics of per-subject differences ``diff``:

    - ``mean_difference``;
    - ``p_permutation``: two-sided sign-flip permutation test of the mean (under the null each subject's
      difference is as likely negated; ``scipy.stats.permutation_test`` flips signs for one sample with
      ``permutation_type="samples"``), exact over all 2^n flips for n <= ``EXACT_MAX``, else ``RESAMPLES``
      random flips seeded by ``seed``;
    - ``ci95_low``/``ci95_high``: 95 % BCa bootstrap interval (subjects resampled, ``RESAMPLES``, seeded);
      ``t_ci95_low``/``t_ci95_high``: 95 % t interval; both are the point when every difference is equal
      (within ``TOLERANCE``);
    - ``effect_size``: Cohen's d_z, the mean over the sample std (ddof 1) of the differences; None when
      the differences have no spread (0/0 or ±inf: no scale to standardize by);
    - ``wilcoxon_p``: the earlier signed-rank p, kept as a secondary, uncorrected field (1.0 when every
      difference is 0);
    - ``wins``/``ties``/``losses``: subjects with a difference > 0 / = 0 / < 0."""
    constant = np.ptp(diff) < TOLERANCE
    flips = stats.permutation_test((diff,), np.mean, permutation_type="samples", vectorized=True,
                                   n_resamples=np.inf if len(diff) <= EXACT_MAX else RESAMPLES,
                                   rng=np.random.default_rng(seed))
    if constant:   # BCa needs spread (its jackknife acceleration divides by it)
        low = high = float(diff.mean())
    else:
        interval = stats.bootstrap((diff,), np.mean, confidence_level=1 - ALPHA, n_resamples=RESAMPLES,
                                   method="BCa", rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    t_low, t_high = t_interval(diff)
    return {"mean_difference": float(diff.mean()), "p_permutation": float(flips.pvalue),
            "ci95_low": low, "ci95_high": high, "t_ci95_low": t_low, "t_ci95_high": t_high,
            "effect_size": None if constant else float(diff.mean() / diff.std(ddof=1)),
            "wilcoxon_p": float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0,
            "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())}


def paired_comparison(model: dict[int, dict], baseline: dict[int, dict], seed: int) -> dict:
    """The model minus a baseline over the subjects both were tested on: ``n_subjects`` and, per level,
    :func:`paired_test` (uncorrected; :func:`compare_all` adds the family's Holm p)."""
    n = len(set(model) & set(baseline))
    return clean({"n_subjects": n, **{level: paired_test(differences(model, baseline, level), seed)
                                      for level in LEVELS}})


def seed_comparison(per_seed: dict[str, dict[int, dict]], baseline: dict[int, dict]) -> dict:
    """How much the difference depends on the training seed: per level each seed's mean difference over
    the paired subjects (``mean_difference_seed_<k>``), their mean and a 95 % t interval over seeds.
    Descriptive (the seeds are the sample, the subjects are fixed): not a test, not in the Holm family."""
    out: dict = {"n": len(per_seed)}
    for level in LEVELS:
        means = {k: float(differences(folds, baseline, level).mean()) for k, folds in per_seed.items()}
        low, high = t_interval(list(means.values()))
        out[level] = {"mean_difference": float(np.mean(list(means.values()))), "t_ci95_low": low,
                      "t_ci95_high": high, **{f"mean_difference_seed_{k}": v for k, v in means.items()}}
    return out


def per_seed_metrics(folds: dict[int, dict]) -> dict[str, dict[int, dict]]:
    """Each training seed's per-subject metrics, ``{seed: {subject: metrics}}``, from fold metrics that
    carry ``seeds`` maps (``train.seeds`` > 1); ``{}`` otherwise."""
    if not folds or not all("seeds" in fold for fold in folds.values()):
        return {}
    seeds = sorted(next(iter(folds.values()))["seeds"], key=int)
    return {k: {s: fold["seeds"][k] for s, fold in folds.items()} for k in seeds}


def compare_all(model: dict[int, dict], baselines: dict[str, dict[int, dict]], seed: int,
                per_seed: dict[str, dict[int, dict]] | None = None) -> dict:
    """``comparison.json``: ``{baseline: paired_comparison}`` with, next to each ``p_permutation``, its
    Holm-adjusted ``p_holm`` over the family of every baseline × level in the file (statsmodels), and the
    family in each entry's ``correction`` (``method``, ``n_tests``, ``alpha``). With two or more training
    seeds in ``per_seed`` each entry also has ``seeds`` (:func:`seed_comparison`); ``model`` is then the
    per-subject accuracy averaged over the seeds, so the main test stays paired over subjects."""
    out = {name: paired_comparison(model, folds, seed) for name, folds in baselines.items()}
    tests = [(name, level) for name in out for level in LEVELS]
    if tests:
        holm = multipletests([out[n][level]["p_permutation"] for n, level in tests], alpha=ALPHA, method="holm")[1]
        for (name, level), p in zip(tests, holm):
            out[name][level]["p_holm"] = float(p)
    for name, folds in baselines.items():
        out[name]["correction"] = {"method": "holm", "n_tests": len(tests), "alpha": ALPHA}
        if per_seed and len(per_seed) >= 2:
            out[name]["seeds"] = seed_comparison(per_seed, folds)
    return clean(out)


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def summary_lines(comparison: dict) -> list[str]:
    """What ``evaluate`` prints: per baseline and level the difference in points, the BCa and t
    intervals, permutation and Holm p, d_z, wins/ties/losses; with seeds, the interval over seeds."""
    lines = []
    for name, c in comparison.items():
        for level in LEVELS:
            t = c[level]
            d = "n/a" if t["effect_size"] is None else f"{t['effect_size']:+.2f}"
            lines.append(f"  model − {name:12s} {level:6s} {_points(t['mean_difference'])} points (95 % BCa "
                         f"{_points(t['ci95_low'])} to {_points(t['ci95_high'])}, t {_points(t['t_ci95_low'])} to "
                         f"{_points(t['t_ci95_high'])}; permutation p {_p(t['p_permutation'])}, Holm p "
                         f"{_p(t['p_holm'])}; d_z {d}; {t['wins']}/{t['ties']}/{t['losses']} won/tied/lost "
                         f"of {c['n_subjects']})")
            if "seeds" in c:
                s = c["seeds"][level]
                lines.append(f"      over {c['seeds']['n']} training seeds: {_points(s['mean_difference'])} points "
                             f"(95 % t over seeds {_points(s['t_ci95_low'])} to {_points(s['t_ci95_high'])})")
    return lines
