import numpy as np
import pandas as pd
import pytest

from pipeline.baselines import length_only, length_vote, run_baseline
from pipeline.evaluate import evaluate, subject_metrics, summarize, trial_predictions
from pipeline.features import PROBABILITY_COLUMNS
from tests.conftest import WINDOWS_PER_SUBJECT


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
    assert summary["trial"]["accuracy_std"] == pytest.approx(0.375)   # population std of (0.75, 0)
    assert summary["n_folds"] == 2
    assert summary["window"]["accuracy_mean"] == pytest.approx(0.375)


def test_std_convention_is_population():
    folds = {s: {"trial": {"accuracy": a, "f1_macro": a}, "window": {"accuracy": a, "f1_macro": a}}
             for s, a in enumerate([0.6, 0.8, 1.0])}
    assert summarize(folds)["trial"]["accuracy_std"] == pytest.approx(np.sqrt(((0.2**2) * 2) / 3))


def test_length_vote_ties_and_misses():
    lengths = np.array([10, 10, 12, 12, 20])
    labels = np.array([1, 2, 2, 3, 4])
    assert length_vote(lengths, labels, 20) == 4
    assert length_vote(lengths, labels, 10) == 2      # tie 1 vs 2 broken by the nearest length (12: 2, 3)
    assert length_vote(lengths, labels, 19) == 4      # miss: nearest length
    assert length_vote(np.array([5, 5]), np.array([3, 1]), 5) == 1   # unbreakable tie: lowest label


def test_length_only_on_synthetic(tiny_frame):
    trial = subject_metrics(length_only(tiny_frame, 1, "trial", 12))["trial"]["accuracy"]
    crop = subject_metrics(length_only(tiny_frame, 1, "crop", 12))["trial"]["accuracy"]
    assert trial > 0.7          # length identifies the clip (up to clips of equal length)
    assert crop == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["eeg-logreg", "chance"])
def test_other_baselines_give_probabilities(tiny_frame, name):
    p = run_baseline(name, tiny_frame, 1, "crop", 12, seed=0)
    assert len(p) == WINDOWS_PER_SUBJECT and np.allclose(p[list(PROBABILITY_COLUMNS)].sum(axis=1), 1, atol=1e-5)


def test_paired_comparison_over_subjects():
    from pipeline.comparison import paired_comparison

    def folds(accuracies):
        return {s: {"trial": {"accuracy": a}, "window": {"accuracy": a / 2}} for s, a in enumerate(accuracies, 1)}

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 16)
    same_gain = paired_comparison(folds(base + 0.1), folds(base), seed=0)
    assert same_gain["n_subjects"] == 16
    t = same_gain["trial"]
    assert t["mean_difference"] == pytest.approx(0.1) and t["ci95_low"] == pytest.approx(0.1) == t["ci95_high"]
    assert t["wins"] == 16 and t["wilcoxon_p"] < 0.001
    model = folds(base + rng.normal(0.02, 0.1, 16))
    noisy = paired_comparison(model, folds(base), seed=0)
    assert noisy["trial"]["ci95_low"] < noisy["trial"]["mean_difference"] < noisy["trial"]["ci95_high"]
    assert noisy == paired_comparison(model, folds(base), seed=0)       # seeded: the same interval every time
    assert paired_comparison(folds(base), folds(base), seed=0)["trial"] == {
        "mean_difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "wilcoxon_p": 1.0,
        "wins": 0, "ties": 16, "losses": 0}
