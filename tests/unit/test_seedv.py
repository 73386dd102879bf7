import os
import pickle

import numpy as np
import pytest

from pipeline.datasets import seedv
from pipeline.datasets.seedv import SeedVFormatError, read_subject, subject_file


def rewrite(path, data=None, label=None, **extra):
    """Rewrite one npz with replaced 'data'/'label' dicts (pickled like SEED-V) or raw members."""
    old = np.load(path)
    members = {"data": old["data"], "label": old["label"]}
    if data is not None:
        members["data"] = pickle.dumps(data)
    if label is not None:
        members["label"] = pickle.dumps(label)
    members.update(extra)
    members = {k: v for k, v in members.items() if v is not None}
    np.savez(path, **members)


def dicts(path):
    z = np.load(path)
    return pickle.loads(z["data"]), pickle.loads(z["label"])


def test_roundtrip_and_plain_reader(dataset):
    rec = read_subject(dataset, 1)
    assert len(rec.eeg) == len(rec.eye) == 45
    assert [len(x) for x in rec.eeg] == list(seedv.TRIAL_WINDOWS)
    assert rec.labels == list(seedv.TRIAL_LABELS)
    assert rec.eeg[0].shape == (18, 310) and rec.eye[0].shape == (18, 33)
    # Readable exactly as real SEED-V is: np.load(allow_pickle=True) + pickle.loads.
    z = np.load(subject_file(dataset, "eeg", 1), allow_pickle=True)
    data, label = pickle.loads(z["data"]), pickle.loads(z["label"])
    assert sorted(data) == list(range(45))
    assert data[6].shape == (74, 310) and np.all(label[6] == seedv.TRIAL_LABELS[6])
    np.testing.assert_allclose(data[3].astype(np.float32), rec.eeg[3])


def test_session_constants():
    assert [sum(s) for s in seedv.SESSION_WINDOWS] == [681, 541, 601]
    assert max(seedv.TRIAL_WINDOWS) == 74 and min(seedv.TRIAL_WINDOWS) == 13


def test_numpy1_paths_protocol0_and_object_arrays(dataset):
    """Old files: numpy.core module paths, protocol-0 pickles, pickles stored as object arrays."""
    path = subject_file(dataset, "eye", 2)
    data, label = dicts(path)
    old_style = pickle.dumps(data, protocol=0).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in old_style
    np.savez(path, data=old_style, label=pickle.dumps(label, protocol=2))
    rec = read_subject(dataset, 2)
    np.testing.assert_allclose(rec.eye[5], data[5].astype(np.float32))

    obj = np.empty((), dtype=object)
    obj[()] = pickle.dumps(label)
    np.savez(path, data=pickle.dumps(data), label=obj)
    assert read_subject(dataset, 2).labels == list(seedv.TRIAL_LABELS)


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("where", ["pickled dict", "object array"])
def test_hostile_pickle_is_refused_and_not_executed(dataset, tmp_path, where):
    target = tmp_path / "pwned"
    path = subject_file(dataset, "eeg", 1)
    data, _ = dicts(path)
    data[7] = Exploit(str(target))
    if where == "pickled dict":
        rewrite(path, data=data)
    else:
        obj = np.empty((), dtype=object)
        obj[()] = data
        rewrite(path, data=obj)
    with pytest.raises(SeedVFormatError, match=r"1_123.npz: subject 1: forbidden pickle content"):
        read_subject(dataset, 1)
    assert not target.exists()


def damage(dataset, kind):
    """Apply one kind of damage to subject 1; return the message the reader must give."""
    eeg, eye = subject_file(dataset, "eeg", 1), subject_file(dataset, "eye", 1)
    data, label = dicts(eeg)
    if kind == "missing file":
        eye.unlink()
        return r"Eye_movement_features/1_123.npz: subject 1: file missing"
    if kind == "broken link":
        eye.unlink()
        eye.symlink_to(eye.parent / "nowhere.npz")
        return r"Eye_movement_features/1_123.npz: subject 1: file missing \(a broken symbolic link\)"
    if kind in ("directory", "pipe", "device"):
        eye.unlink()
        {"directory": eye.mkdir, "pipe": lambda: os.mkfifo(eye), "device": lambda: eye.symlink_to("/dev/zero")}[kind]()
        return r"Eye_movement_features/1_123.npz: subject 1: not a regular file"
    if kind == "missing modality":
        for f in eeg.parent.iterdir():
            f.unlink()
        eeg.parent.rmdir()
        return r"EEG_DE_features/1_123.npz: subject 1: file missing"
    if kind == "truncated":
        raw = eeg.read_bytes()
        eeg.write_bytes(raw[: len(raw) // 2])
        return r"1_123.npz: subject 1: unreadable npz"
    if kind == "garbage":
        eeg.write_bytes(b"not a zip at all")
        return r"1_123.npz: subject 1: unreadable npz"
    if kind == "corrupt pickle":
        z = np.load(eeg)
        np.savez(eeg, data=z["data"].tobytes()[:100], label=z["label"])
        return r"subject 1: 'data' is not a readable pickle"
    if kind == "missing key":
        z = np.load(eeg)
        np.savez(eeg, data=z["data"])
        return r"subject 1: key 'label' missing"
    if kind == "trial set":
        del data[44]
        rewrite(eeg, data=data)
        return r"subject 1: 'data' trial set is not 0..44 \(missing \[44\]"
    if kind == "eeg width":
        data[3] = data[3][:, :300]
        rewrite(eeg, data=data)
        return r"subject 1, trial 3: data has 300 features per window, expected 310"
    if kind == "eye width":
        d, _ = dicts(eye)
        d[4] = np.concatenate([d[4], d[4][:, :1]], axis=1)
        rewrite(eye, data=d)
        return r"subject 1, trial 4: data has 34 features per window, expected 33"
    if kind == "window counts differ":
        data[5] = data[5][:-1]
        label[5] = label[5][:-1]
        rewrite(eeg, data=data, label=label)
        return r"Eye_movement_features/1_123.npz: subject 1, trial 5: 64 eye windows but 63 EEG windows"
    if kind == "label varies":
        label[2] = label[2].copy()
        label[2][3] = 0
        rewrite(eeg, label=label)
        return r"subject 1, trial 2: labels vary within the trial"
    if kind == "label range":
        label[8] = np.full_like(label[8], 7)
        rewrite(eeg, label=label)
        return r"subject 1, trial 8: label 7.0 is not one of 0..4"
    if kind == "labels differ between modalities":
        label[9] = np.full_like(label[9], (seedv.TRIAL_LABELS[9] + 1) % 5)
        rewrite(eeg, label=label)
        return r"subject 1, trial 9: label \d differs from the EEG label"
    if kind == "nan":
        data[10] = data[10].copy()
        data[10][2, 7] = np.nan
        data[10][3, 8] = np.inf
        rewrite(eeg, data=data)
        return r"subject 1, trial 10: 2 NaN/Inf values — clean the file or set data.nan_policy: impute"
    if kind == "empty trial":
        data[11] = np.zeros((0, 310))
        label[11] = np.zeros(0)
        rewrite(eeg, data=data, label=label)
        return r"subject 1, trial 11: empty trial"
    if kind == "not numeric":
        data[12] = np.array([["a"] * 310] * data[12].shape[0])
        rewrite(eeg, data=data)
        return r"subject 1, trial 12: data is a <U1 array that is not a rectangular array of numbers"
    raise AssertionError(kind)


KINDS = ["missing file", "broken link", "directory", "pipe", "device", "missing modality", "truncated", "garbage",
         "corrupt pickle", "missing key", "trial set", "eeg width", "eye width", "window counts differ",
         "label varies", "label range", "labels differ between modalities", "nan", "empty trial", "not numeric"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_gives_one_line_error(dataset, kind):
    expected = damage(dataset, kind)
    with pytest.raises(SeedVFormatError, match=expected) as info:
        read_subject(dataset, 1)
    message = str(info.value)
    assert "\n" not in message and " — " in message


def test_nan_impute_policy(dataset):
    eeg = subject_file(dataset, "eeg", 1)
    data, label = dicts(eeg)
    clean = data[10].copy()
    data[10] = data[10].copy()
    data[10][2, 7] = np.nan                      # interior gap: interpolated
    data[10][0, 9] = np.inf                      # leading gap: nearest valid value
    data[10][:, 11] = np.nan                     # whole feature missing in the trial: 0
    rewrite(eeg, data=data)
    rec = read_subject(dataset, 1, nan_policy="impute")
    x = rec.eeg[10]
    assert np.isfinite(x).all()
    assert x[2, 7] == pytest.approx((clean[1, 7] + clean[3, 7]) / 2, rel=1e-5)
    assert x[0, 9] == pytest.approx(clean[1, 9], rel=1e-5)
    assert np.all(x[:, 11] == 0)


def test_per_trial_scalar_and_column_labels_are_accepted(dataset):
    eeg = subject_file(dataset, "eeg", 1)
    data, label = dicts(eeg)
    label = {t: (np.float64(v[0]) if t % 2 else v[:, None]) for t, v in label.items()}
    rewrite(eeg, label=label)
    assert read_subject(dataset, 1).labels == list(seedv.TRIAL_LABELS)


def test_a_recording_under_two_subject_ids_is_refused_naming_both(dataset):
    """Subject 2's files replaced by subject 1's, re-saved (other bytes, same numbers): as training data it
    would put held-out subject 1 into its own training set."""
    for modality in ("eeg", "eye"):
        members = dict(np.load(subject_file(dataset, modality, 1)))
        np.savez_compressed(subject_file(dataset, modality, 2), **members)
    assert subject_file(dataset, "eeg", 2).read_bytes() != subject_file(dataset, "eeg", 1).read_bytes()
    with pytest.raises(SeedVFormatError, match=r"EEG_DE_features/2_123.npz: subject 2: the same recording as "
                                               r"subject 1 \(.*EEG_DE_features/1_123.npz\) — each subject"):
        list(seedv.read_dataset(dataset, [1, 2]))
    assert [r.subject for r in seedv.read_dataset(dataset, [1])] == [1]


def test_one_file_per_subject_and_modality(dataset):
    eye = subject_file(dataset, "eye", 1)
    eye.with_name("1_123 (copy).npz").write_bytes(eye.read_bytes())
    with pytest.raises(SeedVFormatError, match=r"Eye_movement_features/1_123.npz: subject 1: a second file names "
                                               r"this subject: 1_123 \(copy\).npz — keep one file per subject"):
        list(seedv.read_dataset(dataset, [1, 2]))
    eye.with_name("1_123 (copy).npz").unlink()
    eeg = subject_file(dataset, "eeg", 2)
    eeg.rename(eeg.with_name("02_123.npz"))
    with pytest.raises(SeedVFormatError, match=r"EEG_DE_features/2_123.npz: subject 2: file missing, but "
                                               r"02_123.npz is there — rename it 2_123.npz"):
        list(seedv.read_dataset(dataset, [1, 2]))
    assert [r.subject for r in seedv.read_dataset(dataset, [1])] == [1]   # 02_... is not subject 1's


def test_a_new_recording_may_hold_some_trials_and_no_labels(dataset):
    """For prediction (complete=False): any of the 45 trials, the same in both files, labels not needed;
    training (complete=True) still refuses such a file."""
    eeg, eye = subject_file(dataset, "eeg", 1), subject_file(dataset, "eye", 1)
    data, _ = dicts(eeg)
    eye_data, _ = dicts(eye)
    np.savez(eeg, data=pickle.dumps({t: data[t] for t in (44, 3, 9)}))   # any order, no 'label'
    np.savez(eye, data=pickle.dumps({t: eye_data[t] for t in (3, 9, 44)}))
    rec = read_subject(dataset, 1, complete=False)
    assert rec.trials == [3, 9, 44] and rec.labels == [-1, -1, -1]
    np.testing.assert_array_equal(rec.eeg[2], data[44].astype(np.float32))
    with pytest.raises(SeedVFormatError, match=r"EEG_DE_features/1_123.npz: subject 1: key 'label' missing"):
        read_subject(dataset, 1)
    np.savez(eye, data=pickle.dumps({t: eye_data[t] for t in (3, 44)}))
    with pytest.raises(SeedVFormatError, match=r"Eye_movement_features/1_123.npz: subject 1: trials \[9\] are in one "
                                               r"of 1_123.npz and this file only"):
        read_subject(dataset, 1, complete=False)
    np.savez(eye, data=pickle.dumps({3: eye_data[3], 45: eye_data[3]}))
    with pytest.raises(SeedVFormatError, match=r"'data' trial set is not a part of 0..44 \(extra \[45\]\)"):
        read_subject(dataset, 1, complete=False)
