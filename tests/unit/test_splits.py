"""The evaluation splits: exactly the literature's trial sets, no test trial in training, seeds as before."""

import subprocess

import numpy as np
import pytest

from pipeline import datasets
from pipeline.splits import inner_split, make_folds, trial_keys
from tests.conftest import ROOT, make_params

SEEDV = datasets.spec("seed-v")
ALL = list(range(1, 17))


def folds_of(split, dataset="seed-v", subjects=None):
    spec = datasets.spec(dataset)
    subjects = subjects or list(range(1, spec.subjects + 1))
    p = make_params(data={"dataset": dataset, "subjects": subjects}, synthetic={"subjects": spec.subjects},
                    cv={"split": split, "subjects": subjects})
    return spec, make_folds(spec, p)


def trials_of(keys) -> set[tuple[int, int, int]]:
    """(subject, session 1.., trial 1..) of trial keys, trials numbered as the papers do."""
    return {(int(k) >> 16, (int(k) >> 8) & 255, (int(k) & 255) + 1) for k in keys}


def test_subject_dependent_seed_v_is_the_authors_three_blocks():
    """Liu et al.'s protocol: per subject, fold b tests trials 5b-4..5b of every session, trains on the rest."""
    _, folds = folds_of("subject-dependent")
    assert len(folds) == 16 * 3
    for fold in folds:
        subject, block = fold.subject, int(fold.name.split("block-")[1])
        assert fold.name == f"subject-{subject}/block-{block}"
        test = {(subject, k, t) for k in (1, 2, 3) for t in range(5 * block - 4, 5 * block + 1)}
        assert trials_of(fold.test) == test
        assert trials_of(fold.train) == {(subject, k, t) for k in (1, 2, 3) for t in range(1, 16)} - test
        assert fold.validation_by == "trial" and fold.domain_by == "session"
    # each block holds every emotion once per session: the folds are balanced
    for block in range(3):
        for labels in SEEDV.session_labels:
            assert sorted(labels[5 * block:5 * block + 5]) == list(range(5))


def test_subject_dependent_seed_iv_is_the_first_16_against_the_last_8_per_session():
    spec, folds = folds_of("subject-dependent", "seed-iv")
    assert len(folds) == 15 * 3
    for fold in folds:
        session = int(fold.name.split("session-")[1])
        assert fold.name == f"subject-{fold.subject}/session-{session}"
        assert trials_of(fold.test) == {(fold.subject, session, t) for t in range(17, 25)}
        assert trials_of(fold.train) == {(fold.subject, session, t) for t in range(1, 17)}
        assert fold.domain_by is None   # one session to train on: no adversarial branch


def test_cross_session_tests_each_session_once_on_the_others():
    _, folds = folds_of("cross-session")
    assert len(folds) == 16 * 3
    for fold in folds:
        session = int(fold.name.split("session-")[1])
        assert trials_of(fold.test) == {(fold.subject, session, t) for t in range(1, 16)}
        assert trials_of(fold.train) == {(fold.subject, k, t) for k in (1, 2, 3) if k != session for t in range(1, 16)}


def test_loso_unseen_clips_holds_out_the_person_and_the_clips():
    _, folds = folds_of("loso-unseen-clips")
    assert len(folds) == 16 * 3
    for fold in folds:
        block = int(fold.name.split("block-")[1])
        clips = {(k, t) for k in (1, 2, 3) for t in range(5 * block - 4, 5 * block + 1)}
        assert trials_of(fold.test) == {(fold.subject, *clip) for clip in clips}
        train = trials_of(fold.train)
        assert {s for s, _, _ in train} == set(ALL) - {fold.subject}
        assert not {(k, t) for _, k, t in train} & clips            # no test clip was seen in training
        assert len(train) == 15 * 3 * 10


def test_loso_is_what_it_always_was():
    """One fold per test subject, trained on every other subject, seeded by the subject alone (so that LOSO
    results are bit-identical to before splits existed); inner validation draws the same subjects."""
    _, folds = folds_of("loso")
    assert [f.name for f in folds] == [f"subject-{s}" for s in ALL]
    for fold in folds:
        assert fold.seed_key == (fold.subject,) and fold.train_subjects == [s for s in ALL if s != fold.subject]
        assert trials_of(fold.test) == {(fold.subject, k, t) for k in (1, 2, 3) for t in range(1, 16)}
        _, validation, names = inner_split(fold, {}, 2, 0)
        before = np.random.default_rng(np.random.SeedSequence([0, fold.subject, 1])).choice(
            fold.train_subjects, size=2, replace=False)
        assert names == sorted(int(s) for s in before)
        assert {s for s, _, _ in trials_of(validation)} == set(names)


def test_within_subject_inner_validation_is_k_training_trials_per_class():
    _, folds = folds_of("subject-dependent")
    fold = folds[4]
    labels = {int(k): SEEDV.session_labels[((int(k) >> 8) & 255) - 1][int(k) & 255] for k in fold.train}
    inner, validation, names = inner_split(fold, labels, 2, 0)
    assert set(inner) | set(validation) == set(fold.train) and not set(inner) & set(validation)
    assert sorted(labels[k] for k in validation) == sorted(list(range(5)) * 2)   # 2 of each class
    assert len(names) == 10 and inner_split(fold, labels, 2, 0) == (inner, validation, names)   # seeded
    assert inner_split(fold, labels, 2, 1)[1] != validation                       # another seed, another draw


def test_a_validation_that_leaves_nothing_to_train_on_is_one_line():
    from pipeline.errors import UserError

    _, folds = folds_of("loso", subjects=[1, 2, 3])
    with pytest.raises(UserError, match="train.validation: 2 inner-validation subjects leave no subject"):
        inner_split(folds[0], {}, 2, 0)


def test_trial_keys_round_trip():
    keys = trial_keys([1, 127], [1, 3], [0, 23])
    assert trials_of(keys) == {(1, 1, 1), (127, 3, 24)}


def test_no_module_outside_the_dataset_package_uses_a_seed_v_constant():
    found = subprocess.run(["git", "grep", "-n", "--untracked", r"N_SUBJECTS\|TRIALS_PER_SESSION\|// 15", "--", ".",
                            ":!pipeline/datasets", ":!tests/unit/test_splits.py"],
                           cwd=ROOT, capture_output=True, text=True)
    assert found.stdout == "", found.stdout


def test_switching_the_dataset_needs_no_other_param():
    """`dvc exp run -S data.dataset=seed-iv` alone: the default subjects are `all`, every subject of it."""
    from tests.conftest import DEFAULT_PARAMS

    assert DEFAULT_PARAMS["data"]["subjects"] == DEFAULT_PARAMS["cv"]["subjects"] == "all"
    p = make_params(data={"dataset": "seed-iv"})
    assert p.data.subjects == p.cv.subjects == list(range(1, 16)) and p.synthetic.subjects == 15
    assert make_params(data={"subjects": [2, 5]}).cv.subjects == [2, 5]   # cv's all: every ingested subject
