"""Shortcut-audit and linear baselines on the same LOSO folds, with the model's prediction format.

- ``length-only``: predicts a trial's label from the window count the model gets to see, by majority
  vote of the training trials with that count (the nearest counts break ties and fill misses). Under
  ``cv.protocol: trial`` the count is the trial length, which identifies the clip; under ``crop`` every
  input has ``cv.crop_windows`` windows, so it can only guess.
- ``eeg-logreg``, ``eye-logreg``, ``both-logreg``: scikit-learn logistic regression per window
  (default regularization, not tuned), trials by mean log-probability.
- ``chance``: scikit-learn's stratified dummy classifier (random draws with the training class frequencies).
Each returns per-window probabilities for the held-out subject, so :mod:`pipeline.evaluate` scores
model and baselines with the same code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from .evaluate import CLASSES
from .features import EEG_COLUMNS, EYE_COLUMNS, ID_COLUMNS, PROBABILITY_COLUMNS

BASELINES = ("length-only", "eeg-logreg", "eye-logreg", "both-logreg", "chance")
LOGREG_COLUMNS = {"eeg-logreg": EEG_COLUMNS, "eye-logreg": EYE_COLUMNS, "both-logreg": EEG_COLUMNS + EYE_COLUMNS}


def _with_probabilities(rows: pd.DataFrame, probabilities: np.ndarray) -> pd.DataFrame:
    out = rows[list(ID_COLUMNS)].reset_index(drop=True).copy()
    for c in CLASSES:
        out[PROBABILITY_COLUMNS[c]] = probabilities[:, c].astype(np.float32)
    return out


def visible_length(n_windows: np.ndarray, protocol: str, crop_windows: int) -> np.ndarray:
    """The sequence length the model is given for a trial of ``n_windows`` windows."""
    return n_windows if protocol == "trial" else np.full_like(n_windows, crop_windows)


def length_vote(train_lengths: np.ndarray, train_labels: np.ndarray, length: int) -> int:
    """Majority label of training trials with this length; ties and misses widen to the nearest lengths."""
    distance = np.abs(train_lengths - length)
    votes = np.zeros(len(CLASSES))
    for d in np.unique(distance):
        votes += np.bincount(train_labels[distance == d], minlength=len(CLASSES))
        best = np.flatnonzero(votes == votes.max())
        if len(best) == 1:
            return int(best[0])
    return int(best[0])  # a tie that no length breaks: the lowest label, deterministically


def length_only(frame: pd.DataFrame, held_out: int, protocol: str, crop_windows: int) -> pd.DataFrame:
    trials = frame.groupby(["subject", "session", "trial"], sort=True).agg(
        label=("label", "first"), n=("window", "size")).reset_index()
    trials["seen"] = visible_length(trials["n"].to_numpy(), protocol, crop_windows)
    train = trials[trials.subject != held_out]
    test = trials[trials.subject == held_out].copy()
    test["predicted"] = [length_vote(train["seen"].to_numpy(), train["label"].to_numpy(), n) for n in test["seen"]]
    rows = frame[frame.subject == held_out].merge(test[["session", "trial", "predicted"]], on=["session", "trial"])
    probabilities = np.eye(len(CLASSES))[rows["predicted"].to_numpy()]
    return _with_probabilities(rows, probabilities)


def logreg(frame: pd.DataFrame, held_out: int, columns, seed: int) -> pd.DataFrame:
    train, test = frame[frame.subject != held_out], frame[frame.subject == held_out]
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(train[list(columns)].to_numpy(), train["label"].to_numpy())
    return _with_probabilities(test, model.predict_proba(test[list(columns)].to_numpy()))


def chance(frame: pd.DataFrame, held_out: int, seed: int) -> pd.DataFrame:
    train, test = frame[frame.subject != held_out], frame[frame.subject == held_out]
    model = DummyClassifier(strategy="stratified", random_state=(seed + held_out) % 2**32)   # any train.seed
    model.fit(np.zeros((len(train), 1)), train["label"].to_numpy())
    return _with_probabilities(test, model.predict_proba(np.zeros((len(test), 1))))


def run_baseline(name: str, frame: pd.DataFrame, held_out: int, protocol: str, crop_windows: int,
                 seed: int) -> pd.DataFrame:
    """Per-window predictions of baseline ``name`` for one held-out subject."""
    if name == "length-only":
        return length_only(frame, held_out, protocol, crop_windows)
    if name == "chance":
        return chance(frame, held_out, seed)
    return logreg(frame, held_out, LOGREG_COLUMNS[name], seed)
