"""The feature table: one row per 4-s window, its Parquet schema, and label-free normalization.

Columns: ``subject session trial window label`` (small ints; session 1..3, trial 0..14 within the
session, window 0..n-1), then 310 ``eeg_<channel>_<band>`` (file order: channel-major), then 33
``eye_NN`` (file order), all float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .files import atomic_path
from .seedv import BANDS, CHANNELS, N_CLASSES, N_EYE, TRIALS_PER_SESSION, SubjectRecording

ID_COLUMNS = ("subject", "session", "trial", "window", "label")
EEG_COLUMNS = tuple(f"eeg_{channel}_{band}" for channel in CHANNELS for band in BANDS)
EYE_COLUMNS = tuple(f"eye_{i:02d}" for i in range(N_EYE))
FEATURE_COLUMNS = EEG_COLUMNS + EYE_COLUMNS
# A predictions table (per window): the id columns, then one probability per class in label order.
PROBABILITY_COLUMNS = tuple(f"p_{c}" for c in range(N_CLASSES))
SCHEMA = pa.schema(
    [("subject", pa.int8()), ("session", pa.int8()), ("trial", pa.int8()), ("window", pa.int16()),
     ("label", pa.int8())]
    + [(name, pa.float32()) for name in FEATURE_COLUMNS]
)
NORMALIZE_SCOPES = {"none": None, "subject": ["subject"], "session": ["subject", "session"]}


def recording_to_frame(recording: SubjectRecording) -> pd.DataFrame:
    """One subject's trials as rows of the feature table."""
    n = [len(x) for x in recording.eeg]
    trial_index = np.repeat(np.arange(len(n)), n)
    ids = {
        "subject": np.full(sum(n), recording.subject, dtype=np.int8),
        "session": (trial_index // TRIALS_PER_SESSION + 1).astype(np.int8),
        "trial": (trial_index % TRIALS_PER_SESSION).astype(np.int8),
        "window": np.concatenate([np.arange(k) for k in n]).astype(np.int16),
        "label": np.repeat(recording.labels, n).astype(np.int8),
    }
    features = np.concatenate([np.concatenate(recording.eeg), np.concatenate(recording.eye)], axis=1)
    frame = pd.DataFrame(features.astype(np.float32), columns=list(FEATURE_COLUMNS))
    return pd.concat([pd.DataFrame(ids), frame], axis=1)


def write_table(frame: pd.DataFrame, path: Path | str) -> None:
    """Write the feature table with its explicit schema, atomically (temporary file, then rename)."""
    table = pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


def normalize(frame: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Z-score every feature column within groups given by ``scope``; statistics never use labels.

    ``subject``: each subject by its own statistics over all its windows (unsupervised; for the
    held-out subject this uses its unlabelled features only). ``session``: per subject and session.
    ``none``: unchanged.
    """
    if scope not in NORMALIZE_SCOPES:
        raise ValueError(f"normalize.scope: '{scope}' is not one of {sorted(NORMALIZE_SCOPES)}")
    keys = NORMALIZE_SCOPES[scope]
    if keys is None:
        return frame.copy()
    columns = list(FEATURE_COLUMNS)
    grouped = frame.groupby(keys, sort=False)[columns]
    mean = grouped.transform("mean")
    std = grouped.transform("std", ddof=0)
    out = frame.copy()
    # A constant feature (std 0) is centred, not divided by zero.
    out[columns] = ((frame[columns] - mean) / std.where(std > 0, 1.0)).astype(np.float32)
    return out
