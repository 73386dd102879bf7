"""The SEED-V on-disk format: constants, a safe reader with validation, and a writer.

Layout of a SEED-V folder (as distributed by its lab)::

    EEG_DE_features/<subject>_123.npz       keys data, label
    Eye_movement_features/<subject>_123.npz keys data, label

Each value is a *pickled dict* (stored as a bytes scalar) mapping trial 0..44 to an array: EEG
(n_windows, 310) = 62 channels x 5 bands, channel-major; eye (n_windows, 33); label (n_windows,).
Trial t belongs to session t // 15 + 1.

Pickles can execute code on load, so they are read with :class:`RestrictedUnpickler`, which admits only
the globals a dict of numpy arrays needs (numpy 1.x and 2.x module paths) and refuses everything else
before anything runs. Every problem a user's files can have is raised as :class:`SeedVFormatError` with
one line: ``<file>: subject <s>, trial <t>: <what is wrong> — <what to do>``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

EMOTIONS = ("disgust", "fear", "sad", "neutral", "happy")  # label 0..4
BANDS = ("delta", "theta", "alpha", "beta", "gamma")
CHANNELS = (
    "FP1 FPZ FP2 AF3 AF4 F7 F5 F3 F1 FZ F2 F4 F6 F8 FT7 FC5 FC3 FC1 FCZ FC2 FC4 FC6 FT8 T7 C5 C3 C1 CZ "
    "C2 C4 C6 T8 TP7 CP5 CP3 CP1 CPZ CP2 CP4 CP6 TP8 P7 P5 P3 P1 PZ P2 P4 P6 P8 PO7 PO5 PO3 POZ PO4 PO6 "
    "PO8 CB1 O1 OZ O2 CB2"
).split()
N_EEG = len(CHANNELS) * len(BANDS)  # 310
N_EYE = 33
N_SUBJECTS = 16
N_SESSIONS = 3
TRIALS_PER_SESSION = 15
N_TRIALS = N_SESSIONS * TRIALS_PER_SESSION  # 45

# Trial labels per session (the same clips, in the same order, for every subject).
SESSION_LABELS = (
    (4, 1, 3, 2, 0, 4, 1, 3, 2, 0, 4, 1, 3, 2, 0),
    (2, 1, 3, 0, 4, 4, 0, 3, 2, 1, 3, 4, 1, 2, 0),
    (2, 1, 3, 0, 4, 4, 0, 3, 2, 1, 3, 4, 1, 2, 0),
)
# Windows (4 s each) per trial: fixed by the film clip, hence identical for every subject.
SESSION_WINDOWS = (
    (18, 24, 59, 46, 36, 64, 74, 17, 66, 35, 43, 43, 58, 60, 38),
    (59, 47, 16, 31, 32, 14, 60, 57, 30, 24, 46, 29, 23, 54, 19),
    (72, 16, 41, 22, 13, 59, 21, 18, 57, 71, 55, 29, 51, 32, 44),
)
TRIAL_LABELS = tuple(label for session in SESSION_LABELS for label in session)
TRIAL_WINDOWS = tuple(n for session in SESSION_WINDOWS for n in session)

MODALITIES = {"eeg": ("EEG_DE_features", N_EEG), "eye": ("Eye_movement_features", N_EYE)}


class SeedVFormatError(ValueError):
    """A SEED-V file that cannot be used; the message is one line naming file, subject and trial."""


def format_error(path, subject, what: str, fix: str, trial: int | None = None) -> SeedVFormatError:
    where = f"subject {subject}" + (f", trial {trial}" if trial is not None else "")
    return SeedVFormatError(f"{path}: {where}: {what} — {fix}")


def subject_file(root: Path | str, modality: str, subject: int) -> Path:
    return Path(root) / MODALITIES[modality][0] / f"{subject}_123.npz"


# --- safe unpickling --------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    # numpy 2.x paths, then the numpy 1.x paths that old files (the real SEED-V) carry.
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol-2 pickles written by Python 3 encode raw bytes through _codecs.encode(str, "latin1").
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class ForbiddenPickleError(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed for dicts of numpy arrays; nothing else runs."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenPickleError(f"{module}.{name}") from None


def safe_loads(payload: bytes):
    """Unpickle bytes with :class:`RestrictedUnpickler`; raises ForbiddenPickleError on any other global."""
    return RestrictedUnpickler(io.BytesIO(payload)).load()


def _read_npz_member(zf: zipfile.ZipFile, key: str):
    """The member ``key`` of an npz: a bytes scalar (the usual layout) or a pickled object array."""
    with zf.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(fh)
        if dtype.hasobject:  # np.save(..., allow_pickle=True) wrote a pickle after the header
            array = RestrictedUnpickler(fh).load()
        else:
            raw = fh.read()
            array = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)))
            array = array.reshape(shape, order="F" if fortran_order else "C")
    return array.item() if array.shape == () else array


# --- reading and validation -------------------------------------------------------------------------


@dataclass
class SubjectRecording:
    """One subject's 45 trials: per trial EEG (n, 310), eye (n, 33) float arrays and its label."""

    subject: int
    eeg: list[np.ndarray]
    eye: list[np.ndarray]
    labels: list[int]


def _load_trial_dicts(path: Path, subject: int) -> tuple[dict, dict]:
    """The ``data`` and ``label`` dicts of one npz file, safely unpickled."""
    if not path.is_file():
        raise format_error(path, subject, "file missing", "check data.raw_dir and data.subjects")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in ("data", "label"):
                if f"{key}.npy" not in names:
                    raise format_error(path, subject, f"key '{key}' missing",
                                       "the npz must hold 'data' and 'label' as in SEED-V")
            members = [_read_npz_member(zf, key) for key in ("data", "label")]
    except SeedVFormatError:
        raise
    except ForbiddenPickleError as exc:
        raise format_error(path, subject, f"forbidden pickle content ({exc}); nothing was executed",
                           "only dicts of numpy arrays are accepted; replace the file") from None
    except Exception as exc:  # zip/npy/pickle damage in any of its many forms
        raise format_error(path, subject, f"unreadable npz ({type(exc).__name__}: {exc})".replace("\n", " "),
                           "the file is damaged or truncated; copy it again") from None
    dicts = []
    for key, member in zip(("data", "label"), members):
        if isinstance(member, (bytes, np.bytes_)):
            try:
                member = safe_loads(bytes(member))
            except ForbiddenPickleError as exc:
                raise format_error(path, subject, f"forbidden pickle content in '{key}' ({exc}); "
                                   "nothing was executed",
                                   "only dicts of numpy arrays are accepted; replace the file") from None
            except Exception as exc:
                raise format_error(path, subject, f"'{key}' is not a readable pickle ({type(exc).__name__})",
                                   "the file is damaged or truncated; copy it again") from None
        if not isinstance(member, dict):
            raise format_error(path, subject, f"'{key}' is a {type(member).__name__}, not a dict of trials",
                               "store a pickled dict trial -> array as SEED-V does")
        dicts.append(member)
    return dicts[0], dicts[1]


def _trial_keys(path: Path, subject: int, key: str, trials: dict) -> dict[int, np.ndarray]:
    try:
        by_int = {int(k): v for k, v in trials.items()}
    except (TypeError, ValueError):
        raise format_error(path, subject, f"'{key}' has non-integer trial keys",
                           "trial keys must be 0..44") from None
    if set(by_int) != set(range(N_TRIALS)) or len(by_int) != len(trials):
        missing = sorted(set(range(N_TRIALS)) - set(by_int))
        extra = sorted(set(by_int) - set(range(N_TRIALS)))
        raise format_error(path, subject, f"'{key}' trial set is not 0..44 (missing {missing}, extra {extra})",
                           "every subject file must hold all 45 trials")
    return by_int


def _as_float_matrix(path, subject, trial, array, width: int) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fiu" or array.ndim != 2:
        raise format_error(path, subject, f"data is {array.dtype} with shape {array.shape}, expected a "
                           f"numeric (n_windows, {width}) array", "fix or regenerate the file", trial)
    if array.shape[0] == 0:
        raise format_error(path, subject, "empty trial (0 windows)", "fix or regenerate the file", trial)
    if array.shape[1] != width:
        raise format_error(path, subject, f"data has {array.shape[1]} features per window, expected {width}",
                           "is this the right modality folder?", trial)
    return array.astype(np.float32)


def _trial_label(path, subject, trial, labels, n_windows: int) -> int:
    labels = np.asarray(labels)
    if labels.ndim == 0:                                   # one label per trial: same for every window
        labels = np.full(n_windows, labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype.kind not in "fiu" or labels.ndim != 1 or labels.shape[0] != n_windows:
        raise format_error(path, subject, f"label has shape {labels.shape} ({labels.dtype}), expected "
                           f"({n_windows},) numbers, one per window", "fix or regenerate the file", trial)
    if not np.all(labels == labels[0]):
        raise format_error(path, subject, f"labels vary within the trial ({sorted(set(labels.tolist()))})",
                           "a trial has one emotion label", trial)
    label = labels[0].item()
    if not (np.isfinite(label) and label == int(label) and 0 <= label <= 4):
        raise format_error(path, subject, f"label {label!r} outside 0..4",
                           "labels are 0 disgust, 1 fear, 2 sad, 3 neutral, 4 happy", trial)
    return int(label)


def impute_trial(trial: np.ndarray) -> np.ndarray:
    """Fill non-finite values of one trial (n_windows, features) by linear interpolation over windows,
    holding the nearest valid value at the ends; a feature with no finite value in the trial gets 0."""
    out = trial.copy()
    positions = np.arange(len(trial))
    for column in np.flatnonzero(~np.isfinite(trial).all(axis=0)):
        finite = np.isfinite(trial[:, column])
        out[:, column] = (np.interp(positions, positions[finite], trial[finite, column])
                          if finite.any() else 0.0)
    return out


def read_subject(root: Path | str, subject: int, nan_policy: str = "error") -> SubjectRecording:
    """Read and validate one subject's EEG and eye files.

    ``nan_policy``: ``error`` refuses NaN/Inf; ``impute`` fills them with :func:`impute_trial`.
    """
    modalities = {}
    for modality, (_, width) in MODALITIES.items():
        path = subject_file(root, modality, subject)
        data, label = _load_trial_dicts(path, subject)
        data = _trial_keys(path, subject, "data", data)
        label = _trial_keys(path, subject, "label", label)
        arrays, labels = [], []
        for trial in range(N_TRIALS):
            array = _as_float_matrix(path, subject, trial, data[trial], width)
            if not np.isfinite(array).all():
                if nan_policy != "impute":
                    bad = int((~np.isfinite(array)).sum())
                    raise format_error(path, subject, f"{bad} NaN/Inf values",
                                       "clean the file or set data.nan_policy: impute", trial)
                array = impute_trial(array)
            arrays.append(array)
            labels.append(_trial_label(path, subject, trial, label[trial], len(array)))
        modalities[modality] = (path, arrays, labels)

    (eeg_path, eeg, eeg_labels), (eye_path, eye, eye_labels) = modalities["eeg"], modalities["eye"]
    for trial in range(N_TRIALS):
        if len(eeg[trial]) != len(eye[trial]):
            raise format_error(eye_path, subject, f"{len(eye[trial])} eye windows but {len(eeg[trial])} "
                               f"EEG windows in {eeg_path}", "both modalities must cover the same windows",
                               trial)
        if eeg_labels[trial] != eye_labels[trial]:
            raise format_error(eye_path, subject, f"label {eye_labels[trial]} differs from the EEG label "
                               f"{eeg_labels[trial]} in {eeg_path}", "both modalities must agree", trial)
    return SubjectRecording(subject, eeg, eye, eeg_labels)


# --- writing ----------------------------------------------------------------------------------------


def write_subject(root: Path | str, recording: SubjectRecording) -> None:
    """Write one subject in the exact SEED-V layout (pickled dicts stored as bytes in an npz).

    Each file is written to a temporary name in its folder, then renamed, so no half-written file remains.
    """
    per_window_labels = {t: np.full(len(x), recording.labels[t], dtype=np.float64)
                         for t, x in enumerate(recording.eeg)}
    for modality, arrays in (("eeg", recording.eeg), ("eye", recording.eye)):
        path = subject_file(root, modality, recording.subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {t: np.asarray(x, dtype=np.float64) for t, x in enumerate(arrays)}
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, data=pickle.dumps(data), label=pickle.dumps(per_window_labels))
        tmp.replace(path)
