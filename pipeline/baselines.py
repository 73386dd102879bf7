"""Shortcut-audit and linear baselines on the same LOSO folds, with the model's prediction format.

- ``length-only``: predicts a trial's label from the window count the model gets to see, by majority
  vote of the training trials with that count (the nearest counts break ties and fill misses). Under
  ``cv.protocol: trial`` the count is the trial length, which identifies the clip; under ``crop`` every
  input has ``cv.crop_windows`` windows, so it can only guess.
- ``position-only``: predicts a trial's label from its (session, trial position) alone, by majority vote
  of the training subjects' trials at that position. SEED-V shows every subject the same clips in the same
  order per session, so under LOSO this scores 100 % by construction: position *is* the label. It never
  looks at a feature; it is the ceiling of what a slow within-session drift (impedance, fatigue) that
  features carry could give a model, which :func:`position_probe` measures.
- ``eeg-logreg``, ``eye-logreg``, ``both-logreg``: scikit-learn logistic regression per window
  (default regularization, not tuned), trials by mean log-probability.
- ``crop-logreg``: both-logreg's window log-probabilities aggregated over the model's test sequences
  exactly as the model's are (:func:`crop_aggregate`), so at window level it uses the same temporal context
  as the model (under ``crop``, windows w-11..w+11): model vs crop-logreg compares models, not context.
- ``chance``: scikit-learn's stratified dummy classifier (random draws with the training class frequencies).
Each returns per-window probabilities for the held-out subject, so :mod:`pipeline.evaluate` scores
model and baselines with the same code.

An audit beside them, not an emotion classifier: :func:`position_probe` asks, without labels, whether the
features carry trial position within the session.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import log_softmax, softmax
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .evaluate import CLASSES
from .features import EEG_COLUMNS, EYE_COLUMNS, FEATURE_COLUMNS, ID_COLUMNS, PROBABILITY_COLUMNS
from .sequences import test_sequences

BASELINES = ("length-only", "position-only", "eeg-logreg", "eye-logreg", "both-logreg", "crop-logreg", "chance")
LOGREG_COLUMNS = {"eeg-logreg": EEG_COLUMNS, "eye-logreg": EYE_COLUMNS, "both-logreg": EEG_COLUMNS + EYE_COLUMNS}
TRIAL_KEYS = ["session", "trial", "window"]   # window order within a subject: trials concatenated in order
POSITION_BLOCK = 5    # trials per position tercile (0-4, 5-9, 10-14); each SEED-V block of 5 has every emotion once


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


def position_only(frame: pd.DataFrame, held_out: int) -> pd.DataFrame:
    """Each held-out trial gets the majority label of the training subjects' trials at its (session, trial)
    (ties: the lowest label). 100 % on SEED-V's layout by construction (see the module docstring)."""
    trials = frame.groupby(["subject", "session", "trial"], sort=True)["label"].first().reset_index()
    vote = (trials[trials.subject != held_out].groupby(["session", "trial"])["label"]
            .agg(lambda labels: labels.mode().min()).rename("predicted").reset_index())
    rows = frame[frame.subject == held_out].merge(vote, on=["session", "trial"])
    return _with_probabilities(rows, np.eye(len(CLASSES))[rows["predicted"].to_numpy()])


def _fit_logreg(frame: pd.DataFrame, held_out: int, columns, seed: int):
    """(logistic regression fitted on the other subjects' windows, the held-out subject's rows in window
    order, their (n, columns) features)."""
    train = frame[frame.subject != held_out]
    test = frame[frame.subject == held_out].sort_values(TRIAL_KEYS, kind="stable")
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(train[list(columns)].to_numpy(), train["label"].to_numpy())
    return model, test, test[list(columns)].to_numpy()


def logreg(frame: pd.DataFrame, held_out: int, columns, seed: int) -> pd.DataFrame:
    model, test, x = _fit_logreg(frame, held_out, columns, seed)
    return _with_probabilities(test, model.predict_proba(x))


def crop_aggregate(log_probs: np.ndarray, lengths: np.ndarray, protocol: str, crop: int) -> np.ndarray:
    """Per-window probabilities (W, C) made from per-window log-probabilities ``log_probs`` (W, C) of trials
    of ``lengths`` windows (concatenated in order, W = sum(lengths)) the way
    :func:`pipeline.sequences.predict_windows` makes the model's: each test sequence of
    :func:`~pipeline.sequences.test_sequences` (every sliding crop, or the whole trial) gets the log_softmax
    of the mean of its windows' log-probabilities, as a crop's logits; each window the softmax of the mean
    over the sequences that contain it. A window a short trial's tiled crop repeats counts once per repeat,
    in the crop's mean and in its own (as in predict_windows)."""
    positions, owners = test_sequences(lengths, protocol, crop)
    sequence, column = np.nonzero(positions >= 0)
    window = np.r_[0, np.cumsum(lengths)[:-1]][owners[sequence]] + positions[sequence, column]
    # (sequences, W) counts of each window in each sequence (duplicate entries are summed)
    member = sparse.csr_array((np.ones(len(window)), (sequence, window)), shape=(len(owners), len(log_probs)))
    sequence_log_probs = log_softmax((member @ log_probs) / member.sum(axis=1)[:, None], axis=1)
    return softmax((member.T @ sequence_log_probs) / member.sum(axis=0)[:, None], axis=1)


def _crop_predictions(model, test: pd.DataFrame, x: np.ndarray, protocol: str, crop_windows: int) -> pd.DataFrame:
    lengths = test.groupby(["session", "trial"], sort=True).size().to_numpy()
    log_probs = log_softmax(model.decision_function(x), axis=1)
    return _with_probabilities(test, crop_aggregate(log_probs, lengths, protocol, crop_windows))


def crop_logreg(frame: pd.DataFrame, held_out: int, protocol: str, crop_windows: int, seed: int) -> pd.DataFrame:
    model, test, x = _fit_logreg(frame, held_out, LOGREG_COLUMNS["both-logreg"], seed)
    return _crop_predictions(model, test, x, protocol, crop_windows)


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
    if name == "position-only":
        return position_only(frame, held_out)
    if name == "crop-logreg":
        return crop_logreg(frame, held_out, protocol, crop_windows, seed)
    if name == "chance":
        return chance(frame, held_out, seed)
    return logreg(frame, held_out, LOGREG_COLUMNS[name], seed)


def fold_baselines(frame: pd.DataFrame, held_out: int, protocol: str, crop_windows: int,
                   seed: int) -> dict[str, pd.DataFrame]:
    """Every baseline's per-window predictions for one held-out subject, as :func:`run_baseline` gives
    them, with one both-modality logistic regression fitted for both-logreg and crop-logreg."""
    out = {name: run_baseline(name, frame, held_out, protocol, crop_windows, seed)
           for name in BASELINES if name not in ("both-logreg", "crop-logreg")}
    model, test, x = _fit_logreg(frame, held_out, LOGREG_COLUMNS["both-logreg"], seed)
    out["both-logreg"] = _with_probabilities(test, model.predict_proba(x))
    out["crop-logreg"] = _crop_predictions(model, test, x, protocol, crop_windows)
    return {name: out[name] for name in BASELINES}


# --- audit ------------------------------------------------------------------------------------------


def trial_means(frame: pd.DataFrame) -> pd.DataFrame:
    """(trials, features): the mean of every feature (both modalities) over each trial's windows, indexed by
    (subject, session, trial). No label."""
    return frame.groupby(["subject", "session", "trial"], sort=True)[list(FEATURE_COLUMNS)].mean()


def position_probe(frame: pd.DataFrame, held_out: int, seed: int, means: pd.DataFrame | None = None) -> dict:
    """Label-free audit: how well the held-out subject's trial-mean features give each trial's position
    tercile within its session (trials 0-4, 5-9, 10-14). Each SEED-V block of 5 trials holds every emotion
    once, so the terciles are label-balanced and emotion cannot carry the probe; chance is 1/3. Well above
    chance means the features carry position, so a slow drift could carry the label (``position-only``
    shows that position gives all of it).

    Per session k of the held-out subject, a logistic regression (standardized features) is fitted on the
    other subjects' trials of the *other* sessions: each session has its own clips, so the probe cannot
    learn a clip's content at a position (legitimate stimulus information, which sits at the same position
    for every subject), only a position trend shared across clips: a drift. ``means``: :func:`trial_means`
    of ``frame``, to compute it once for all folds.

    Returns ``{"accuracy": tercile accuracy over the held-out subject's trials, "n": its trial count}``."""
    means = trial_means(frame) if means is None else means
    subject, session, trial = (means.index.get_level_values(k).to_numpy() for k in ("subject", "session", "trial"))
    x, tercile = means.to_numpy(), trial // POSITION_BLOCK
    actual, predicted = [], []
    for k in np.unique(session[subject == held_out]):
        train, test = (subject != held_out) & (session != k), (subject == held_out) & (session == k)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
        model.fit(x[train], tercile[train])
        actual.append(tercile[test])
        predicted.append(model.predict(x[test]))
    actual, predicted = np.concatenate(actual), np.concatenate(predicted)
    return {"accuracy": float(accuracy_score(actual, predicted)), "n": len(actual)}


def summarize_probe(per_subject: dict[int, dict]) -> dict:
    """The probe over held-out subjects: chance, mean and sample std (ddof 1; NaN with one subject) of the
    tercile accuracy, and each subject's result, in the layout of ``metrics/audits.json``'s entry."""
    accuracy = np.array([m["accuracy"] for m in per_subject.values()])
    return {"target": "trial position tercile within the session (trials 0-4, 5-9, 10-14) from trial-mean "
                      "features, fitted on the other subjects' other sessions; well above chance: the features "
                      "carry position, so a within-session drift could carry the label",
            "chance": 1 / 3, "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else float("nan"),
            "n_folds": len(per_subject), "per_subject": {int(s): m for s, m in per_subject.items()}}
