"""Evaluation splits as parts: ``cv.split`` names a function that turns the trials into :class:`Fold`s.

Every fold tests one subject (of ``cv.subjects``) and is named after what it holds out:

- ``loso`` (``subject-5``): train on every other subject, test on all of subject 5's trials. The protocol
  of the reproduced work; every test trial shows clips the training subjects saw.
- ``subject-dependent``: the dataset's own within-subject protocol. SEED-V (``subject-5/block-2``): the
  three folds of its authors (Liu et al., IEEE TCDS 2021), trials 1-5, 6-10 and 11-15 of every session;
  each 5-trial block holds every emotion once. SEED-IV (``subject-5/session-2``): per session, the first 16
  trials train and the last 8 test (Zheng et al., IEEE Trans. Cybern. 2019, the split most SEED-IV papers
  follow).
- ``cross-session`` (``subject-5/session-3``): train on the subject's other sessions, test on this one.
- ``loso-unseen-clips`` (``subject-5/block-2``): new person *and* new clips: train on the other subjects'
  trials outside block 2 of every session, test on subject 5's block 2. Each session's clip blocks are
  distinct films, so no test clip was seen in training.

A fold also says how its inner validation is drawn from its training part (``validation_by``): whole
training subjects under the subject-level splits; under the within-subject ones, ``train.validation``
trials of each class (at most all but one of a class's training trials), since one subject's sessions or
blocks are too few to hold out. And what the subject-adversarial branch separates (``domain_by``): the
training subjects, or with one training subject its sessions (off when the training part has one session).

scikit-learn's ``LeaveOneGroupOut`` makes the folds; a fold is a name plus the keys of its train and test
trials, and :meth:`Fold.mask` turns keys into a boolean mask over any table with subject/session/trial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut

from .datasets import Spec
from .errors import UserError
from .params import Params


def trial_keys(subjects, sessions, trials) -> np.ndarray:
    """One int64 key per (subject, session, trial): rows of a feature table or of :class:`Trials`."""
    return (np.asarray(subjects, np.int64) << 16) | (np.asarray(sessions, np.int64) << 8) | np.asarray(trials, np.int64)


@dataclass(frozen=True)
class Fold:
    name: str                   # "subject-5", "subject-5/block-2", "subject-5/session-3": also its file name
    subject: int                # the test subject
    seed_key: tuple[int, ...]   # with train.seed, seeds the fold (loso: (subject,), as before splits existed)
    train: tuple[int, ...]      # sorted trial keys of the training part
    test: tuple[int, ...]       # sorted trial keys of the test part
    validation_by: str          # "subject" | "trial": what an inner-validation group is
    domain_by: str | None       # "subject" | "session" | None: the adversarial branch's classes

    def mask(self, part: str, table) -> np.ndarray:
        """Boolean mask of ``part`` ("train" | "test") over the rows of ``table`` (a DataFrame with subject,
        session and trial columns, or :class:`pipeline.sequences.Trials`)."""
        keys = (trial_keys(table["subject"], table["session"], table["trial"]) if hasattr(table, "columns")
                else table.keys())
        return np.isin(keys, np.asarray(getattr(self, part), dtype=np.int64))

    @property
    def train_subjects(self) -> list[int]:
        return sorted({int(k) >> 16 for k in self.train})


def _trial_table(spec: Spec, subjects: list[int]) -> dict[str, np.ndarray]:
    """Every (subject, session, trial) of ``subjects`` with its clip block: the units folds are made of."""
    s, k, t = np.meshgrid(subjects, np.arange(1, spec.sessions + 1), np.arange(spec.trials_per_session), indexing="ij")
    s, k, t = s.ravel(), k.ravel(), t.ravel()
    return {"subject": s, "session": k, "trial": t, "block": t // spec.block_trials, "key": trial_keys(s, k, t)}


def _folds(table, groups: np.ndarray, train_of, name_of, test_subjects, validation_by: str) -> list[Fold]:
    """One fold per group of ``groups`` (LeaveOneGroupOut over the trials with a group >= 0: those that can
    be tested) whose trials belong to a test subject. ``train_of(test_rows)``: the boolean mask of the
    fold's training trials over ``table``; ``name_of(test_rows)``: its (name, seed key)."""
    candidates = np.flatnonzero(groups >= 0)
    folds = []
    for _, test in LeaveOneGroupOut().split(candidates, groups=groups[candidates]):
        test_rows = candidates[test]
        subject = int(table["subject"][test_rows[0]])
        if subject not in test_subjects:
            continue
        train_rows = np.flatnonzero(train_of(test_rows))
        name, seed_key = name_of(test_rows)
        if validation_by == "subject":
            domains = "subject"
        else:
            domains = "session" if len(np.unique(table["session"][train_rows])) > 1 else None
        folds.append(Fold(name, subject, seed_key, tuple(sorted(table["key"][train_rows].tolist())),
                          tuple(sorted(table["key"][test_rows].tolist())), validation_by, domains))
    return folds


def loso(spec: Spec, p: Params) -> list[Fold]:
    table = _trial_table(spec, p.data.subjects)
    subject = table["subject"]
    return _folds(table, subject, lambda test: subject != subject[test[0]],
                  lambda test: (f"subject-{subject[test[0]]}", (int(subject[test[0]]),)),
                  p.cv.subjects, "subject")


def _name_of(table, part: str, code: int):
    """Names folds ``subject-<s>/<part>-<n>`` (part: block or session, both numbered from 1) and seeds
    them with the key (s, code, n): a code per split, so two splits never share a stream."""
    def name_of(test):
        s, n = int(table["subject"][test[0]]), int(table[part][test[0]]) + (part == "block")
        return f"subject-{s}/{part}-{n}", (s, code, n)
    return name_of


def subject_dependent(spec: Spec, p: Params) -> list[Fold]:
    table = _trial_table(spec, p.data.subjects)
    subject, session, block = table["subject"], table["session"], table["block"]
    if spec.subject_dependent == "blocks":      # fold b: block b of every session
        return _folds(table, subject * 1000 + block,
                      lambda test: (subject == subject[test[0]]) & (block != block[test[0]]),
                      _name_of(table, "block", 1), p.cv.subjects, "trial")
    last = block == spec.blocks - 1              # "last-block": per session, the last block is the test part
    return _folds(table, np.where(last, subject * 1000 + session, -1),
                  lambda test: (subject == subject[test[0]]) & (session == session[test[0]]) & ~last,
                  _name_of(table, "session", 1), p.cv.subjects, "trial")


def cross_session(spec: Spec, p: Params) -> list[Fold]:
    table = _trial_table(spec, p.data.subjects)
    subject, session = table["subject"], table["session"]
    return _folds(table, subject * 1000 + session,
                  lambda test: (subject == subject[test[0]]) & (session != session[test[0]]),
                  _name_of(table, "session", 2), p.cv.subjects, "trial")


def loso_unseen_clips(spec: Spec, p: Params) -> list[Fold]:
    table = _trial_table(spec, p.data.subjects)
    subject, block = table["subject"], table["block"]
    return _folds(table, subject * 1000 + block,
                  lambda test: (subject != subject[test[0]]) & (block != block[test[0]]),
                  _name_of(table, "block", 3), p.cv.subjects, "subject")


SPLITS = {"loso": loso, "subject-dependent": subject_dependent, "cross-session": cross_session,
          "loso-unseen-clips": loso_unseen_clips}


def make_folds(spec: Spec, p: Params) -> list[Fold]:
    """The folds of ``cv.split`` for the test subjects ``cv.subjects``, in subject order."""
    return sorted(SPLITS[p.cv.split](spec, p), key=lambda f: (f.subject, f.name))


def inner_split(fold: Fold, labels: dict[int, int], k: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...], list]:
    """(inner-training keys, inner-validation keys, the validation groups' names) of ``fold``'s training part,
    drawn from their own stream of the fold's seed (so the draw does not shift the training stream):
    ``k`` training subjects, or ``k`` trials of each class (at most all but one of that class's).
    ``labels``: the label of each trial key. With k = 0 everything trains and nothing validates."""
    if not k:
        return fold.train, (), []
    rng = np.random.default_rng(np.random.SeedSequence([seed, *fold.seed_key, 1]))
    train = np.asarray(fold.train, dtype=np.int64)
    if fold.validation_by == "subject" and k > len(fold.train_subjects) - 1:
        raise UserError(f"train.validation: {k} inner-validation subjects leave no subject to train fold {fold.name} "
                        f"on ({len(fold.train_subjects)} training subjects); lower it")
    if fold.validation_by == "subject":
        chosen = sorted(int(s) for s in rng.choice(fold.train_subjects, size=k, replace=False))
        held = np.isin(train >> 16, chosen)
        names = chosen
    else:
        classes = np.array([labels[int(key)] for key in train])
        held = np.zeros(len(train), bool)
        for c in np.unique(classes):
            members = np.flatnonzero(classes == c)
            held[rng.choice(members, size=min(k, len(members) - 1), replace=False)] = True
        names = [f"session-{(int(key) >> 8) & 255}/trial-{(int(key) & 255) + 1}" for key in train[held]]
    return tuple(train[~held].tolist()), tuple(train[held].tolist()), names
