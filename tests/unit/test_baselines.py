import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression

from pipeline import baselines
from pipeline.baselines import (BASELINES, chance, crop_aggregate, fold_baselines, length_only, logreg,
                                logreg_columns, position_only, position_probe, summarize_probe)
from pipeline.datasets.seedv import SPEC
from pipeline.evaluate import subject_metrics, trial_predictions
from pipeline.features import normalize, recording_to_frame
from pipeline.splits import make_folds
from pipeline.synthetic import generate_subject
from tests.conftest import make_params

EEG_COLUMNS, EYE_COLUMNS = SPEC.columns["eeg"], SPEC.columns["eye"]


def probabilities(predictions: pd.DataFrame) -> np.ndarray:
    return predictions[list(SPEC.probability_columns)].to_numpy(np.float64)


def loso_fold(held_out: int, subjects=(1, 2, 3)):
    """The LOSO fold that tests ``held_out`` and trains on the other ``subjects``."""
    (fold,) = make_folds(SPEC, make_params(data={"subjects": list(subjects)}, cv={"split": "loso",
                                                                                   "subjects": [held_out]}))
    assert fold.name == f"subject-{held_out}"
    return fold


def run_baseline(name: str, frame: pd.DataFrame, held_out: int, cv_input: str, crop_windows: int,
                 seed: int) -> pd.DataFrame:
    """One baseline on its own for the LOSO fold of ``held_out`` (each through its own function; crop-logreg,
    which has none, by its own logistic-regression fit and the aggregation over the model's sequences)."""
    fold = loso_fold(held_out)
    if name == "length-only":
        return length_only(frame, fold, cv_input, crop_windows, SPEC)
    if name == "position-only":
        return position_only(frame, fold, SPEC)
    if name == "chance":
        return chance(frame, fold, seed, SPEC)
    if name == "crop-logreg":
        model, test, x = baselines._fit_logreg(frame, fold, logreg_columns(SPEC)["both-logreg"], seed)
        return baselines._crop_predictions(model, test, x, cv_input, crop_windows, SPEC.n_classes)
    return logreg(frame, fold, logreg_columns(SPEC)[name], seed, SPEC)


@pytest.fixture(scope="module")
def drift_frame():
    """``tiny_frame``'s three subjects with a within-session drift of one noise std per session."""
    frame = pd.concat([recording_to_frame(generate_subject(0, s, drift=1.0), SPEC) for s in (1, 2, 3)], ignore_index=True)
    return normalize(frame, "subject")


def test_position_only_is_perfect_under_loso(tiny_frame):
    """SEED-V's label order per session is the same for every subject: position alone gives every label."""
    for held_out in (1, 2, 3):
        metrics = subject_metrics(run_baseline("position-only", tiny_frame, held_out, "crop", 12, seed=0))
        assert metrics["trial"]["accuracy"] == metrics["window"]["accuracy"] == 1.0
    # It votes with the training subjects: relabel their session-1 first trial and it follows them.
    relabelled = tiny_frame.copy()
    relabelled.loc[(relabelled.subject != 1) & (relabelled.session == 1) & (relabelled.trial == 0), "label"] = 0
    trials = trial_predictions(run_baseline("position-only", relabelled, 1, "crop", 12, seed=0))
    first = (trials.session == 1) & (trials.trial == 0)
    assert trials.loc[first, "predicted"].tolist() == [0] and (trials.loc[~first, "predicted"]
                                                               == trials.loc[~first, "label"]).all()


def two_class(values) -> np.ndarray:
    """Two-class probabilities with class-0 log-odds ``values``."""
    p = expit(np.asarray(values, dtype=float))
    return np.stack([p, 1 - p], axis=1)


def test_crop_aggregate_by_hand():
    # Log-probabilities (unnormalized is fine: only differences between classes matter) of class 0 vs 1.
    log_probs = np.array([[0, 0], [2, 0], [4, 0], [0, 0], [3, 0]], dtype=float)   # trials of 3 and 2 windows
    # Crops of 2: trial A has crops {0,1} (mean log-odds 1) and {1,2} (3); window 1 is in both (2).
    # Trial B is one crop {0,1} (1.5).
    np.testing.assert_allclose(crop_aggregate(log_probs, np.array([3, 2]), "crop", 2),
                               two_class([1, 2, 3, 1.5, 1.5]))
    # A crop longer than the trial tiles it: windows 0,1,0, mean log-odds (0 + 3 + 0) / 3 = 1 for both.
    np.testing.assert_allclose(crop_aggregate(log_probs[3:], np.array([2]), "crop", 3), two_class([1, 1]))
    # Whole trials: every window gets its trial's mean.
    np.testing.assert_allclose(crop_aggregate(log_probs, np.array([3, 2]), "trial", 2),
                               two_class([2, 2, 2, 1.5, 1.5]))


def test_crop_logreg_is_both_logreg_averaged_over_the_models_sequences(tiny_frame):
    per_window = run_baseline("both-logreg", tiny_frame, 1, "trial", 12, seed=0)
    whole = run_baseline("crop-logreg", tiny_frame, 1, "trial", 12, seed=0)
    # Under `trial` every window of a trial gets the softmax of the trial's mean log-probability ...
    train, test = tiny_frame[tiny_frame.subject != 1], tiny_frame[tiny_frame.subject == 1]
    columns = list(EEG_COLUMNS + EYE_COLUMNS)
    model = LogisticRegression(max_iter=1000, random_state=0).fit(train[columns].to_numpy(), train["label"])
    log_p = pd.DataFrame(model.predict_log_proba(test[columns].to_numpy())).groupby(
        [test.session.to_numpy(), test.trial.to_numpy()]).transform("mean").to_numpy()
    np.testing.assert_allclose(probabilities(whole), softmax(log_p, axis=1), atol=1e-6)
    # ... so the trial predictions are both-logreg's.
    assert (trial_predictions(whole)["predicted"] == trial_predictions(per_window)["predicted"]).all()

    # Under `crop` windows of one trial differ (each has its own crops) and differ from both-logreg.
    cropped = run_baseline("crop-logreg", tiny_frame, 1, "crop", 12, seed=0)
    assert (pd.DataFrame(probabilities(cropped)).groupby([cropped.session, cropped.trial]).std() > 1e-3).any().any()
    assert np.abs(probabilities(cropped) - probabilities(per_window)).max() > 0.1
    assert (subject_metrics(cropped)["window"]["accuracy"] > subject_metrics(per_window)["window"]["accuracy"])


def test_one_fit_serves_every_baseline(tiny_frame):
    shared = fold_baselines(tiny_frame, loso_fold(2), "crop", 12, seed=0, spec=SPEC)
    assert list(shared) == list(BASELINES)
    for name in BASELINES:
        pd.testing.assert_frame_equal(shared[name], run_baseline(name, tiny_frame, 2, "crop", 12, seed=0))


def test_position_probe_sees_drift_and_not_labels(tiny_frame, drift_frame):
    without = {s: position_probe(tiny_frame, s, seed=0, spec=SPEC) for s in (1, 2, 3)}
    with_drift = {s: position_probe(drift_frame, s, seed=0, spec=SPEC) for s in (1, 2, 3)}
    assert all(0 <= m["accuracy"] <= 1 and m["n"] == 45 for m in [*without.values(), *with_drift.values()])
    assert summarize_probe(without, SPEC)["accuracy_mean"] < 0.5             # chance 1/3
    assert summarize_probe(with_drift, SPEC)["accuracy_mean"] > 0.7
    assert min(m["accuracy"] for m in with_drift.values()) > 0.6
    # Label-free: it runs, with the same result, on a table without labels.
    assert position_probe(drift_frame.drop(columns="label"), 1, seed=0, spec=SPEC) == with_drift[1]


def test_probe_summary():
    summary = summarize_probe({1: {"accuracy": 0.4, "n": 45}, 2: {"accuracy": 0.6, "n": 45}}, SPEC)
    assert summary["chance"] == pytest.approx(1 / 3) and summary["n_folds"] == 2
    assert summary["accuracy_mean"] == pytest.approx(0.5)
    assert summary["accuracy_std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))      # sample std
    assert summary["per_subject"][2] == {"accuracy": 0.6, "n": 45}
    assert np.isnan(summarize_probe({1: {"accuracy": 0.4, "n": 45}}, SPEC)["accuracy_std"])
