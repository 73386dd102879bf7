import hashlib

import numpy as np
import pandas as pd

from pipeline import synthetic
from pipeline.datasets import seedv
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


def digest(recording) -> str:
    h = hashlib.sha256()
    for x in recording.eeg + recording.eye:
        h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return h.hexdigest()


def test_zero_drift_is_the_data_from_before_drift_existed():
    """Bit for bit: sha256 of subjects 1 and 2 (seed 0) recorded before ``drift`` was added (numpy 2.4.6,
    x86-64). drift 0 draws from no stream and adds nothing."""
    recorded = {1: "08a6cb04c3ad32190752c305af382f0600b7f870f68ef9c0eb48f78493ebfe25",
                2: "0c78848c273d634e995802a9f1aeb647d80596b438996bfd938b2e895c03f43e"}
    for subject, expected in recorded.items():
        assert digest(generate_subject(0, subject)) == digest(generate_subject(0, subject, drift=0.0)) == expected


def test_drift_is_a_linear_within_session_trend():
    """Drift only adds a per-trial constant, linear in the trial's position within its session and the same
    trend in every session, of about one noise std per unit of drift over a session: no other draw moved."""
    base, drifted = generate_subject(0, 1), generate_subject(0, 1, drift=2.0)
    for modality, noise in (("eeg", synthetic.EEG_NOISE), ("eye", synthetic.EYE_NOISE)):
        shifts = []
        for a, b in zip(getattr(base, modality), getattr(drifted, modality)):
            np.testing.assert_allclose(b - a, (b - a)[:1].repeat(len(a), 0), atol=1e-9)   # constant in the trial
            shifts.append((b - a)[0])
        trials = seedv.SPEC.trials_per_session
        position = np.arange(45) % trials / (trials - 1) - 0.5
        per_session = shifts[14] - shifts[0]                                # first to last trial of session 1
        np.testing.assert_allclose(shifts, position[:, None] * per_session[None], atol=1e-9)
        rms_in_noise_stds = np.sqrt(np.mean(per_session**2)) / (2.0 * noise)   # scale_m[s] in 0.7..1.4
        assert 0.5 < rms_in_noise_stds < 2.0, rms_in_noise_stds
    trend = {s: generate_subject(0, s, drift=2.0).eye[14] - generate_subject(0, s).eye[14] for s in (2, 3)}
    assert not np.allclose(trend[2][0], trend[3][0])       # every subject has its own part of the direction
    assert np.corrcoef(trend[2][0], trend[3][0])[0, 1] > 0.3   # ... and a shared population part


def test_drift_makes_position_readable():
    """The position probe: near chance (1/3) without drift, well above it with drift 1 on every subject."""
    from pipeline.baselines import position_probe
    from pipeline.features import normalize, recording_to_frame

    def probe(drift):
        frame = normalize(pd.concat([recording_to_frame(generate_subject(0, s, drift=drift), seedv.SPEC) for s in range(1, 5)],
                                    ignore_index=True), "subject")
        return np.array([position_probe(frame, s, seed=0, spec=seedv.SPEC)["accuracy"] for s in range(1, 5)])

    without, with_drift = probe(0.0), probe(1.0)
    assert without.mean() < 0.45 and with_drift.min() > 0.75, (without, with_drift)
