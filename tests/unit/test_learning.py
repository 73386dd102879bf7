"""Learning controls: the model learns a planted signal, falls to chance when the label-signal link is
broken, and depends on its seed. Each test fails when the model's forward is replaced by a constant."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.evaluate import subject_metrics
from pipeline.datasets.seedv import N_CLASSES, N_EEG, N_EYE, SPEC, TRIAL_LABELS
from pipeline.sequences import Trials
from pipeline.splits import make_folds
from pipeline.train import train_fold
from tests.conftest import make_params

SUBJECTS = (1, 2, 3, 4)
TRIALS = len(TRIAL_LABELS)   # 45 per subject, SEED-V's label order


def planted(seed: int = 0, strength: float = 1.5) -> Trials:
    """Four subjects of 45 trials (13-20 windows) of N(0, 1) features, plus a class pattern (the same for
    every subject) on 20 EEG and 5 eye features: a signal any working model finds."""
    rng = np.random.default_rng(seed)
    eeg_pattern = np.zeros((N_CLASSES, N_EEG), np.float32)
    eye_pattern = np.zeros((N_CLASSES, N_EYE), np.float32)
    for c in range(N_CLASSES):
        eeg_pattern[c, 4 * c: 4 * c + 4] = strength
        eye_pattern[c, c] = strength
    lengths = rng.integers(13, 21, len(SUBJECTS) * TRIALS)
    labels = np.tile(TRIAL_LABELS, len(SUBJECTS))
    eeg = rng.normal(size=(len(lengths), 20, N_EEG)).astype(np.float32) + eeg_pattern[labels][:, None]
    eye = rng.normal(size=(len(lengths), 20, N_EYE)).astype(np.float32) + eye_pattern[labels][:, None]
    for k, n in enumerate(lengths):   # zero padding past each trial's length, as Trials.from_frame pads
        eeg[k, n:], eye[k, n:] = 0, 0
    position = np.tile(np.arange(TRIALS), len(SUBJECTS))
    return Trials(eeg, eye, lengths, labels.astype(np.int64), np.repeat(SUBJECTS, TRIALS).astype(np.int64),
                  (position // SPEC.trials_per_session + 1).astype(np.int64),
                  (position % SPEC.trials_per_session).astype(np.int64), SPEC)


def shuffled_within_subjects(trials: Trials, seed: int = 1) -> Trials:
    """Each subject's labels permuted across its trials: the class counts stay, the signal and the
    (session, position) -> label map are broken."""
    rng = np.random.default_rng(seed)
    labels = trials.labels.copy()
    for s in SUBJECTS:
        rows = np.flatnonzero(trials.subjects == s)
        labels[rows] = rng.permutation(labels[rows])
    return dataclasses.replace(trials, labels=labels)


def params(**train):
    return make_params(data={"subjects": list(SUBJECTS)}, cv={"subjects": [1]},
                       model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 10, "batch_size": 16, "device": "cpu", "validation": 0,
                              "input_noise": 0.0, **train})


def fold_1(p):
    """The LOSO fold that tests subject 1 (cv.subjects: [1])."""
    (fold,) = make_folds(SPEC, p)
    assert fold.name == "subject-1"
    return fold


def train_fold_1(trials: Trials, p):
    return train_fold(trials, fold_1(p), p)


def held_out_accuracy(trials: Trials, **train) -> float:
    return subject_metrics(train_fold_1(trials, params(**train)).predictions)["trial"]["accuracy"]


@pytest.fixture(scope="module")
def trials():
    return planted()


def test_the_model_learns_a_planted_signal_and_not_a_broken_one(trials):
    assert held_out_accuracy(trials) >= 0.8                              # chance: 0.2
    assert held_out_accuracy(shuffled_within_subjects(trials)) <= 0.4


def test_the_seed_decides_the_weights(trials):
    def weights(seed):
        return train_fold_1(trials, params(epochs=1, seed=seed)).model.state_dict()

    a, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)
    changed = [k for k in a if not torch.equal(a[k], other[k]) and a[k].is_floating_point()]
    assert len(changed) > len(a) // 2    # not one stray tensor: the initialization itself follows the seed


def test_a_diverging_fold_is_a_failure_not_a_score():
    """Finite but aggressive settings blow the loss up to NaN; main once scored such a fold 20 % (argmax of
    NaN probabilities is class 0). Now the training stops with one line naming the fold, step and epoch."""
    from pipeline.errors import UserError

    trials = planted()
    huge = dataclasses.replace(trials, eeg=trials.eeg * 1e18, eye=trials.eye * 1e18)   # finite float32
    with pytest.raises(UserError, match=r"^fold subject-1: the training loss became nan at step \d+ \(epoch \d+\): the "
                                        r"training diverged.*lower train.lr \(now 10\) or train.grad_clip"):
        train_fold_1(huge, params(lr=10.0, grad_clip=1e6, weight_decay=0.0))
