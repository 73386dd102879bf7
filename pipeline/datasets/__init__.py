"""Datasets as parts: one module per dataset (its facts as a :class:`Spec`, a safe reader, a writer).

Every other module gets a dataset's facts from the :class:`Spec` it is handed (``data.dataset`` in
params.yaml names it; :func:`load` gives the module), never from a constant it imports. A dataset module
provides::

    SPEC: Spec
    read_dataset(root, subjects, nan_policy, complete=True) -> Iterator[SubjectRecording]   # validated,
                                   # one-line errors; complete=False: new recordings, any trials, no labels
    write_subject(root, recording) -> None                                     # the exact on-disk layout
    subjects_in(path) -> tuple[Path, list[int]]   # (dataset root, subjects) of a folder or one file in it
    EYE_GROUPS                                     # eye feature groups, for the synthetic generator

Trials are numbered session-major everywhere: trial index i = position in ``SubjectRecording`` lists, its
session ``spec.session_of(i)`` (1-based) and position ``spec.position_of(i)`` (0-based) within it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import UserError

MAX_SUBJECT = 127   # subject numbers are 1..127: the feature table stores them as int8
DATASETS = ("seed-v", "seed-iv")   # data.dataset: the modules below


@dataclass(frozen=True)
class Spec:
    """The facts of one dataset: what every stage needs to know about its files and its labels."""

    name: str                                    # data.dataset
    classes: tuple[str, ...]                     # emotion names in label order (label c = classes[c])
    subjects: int                                # subjects are numbered 1..subjects
    session_labels: tuple[tuple[int, ...], ...]  # per session, the label of each trial (same for every subject)
    session_windows: tuple[tuple[int, ...], ...]  # per session, windows per trial (the synthetic data's lengths)
    channels: tuple[str, ...]                    # EEG channels in file order
    bands: tuple[str, ...]                       # DE frequency bands in file order
    eye_features: int                            # eye-movement features per window
    window_seconds: float                        # length of one feature window
    block_trials: int                            # trials per clip block (a session's trials in consecutive blocks)
    subject_dependent: str                       # the dataset's own within-subject protocol: "blocks" (every
                                                 # session's block b is fold b) or "last-block" (per session,
                                                 # the last block is the test part)
    source: str                                  # where the layout facts come from

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def sessions(self) -> int:
        return len(self.session_labels)

    @property
    def trials_per_session(self) -> int:
        return len(self.session_labels[0])

    @property
    def n_trials(self) -> int:
        return self.sessions * self.trials_per_session

    @property
    def blocks(self) -> int:
        return self.trials_per_session // self.block_trials

    @property
    def trial_labels(self) -> tuple[int, ...]:
        return tuple(label for session in self.session_labels for label in session)

    @property
    def trial_windows(self) -> tuple[int, ...]:
        return tuple(n for session in self.session_windows for n in session)

    def session_of(self, trial: int) -> int:
        return trial // self.trials_per_session + 1

    def position_of(self, trial: int) -> int:
        return trial % self.trials_per_session

    @property
    def widths(self) -> dict[str, int]:
        """Features per window of each modality: EEG channels x bands (channel-major), eye features."""
        return {"eeg": len(self.channels) * len(self.bands), "eye": self.eye_features}

    @cached_property
    def columns(self) -> dict[str, tuple[str, ...]]:
        """Feature-table column names of each modality, in file order."""
        return {"eeg": tuple(f"eeg_{c}_{b}" for c in self.channels for b in self.bands),
                "eye": tuple(f"eye_{i:02d}" for i in range(self.eye_features))}

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.columns["eeg"] + self.columns["eye"]

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """A predictions table's class columns: one probability per class, in label order."""
        return tuple(f"p_{c}" for c in range(self.n_classes))

    def facts(self) -> dict:
        """The spec as plain values (Parquet metadata, checkpoints): ``Spec(**facts)`` rebuilds it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_facts(cls, facts: dict) -> "Spec":
        return cls(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                      for k, v in facts.items()})


@dataclass
class SubjectRecording:
    """One subject's trials, session-major: per trial EEG (n, widths['eeg']), eye (n, widths['eye']) float32
    arrays and its label (-1: unknown). ``trials``: the trial index of each, when a new recording holds only
    some of the dataset's trials (None: all of them, in order)."""

    subject: int
    eeg: list[np.ndarray]
    eye: list[np.ndarray]
    labels: list[int]
    trials: list[int] | None = None


class DataFormatError(UserError, ValueError):
    """A dataset file that cannot be used; the message is one line naming file, subject and trial."""


def format_error(path, subject, what: str, fix: str, trial: int | None = None, session: int | None = None,
                 error: type[DataFormatError] = DataFormatError) -> DataFormatError:
    """``<file>: subject <s>[, session <k>][, trial <t>]: <what is wrong> — <what to do>``, on one line."""
    where = (f"subject {subject}" + (f", session {session}" if session is not None else "")
             + (f", trial {trial}" if trial is not None else ""))
    what = " ".join(str(what).split())[:300]   # one line, however odd the names a hostile file carries
    return error(f"{path}: {where}: {what} — {fix}")


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



def load(name: str):
    """The module of dataset ``name`` (``data.dataset``): its SPEC, reader and writer (imported here, so
    that the stages' code dependencies see every dataset module)."""
    if name == "seed-v":
        from . import seedv as module
    elif name == "seed-iv":
        from . import seediv as module
    else:
        raise UserError(f"data.dataset: {name!r} is not one of {', '.join(DATASETS)}")
    return module


def spec(name: str) -> Spec:
    return load(name).SPEC
