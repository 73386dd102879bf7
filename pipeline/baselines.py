"""Shortcut-audit and linear baselines on the model's folds (:mod:`pipeline.splits`), in its prediction format.

- ``length-only``: predicts a trial's label from the window count the model gets to see, by majority
  vote of the training trials with that count (the nearest counts break ties and fill misses). Under
  ``cv.input: trial`` the count is the trial length, which identifies the clip; under ``crop`` every
  input has ``cv.crop_windows`` windows, so it can only guess.
- ``position-only``: predicts a trial's label from its (session, trial position) alone, by majority vote
  of the fold's training trials at that position. SEED-V shows every subject the same clips in the same
  order per session, so under LOSO this scores 100 % by construction: position *is* the label. It never
  looks at a feature; it is the ceiling of what a slow within-session drift (impedance, fatigue) that
  features carry could give a model, which :func:`position_probe` measures.
- ``eeg-logreg``, ``eye-logreg``, ``both-logreg``: scikit-learn logistic regression per window
  (default regularization, not tuned), trials by mean log-probability.
- ``crop-logreg``: both-logreg's window log-probabilities aggregated over the model's test sequences
  exactly as the model's are (:func:`crop_aggregate`), so at window level it uses the same temporal context
  as the model (under ``crop``, windows w-11..w+11): model vs crop-logreg compares models, not context.
- ``chance``: scikit-learn's stratified dummy classifier (random draws with the training class frequencies).
Each returns per-window probabilities for the fold's test trials, so :mod:`pipeline.evaluate` scores
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

from .datasets import Spec
from .features import ID_COLUMNS, feature_columns
from .sequences import test_sequences
from .splits import Fold

BASELINES = ("length-only", "position-only", "eeg-logreg", "eye-logreg", "both-logreg", "crop-logreg", "chance")
TRIAL_KEYS = ["session", "trial", "window"]   # window order within a subject: trials concatenated in order
MISSING_CLASS_LOG_PROBABILITY = -690.0   # log(1e-300): a class no training window had


def logreg_columns(spec: Spec) -> dict[str, tuple[str, ...]]:
    return {"eeg-logreg": spec.columns["eeg"], "eye-logreg": spec.columns["eye"], "both-logreg": spec.feature_columns}


def _with_probabilities(rows: pd.DataFrame, probabilities: np.ndarray) -> pd.DataFrame:
    out = rows[list(ID_COLUMNS)].reset_index(drop=True).copy()
    for c in range(probabilities.shape[1]):
        out[f"p_{c}"] = probabilities[:, c].astype(np.float32)
    return out


def _parts(frame: pd.DataFrame, fold: Fold) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fold's training rows and its test rows (in window order)."""
    test = frame[fold.mask("test", frame)].sort_values(TRIAL_KEYS, kind="stable")
    return frame[fold.mask("train", frame)], test


def visible_length(n_windows: np.ndarray, cv_input: str, crop_windows: int) -> np.ndarray:
    """The sequence length the model is given for a trial of ``n_windows`` windows."""
    return n_windows if cv_input == "trial" else np.full_like(n_windows, crop_windows)


def length_vote(train_lengths: np.ndarray, train_labels: np.ndarray, length: int, n_classes: int) -> int:
    """Majority label of training trials with this length; ties and misses widen to the nearest lengths."""
    distance = np.abs(train_lengths - length)
    votes = np.zeros(n_classes)
    for d in np.unique(distance):
        votes += np.bincount(train_labels[distance == d], minlength=n_classes)
        best = np.flatnonzero(votes == votes.max())
        if len(best) == 1:
            return int(best[0])
    return int(best[0])  # a tie that no length breaks: the lowest label, deterministically


def _trials(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.groupby(["subject", "session", "trial"], sort=True).agg(
        label=("label", "first"), n=("window", "size")).reset_index()


def length_only(frame: pd.DataFrame, fold: Fold, cv_input: str, crop_windows: int, spec: Spec) -> pd.DataFrame:
    train_rows, test_rows = _parts(frame, fold)
    train, test = _trials(train_rows), _trials(test_rows)
    seen = visible_length(train["n"].to_numpy(), cv_input, crop_windows)
    test["predicted"] = [length_vote(seen, train["label"].to_numpy(), n, spec.n_classes)
                         for n in visible_length(test["n"].to_numpy(), cv_input, crop_windows)]
    rows = test_rows.merge(test[["session", "trial", "predicted"]], on=["session", "trial"])
    return _with_probabilities(rows, np.eye(spec.n_classes)[rows["predicted"].to_numpy()])


def position_only(frame: pd.DataFrame, fold: Fold, spec: Spec) -> pd.DataFrame:
    """Each test trial gets the majority label of the training trials at its (session, trial) (ties: the
    lowest label). 100 % on SEED-V's layout under LOSO by construction (see the module docstring). A
    position no training trial holds (the within-subject splits hold out positions) gets the training part's
    majority label: there, position tells nothing."""
    train_rows, test_rows = _parts(frame, fold)
    trials = _trials(train_rows)
    vote = (trials.groupby(["session", "trial"])["label"].agg(lambda labels: labels.mode().min())
            .rename("predicted").reset_index())
    rows = test_rows.merge(vote, on=["session", "trial"], how="left")
    rows["predicted"] = rows["predicted"].fillna(trials["label"].mode().min()).astype(np.int64)
    return _with_probabilities(rows, np.eye(spec.n_classes)[rows["predicted"].to_numpy()])


def _fit_logreg(frame: pd.DataFrame, fold: Fold, columns, seed: int):
    """(logistic regression fitted on the fold's training windows, its test rows in window order, their
    (n, columns) features)."""
    train, test = _parts(frame, fold)
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(train[list(columns)].to_numpy(), train["label"].to_numpy())
    return model, test, test[list(columns)].to_numpy()


def _probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba over every class, 0 for a class the training part lacked (a within-subject fold can)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def logreg(frame: pd.DataFrame, fold: Fold, columns, seed: int, spec: Spec) -> pd.DataFrame:
    model, test, x = _fit_logreg(frame, fold, columns, seed)
    return _with_probabilities(test, _probabilities(model, x, spec.n_classes))


def crop_aggregate(log_probs: np.ndarray, lengths: np.ndarray, cv_input: str, crop: int) -> np.ndarray:
    """Per-window probabilities (W, C) made from per-window log-probabilities ``log_probs`` (W, C) of trials
    of ``lengths`` windows (concatenated in order, W = sum(lengths)) the way
    :func:`pipeline.sequences.predict_windows` makes the model's: each test sequence of
    :func:`~pipeline.sequences.test_sequences` (every sliding crop, or the whole trial) gets the log_softmax
    of the mean of its windows' log-probabilities, as a crop's logits; each window the softmax of the mean
    over the sequences that contain it. A window a short trial's tiled crop repeats counts once per repeat,
    in the crop's mean and in its own (as in predict_windows)."""
    positions, owners = test_sequences(lengths, cv_input, crop)
    sequence, column = np.nonzero(positions >= 0)
    window = np.r_[0, np.cumsum(lengths)[:-1]][owners[sequence]] + positions[sequence, column]
    # (sequences, W) counts of each window in each sequence (duplicate entries are summed)
    member = sparse.csr_array((np.ones(len(window)), (sequence, window)), shape=(len(owners), len(log_probs)))
    sequence_log_probs = log_softmax((member @ log_probs) / member.sum(axis=1)[:, None], axis=1)
    return softmax((member.T @ sequence_log_probs) / member.sum(axis=0)[:, None], axis=1)


def _crop_predictions(model, test: pd.DataFrame, x: np.ndarray, cv_input: str, crop_windows: int,
                      n_classes: int) -> pd.DataFrame:
    lengths = test.groupby(["subject", "session", "trial"], sort=True).size().to_numpy()
    if len(model.classes_) == n_classes:
        log_probs = log_softmax(model.decision_function(x), axis=1)
    else:   # a class the training part lacked: (almost) impossible, not NaN
        log_probs = np.full((len(x), n_classes), MISSING_CLASS_LOG_PROBABILITY)
        log_probs[:, model.classes_] = model.predict_log_proba(x)
    return _with_probabilities(test, crop_aggregate(log_probs, lengths, cv_input, crop_windows))


def _stream(seed: int, fold: Fold) -> int:
    """The chance baseline's random_state: LOSO keeps ``train.seed + subject``; other splits a SeedSequence
    of (train.seed, fold seed key)."""
    if len(fold.seed_key) == 1:
        return (seed + fold.seed_key[0]) % 2**32
    return int(np.random.SeedSequence([seed, *fold.seed_key]).generate_state(1)[0])


def chance(frame: pd.DataFrame, fold: Fold, seed: int, spec: Spec) -> pd.DataFrame:
    train, test = _parts(frame, fold)
    model = DummyClassifier(strategy="stratified", random_state=_stream(seed, fold))
    model.fit(np.zeros((len(train), 1)), train["label"].to_numpy())
    return _with_probabilities(test, _probabilities(model, np.zeros((len(test), 1)), spec.n_classes))


def fold_baselines(frame: pd.DataFrame, fold: Fold, cv_input: str, crop_windows: int, seed: int,
                   spec: Spec) -> dict[str, pd.DataFrame]:
    """Every baseline's per-window predictions for one fold's test part, with one both-modality logistic
    regression fitted for both-logreg and crop-logreg."""
    columns = logreg_columns(spec)
    out = {"length-only": length_only(frame, fold, cv_input, crop_windows, spec),
           "position-only": position_only(frame, fold, spec),
           "eeg-logreg": logreg(frame, fold, columns["eeg-logreg"], seed, spec),
           "eye-logreg": logreg(frame, fold, columns["eye-logreg"], seed, spec),
           "chance": chance(frame, fold, seed, spec)}
    model, test, x = _fit_logreg(frame, fold, columns["both-logreg"], seed)
    out["both-logreg"] = _with_probabilities(test, _probabilities(model, x, spec.n_classes))
    out["crop-logreg"] = _crop_predictions(model, test, x, cv_input, crop_windows, spec.n_classes)
    return {name: out[name] for name in BASELINES}


# --- audit ------------------------------------------------------------------------------------------


def trial_means(frame: pd.DataFrame) -> pd.DataFrame:
    """(trials, features): the mean of every feature (both modalities) over each trial's windows, indexed by
    (subject, session, trial). No label."""
    return frame.groupby(["subject", "session", "trial"], sort=True)[feature_columns(frame)].mean()


def position_probe(frame: pd.DataFrame, held_out: int, seed: int, spec: Spec, means: pd.DataFrame | None = None) -> dict:
    """Label-free audit: how well the held-out subject's trial-mean features give each trial's position
    block within its session (``spec.block_trials`` consecutive trials: SEED-V 0-4, 5-9, 10-14; SEED-IV
    0-7, 8-15, 16-23). Each SEED-V block of 5 trials holds every emotion once, so its blocks are
    label-balanced and emotion cannot carry the probe (SEED-IV's blocks are not balanced: there emotion can
    carry part of it); chance is 1 / blocks. Well above
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
    x, tercile = means.to_numpy(), trial // spec.block_trials
    actual, predicted = [], []
    for k in np.unique(session[subject == held_out]):
        train, test = (subject != held_out) & (session != k), (subject == held_out) & (session == k)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
        model.fit(x[train], tercile[train])
        actual.append(tercile[test])
        predicted.append(model.predict(x[test]))
    actual, predicted = np.concatenate(actual), np.concatenate(predicted)
    return {"accuracy": float(accuracy_score(actual, predicted)), "n": len(actual)}


def summarize_probe(per_subject: dict[int, dict], spec: Spec) -> dict:
    """The probe over held-out subjects: chance, mean and sample std (ddof 1; NaN with one subject) of the
    tercile accuracy, and each subject's result, in the layout of ``metrics/audits.json``'s entry."""
    accuracy = np.array([m["accuracy"] for m in per_subject.values()])
    return {"target": f"trial position block within the session ({spec.blocks} blocks of {spec.block_trials} trials) "
                      "from trial-mean features, fitted on the other subjects' other sessions; well above chance: "
                      "the features carry position, so a within-session drift could carry the label",
            "chance": 1 / spec.blocks, "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else float("nan"),
            "n_folds": len(per_subject), "per_subject": {int(s): m for s, m in per_subject.items()}}
