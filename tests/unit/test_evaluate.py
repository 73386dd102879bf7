import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.baselines import chance, length_only, length_vote, logreg, logreg_columns
from pipeline.comparison import compare_all, paired_comparison, per_seed_metrics, summary_lines
from pipeline.datasets.seedv import SPEC
from pipeline.evaluate import evaluate, seed_summary, subject_metrics, summarize, trial_predictions
from pipeline.splits import make_folds
from tests.conftest import WINDOWS_PER_SUBJECT, make_params

PROBABILITY_COLUMNS = SPEC.probability_columns


def loso_fold(held_out: int):
    """``tiny_frame``'s LOSO fold that tests ``held_out`` (subjects 1-3)."""
    (fold,) = make_folds(SPEC, make_params(data={"subjects": [1, 2, 3]}, cv={"split": "loso", "subjects": [held_out]}))
    return fold


def predictions(rows):
    """rows: (subject, trial, label, predicted class or probability vector) per window."""
    out = []
    for window, (subject, trial, label, p) in enumerate(rows):
        probs = np.eye(5)[p] * 0.9 + 0.02 if np.isscalar(p) else np.asarray(p)
        out.append({"subject": subject, "session": 1, "trial": trial, "window": window, "label": label,
                    **{f"p_{c}": probs[c] for c in range(5)}})
    return pd.DataFrame(out)


def test_trial_prediction_is_mean_log_probability():
    # Window 1 is confidently class 1; windows 2-3 mildly class 0: mean log-prob picks 0, not a vote of 1.
    p = predictions([(1, 0, 0, [0.01, 0.96, 0.01, 0.01, 0.01]), (1, 0, 0, [0.5, 0.3, 0.1, 0.05, 0.05]),
                     (1, 0, 0, [0.5, 0.3, 0.1, 0.05, 0.05])])
    assert trial_predictions(p)["predicted"].tolist() == [1]
    p = predictions([(1, 0, 0, [0.2, 0.4, 0.2, 0.1, 0.1]), (1, 0, 0, [0.6, 0.1, 0.1, 0.1, 0.1]),
                     (1, 0, 0, [0.6, 0.1, 0.1, 0.1, 0.1])])
    assert trial_predictions(p)["predicted"].tolist() == [0]


def test_hand_computed_metrics_with_missing_class():
    # Subject 1: trials labelled 0,1,2,3 predicted 0,1,2,2 (class 3 never predicted, class 4 absent).
    rows = [(1, t, label, pred) for t, (label, pred) in enumerate([(0, 0), (1, 1), (2, 2), (3, 2)])]
    # Subject 2: two trials, one window each, both wrong.
    rows += [(2, 0, 4, 0), (2, 1, 0, 4)]
    summary, per_subject = evaluate(predictions(rows))
    s1 = per_subject[1]["trial"]
    assert s1["accuracy"] == 0.75
    # F1 per class: 0:1, 1:1, 2: p=1/2 r=1 -> 2/3, 3: 0, 4: 0 (zero_division) -> mean 8/15.
    assert s1["f1_macro"] == pytest.approx((1 + 1 + 2 / 3) / 5)
    assert per_subject[2]["trial"]["accuracy"] == 0.0
    assert summary["trial"]["accuracy_mean"] == pytest.approx(0.375)
    assert summary["trial"]["accuracy_std"] == pytest.approx(0.75 / np.sqrt(2))   # sample std of (0.75, 0)
    assert summary["n_folds"] == 2
    assert summary["window"]["accuracy_mean"] == pytest.approx(0.375)


def test_std_convention_is_sample():
    folds = {s: {"trial": {"accuracy": a, "f1_macro": a}, "window": {"accuracy": a, "f1_macro": a}}
             for s, a in enumerate([0.6, 0.8, 1.0])}
    assert summarize(folds)["trial"]["accuracy_std"] == pytest.approx(np.sqrt((0.2**2 * 2) / 2))   # ddof 1
    assert np.isnan(summarize({1: folds[0]})["trial"]["accuracy_std"])     # undefined with one subject


def test_length_vote_ties_and_misses():
    lengths = np.array([10, 10, 12, 12, 20])
    labels = np.array([1, 2, 2, 3, 4])
    assert length_vote(lengths, labels, 20, 5) == 4
    assert length_vote(lengths, labels, 10, 5) == 2      # tie 1 vs 2 broken by the nearest length (12: 2, 3)
    assert length_vote(lengths, labels, 19, 5) == 4      # miss: nearest length
    assert length_vote(np.array([5, 5]), np.array([3, 1]), 5, 5) == 1   # unbreakable tie: lowest label


def test_length_only_on_synthetic(tiny_frame):
    trial = subject_metrics(length_only(tiny_frame, loso_fold(1), "trial", 12, SPEC))["trial"]["accuracy"]
    crop = subject_metrics(length_only(tiny_frame, loso_fold(1), "crop", 12, SPEC))["trial"]["accuracy"]
    assert trial > 0.7          # length identifies the clip (up to clips of equal length)
    assert crop == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["eeg-logreg", "chance"])
def test_other_baselines_give_probabilities(tiny_frame, name):
    fold = loso_fold(1)
    p = (logreg(tiny_frame, fold, logreg_columns(SPEC)[name], 0, SPEC) if name == "eeg-logreg"
         else chance(tiny_frame, fold, 0, SPEC))
    assert len(p) == WINDOWS_PER_SUBJECT and np.allclose(p[list(PROBABILITY_COLUMNS)].sum(axis=1), 1, atol=1e-5)


def folds(trial, window=None, base=0.5):
    """Per-subject metrics, subjects 1.., accuracy ``base`` + each value (window: the trial values)."""
    window = trial if window is None else window
    return {s: {"trial": {"accuracy": base + t}, "window": {"accuracy": base + w}}
            for s, (t, w) in enumerate(zip(trial, window), 1)}


def flat(n):
    return folds([0.0] * n)


def test_permutation_p_is_an_exact_sign_flip_test():
    # n = 4: 16 equally likely sign patterns under the null. All positive: only it and its mirror are as
    # extreme -> 2/16. (0.1, -0.2, 0.3, 0.4), sum 0.6: |sum| >= 0.6 when the negated magnitudes sum to
    # <= 0.2 ({}, {0.1}, {0.2}) or >= 0.8 (their complements) -> 6/16.
    c = paired_comparison(folds([0.1, 0.2, 0.3, 0.4], [0.1, -0.2, 0.3, 0.4]), flat(4), seed=0)
    assert c["trial"]["p_permutation"] == pytest.approx(2 / 16)
    assert c["window"]["p_permutation"] == pytest.approx(6 / 16)
    # 20 subjects (past exact): 10 000 seeded random flips, none as extreme as all positive -> 2 / 10 001.
    many = paired_comparison(folds(list(np.linspace(0.01, 0.2, 20))), flat(20), seed=0)
    assert many["trial"]["p_permutation"] == pytest.approx(2 / 10_001)


def test_holm_over_every_baseline_and_level():
    # Six subjects, 64 sign patterns; differences 1..6 points: all positive -> 2/64; 1 negated (sum 19:
    # negated sums <= 1: {}, {1}) -> 4/64; 2 negated (sum 17: {}, {1}, {2}) -> 6/64; all 0 -> 1.
    up = np.arange(1, 7) / 100
    one, two = up * [-1, 1, 1, 1, 1, 1], up * [1, -1, 1, 1, 1, 1]
    model = flat(6)
    comparison = compare_all(model, {"a": folds(-up, -one), "b": folds(-two, [0.0] * 6)}, seed=0)
    p = {(n, level): comparison[n][level]["p_permutation"] for n in "ab" for level in ("trial", "window")}
    assert p == pytest.approx({("a", "trial"): 2 / 64, ("a", "window"): 4 / 64, ("b", "trial"): 6 / 64,
                               ("b", "window"): 1.0})
    # Holm, m = 4, by hand: sorted p times 4, 3, 2, 1 = 1/8, 3/16, 3/16, 1; running maximum: the same.
    holm = {(n, level): comparison[n][level]["p_holm"] for n in "ab" for level in ("trial", "window")}
    assert holm == pytest.approx({("a", "trial"): 1 / 8, ("a", "window"): 3 / 16, ("b", "trial"): 3 / 16,
                                  ("b", "window"): 1.0})
    assert comparison["a"]["correction"] == comparison["b"]["correction"] == {
        "method": "holm", "n_tests": 4, "alpha": 0.05}


def test_float_noise_is_written_as_zero():
    # The committed both-logreg trial comparison (accuracies k/45): the BCa upper bound is 0 in exact
    # arithmetic, about -3e-17 as scipy computes it; written, it is exactly 0.0 (not -0.0).
    model = [39, 28, 33, 38, 36, 33, 22, 29, 29, 29, 40, 38, 40, 42, 33, 33]
    base = [42, 32, 29, 41, 38, 35, 31, 29, 34, 30, 38, 39, 38, 39, 37, 34]
    raw = stats.bootstrap((np.subtract(model, base) / 45,), np.mean, method="BCa", n_resamples=10_000,
                          rng=np.random.default_rng(0)).confidence_interval.high
    assert -1e-15 < raw < 0
    high = paired_comparison(folds(np.divide(model, 45), base=0), folds(np.divide(base, 45), base=0),
                             seed=0)["trial"]["ci95_high"]
    assert high == 0.0 and math.copysign(1, high) == 1
    # The same accuracy computed two ways (0.1 + 0.2 against 0.3) is a tie, not a win.
    t = paired_comparison(folds([0.1 + 0.2, 0.5, 0.2], base=0), folds([0.3, 0.4, 0.3], base=0), seed=0)["trial"]
    assert (t["wins"], t["ties"], t["losses"]) == (1, 1, 1)


@pytest.mark.filterwarnings("error")
def test_equal_differences_give_the_point_without_warnings():
    c = paired_comparison(folds([0.1] * 16, [0.1 + 0.2] * 16, base=0), folds([0.0] * 16, [0.3] * 16, base=0), seed=0)
    t, w = c["trial"], c["window"]
    assert t["mean_difference"] == t["ci95_low"] == t["ci95_high"] == t["t_ci95_low"] == t["t_ci95_high"] == 0.1
    assert t["effect_size"] is None and t["p_permutation"] == pytest.approx(2 / 2**16) and t["wins"] == 16
    # Noise-sized differences are 0: every bound 0, p 1, all ties, no effect size.
    assert w == {"mean_difference": 0.0, "p_permutation": 1.0, "ci95_low": 0.0, "ci95_high": 0.0,
                 "t_ci95_low": 0.0, "t_ci95_high": 0.0, "effect_size": None, "wilcoxon_p": 1.0,
                 "wins": 0, "ties": 16, "losses": 0}


def test_effect_size_and_t_interval_by_hand():
    # Differences 0.1 .. 0.4: mean 0.25, sample std sqrt(0.05 / 3); t(0.975, 3 df) = 3.182446.
    t = paired_comparison(folds([0.1, 0.2, 0.3, 0.4]), flat(4), seed=0)["trial"]
    sd = np.sqrt(0.05 / 3)
    assert t["effect_size"] == pytest.approx(0.25 / sd)
    half = 3.182446305284263 * sd / 2
    assert (t["t_ci95_low"], t["t_ci95_high"]) == pytest.approx((0.25 - half, 0.25 + half))


def test_comparison_is_seeded_and_bca():
    diff = np.random.default_rng(0).normal(0.02, 0.1, 20)     # 20 subjects: Monte Carlo flips too
    model, baselines = folds(diff), {"b": flat(20)}
    first = compare_all(model, baselines, seed=3)
    assert first == compare_all(model, baselines, seed=3)
    assert first["b"]["trial"]["p_permutation"] != compare_all(model, baselines, seed=4)["b"]["trial"]["p_permutation"]
    bca = stats.bootstrap((diff,), np.mean, method="BCa", n_resamples=10_000,
                          rng=np.random.default_rng(3)).confidence_interval
    t = first["b"]["trial"]
    assert (t["ci95_low"], t["ci95_high"]) == pytest.approx((bca.low, bca.high), abs=1e-9)
    assert t["ci95_low"] < t["mean_difference"] < t["ci95_high"]


def seed_folds(per_seed_mean):
    """Fold metrics of two subjects whose accuracies average ``per_seed_mean[k]`` under seed k."""
    return {s: {"seeds": {k: {level: {"accuracy": a + offset, "f1_macro": a} for level in ("trial", "window")}
                          for k, a in per_seed_mean.items()}} for s, offset in ((1, -0.1), (2, 0.1))}


def test_seed_summary_t_interval_over_seeds():
    # Per-seed means 0.6, 0.7, 0.8: mean 0.7, sample std 0.1; t(0.975, 2 df) = 4.302653.
    seeds, averaged = seed_summary(seed_folds({"0": 0.6, "1": 0.7, "2": 0.8}))
    half = 4.302652729911275 * 0.1 / np.sqrt(3)
    assert seeds["trial_accuracy_std"] == pytest.approx(0.1)
    assert (seeds["trial_accuracy_ci95_low"], seeds["trial_accuracy_ci95_high"]) == pytest.approx((0.7 - half, 0.7 + half))
    one, _ = seed_summary(seed_folds({"0": 0.6}))
    assert one["trial_accuracy_std"] is one["trial_accuracy_ci95_low"] is one["trial_accuracy_ci95_high"] is None
    same, _ = seed_summary(seed_folds({"0": 0.6, "1": 0.6}))
    assert same["trial_accuracy_ci95_low"] == same["trial_accuracy_ci95_high"] == pytest.approx(0.6)


def test_comparison_over_seeds():
    # Against a flat 0.5 baseline each seed's mean difference is 0.1, 0.2, 0.3: mean 0.2, t over seeds.
    fold_metrics = seed_folds({"0": 0.6, "1": 0.7, "2": 0.8})
    _, averaged = seed_summary(fold_metrics)
    c = compare_all(averaged, {"b": flat(2)}, seed=0, per_seed=per_seed_metrics(fold_metrics))["b"]
    half = 4.302652729911275 * 0.1 / np.sqrt(3)
    s = c["seeds"]["trial"]
    assert c["seeds"]["n"] == 3 and s["mean_difference_seed_1"] == pytest.approx(0.2)
    assert s["mean_difference"] == pytest.approx(0.2) == c["trial"]["mean_difference"]   # the seed-averaged pairing
    assert (s["t_ci95_low"], s["t_ci95_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert "seeds" not in compare_all(averaged, {"b": flat(2)}, seed=0, per_seed=per_seed_metrics({1: {}}))["b"]
    lines = summary_lines({"b": c})
    assert len(lines) == 4 and "Holm p" in lines[0] and "over 3 training seeds" in lines[1]
