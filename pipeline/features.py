"""The feature table: one row per 4-s window, its Parquet schema, and label-free normalization.

Columns: ``subject session trial window label`` (small ints; session 1.., trial 0.. within the session,
window 0..n-1), then the dataset's ``eeg_<channel>_<band>`` columns (file order: channel-major) and its
``eye_NN`` columns (file order), all float32 (:attr:`pipeline.datasets.Spec.columns`). The file's Parquet
metadata records the dataset spec; :func:`read_table` refuses a table of another dataset in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .datasets import Spec, SubjectRecording
from .errors import UserError
from .files import atomic_path

ID_COLUMNS = ("subject", "session", "trial", "window", "label")
NORMALIZE_SCOPES = {"none": None, "subject": ["subject"], "session": ["subject", "session"]}
SPEC_KEY = b"pipeline.dataset"   # Parquet metadata key of the dataset spec (JSON)


def schema(spec: Spec) -> pa.Schema:
    ids = [("subject", pa.int8()), ("session", pa.int8()), ("trial", pa.int8()), ("window", pa.int16()),
           ("label", pa.int8())]
    return pa.schema(ids + [(name, pa.float32()) for name in spec.feature_columns],
                     metadata={SPEC_KEY: json.dumps(spec.facts(), sort_keys=True).encode()})


def recording_to_frame(recording: SubjectRecording, spec: Spec) -> pd.DataFrame:
    """One subject's trials as rows of the feature table."""
    n = [len(x) for x in recording.eeg]
    trial_index = np.repeat(np.arange(len(n)) if recording.trials is None else recording.trials, n)
    ids = {
        "subject": np.full(sum(n), recording.subject, dtype=np.int8),
        "session": (trial_index // spec.trials_per_session + 1).astype(np.int8),
        "trial": (trial_index % spec.trials_per_session).astype(np.int8),
        "window": np.concatenate([np.arange(k) for k in n]).astype(np.int16),
        "label": np.repeat(recording.labels, n).astype(np.int8),
    }
    features = np.concatenate([np.concatenate(recording.eeg), np.concatenate(recording.eye)], axis=1)
    frame = pd.DataFrame(features.astype(np.float32), columns=list(spec.feature_columns))
    return pd.concat([pd.DataFrame(ids), frame], axis=1)


def write_table(frame: pd.DataFrame, path: Path | str, spec: Spec) -> None:
    """Write the feature table with its explicit schema and spec, atomically (temporary file, then rename)."""
    table = pa.Table.from_pandas(frame, schema=schema(spec), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def table_spec(path: Path | str) -> Spec | None:
    """The dataset spec recorded in a feature table (None for a table written without one)."""
    metadata = pq.read_schema(path).metadata or {}
    return Spec.from_facts(json.loads(metadata[SPEC_KEY])) if SPEC_KEY in metadata else None


def read_table(path: Path | str, spec: Spec, columns: list[str] | None = None) -> pd.DataFrame:
    """The feature table at ``path``, after checking that it holds ``spec``'s dataset."""
    found = table_spec(path)
    if found != spec:
        what = f"features of {found.name}" if found else "a feature table without a dataset spec"
        raise UserError(f"{path}: {what}, but data.dataset is {spec.name} (or its facts changed) — rerun "
                        "`dvc repro` to rebuild the features")
    return pq.read_table(path, columns=columns).to_pandas()


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ID_COLUMNS]


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
    columns = feature_columns(frame)
    grouped = frame.groupby(keys, sort=False)[columns]
    mean = grouped.transform("mean")
    std = grouped.transform("std", ddof=0)
    out = frame.copy()
    # A constant feature (std 0) is centred, not divided by zero.
    out[columns] = ((frame[columns] - mean) / std.where(std > 0, 1.0)).astype(np.float32)
    return out
