import numpy as np

from pipeline import seedv
from pipeline.synthetic import generate_subject, write_dataset


def test_deterministic_and_independent_of_subject_count(tmp_path):
    a, b = generate_subject(0, 3), generate_subject(0, 3)
    for x, y in zip(a.eeg + a.eye, b.eeg + b.eye):
        np.testing.assert_array_equal(x, y)
    other_seed = generate_subject(1, 3)
    assert not np.array_equal(a.eeg[0], other_seed.eeg[0])
    write_dataset(tmp_path / "two", seed=0, n_subjects=2)
    write_dataset(tmp_path / "three", seed=0, n_subjects=3)
    for modality in ("eeg", "eye"):
        assert (seedv.subject_file(tmp_path / "two", modality, 2).read_bytes()
                == seedv.subject_file(tmp_path / "three", modality, 2).read_bytes())


def test_layout_lengths_and_labels():
    rec = generate_subject(0, 1)
    assert [len(x) for x in rec.eeg] == [len(x) for x in rec.eye] == list(seedv.TRIAL_WINDOWS)
    assert rec.labels == list(seedv.TRIAL_LABELS)
    assert all(x.shape[1] == 310 for x in rec.eeg) and all(x.shape[1] == 33 for x in rec.eye)
    assert all(np.isfinite(x).all() for x in rec.eeg + rec.eye)


def test_class_structure_survives_subject_shift():
    """Trial-mean features of one subject classify another subject's trials above chance."""
    train, test = generate_subject(0, 1), generate_subject(0, 2)

    def trial_means(rec):
        x = np.stack([np.concatenate([e.mean(0), y.mean(0)]) for e, y in zip(rec.eeg, rec.eye)])
        return (x - x.mean(0)) / x.std(0)

    xtr, xte = trial_means(train), trial_means(test)
    labels = np.array(train.labels)
    centroids = np.stack([xtr[labels == c].mean(0) for c in range(5)])
    predicted = np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == np.array(test.labels)).mean() > 0.4   # chance is 0.2


def test_windows_are_temporally_correlated():
    x = generate_subject(0, 1).eeg[6]                          # 74 windows
    x = x - x.mean(0)
    lag1 = (x[1:] * x[:-1]).sum(0) / (x * x).sum(0)
    assert np.median(lag1) > 0.5
