import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.datasets.seedv import SPEC
from pipeline.features import ID_COLUMNS, normalize, read_table, recording_to_frame, write_table
from pipeline.synthetic import generate_subject
from tests.conftest import TABLE_COLUMNS, WINDOWS_PER_SUBJECT

EEG_COLUMNS, EYE_COLUMNS, FEATURE_COLUMNS = SPEC.columns["eeg"], SPEC.columns["eye"], SPEC.feature_columns


@pytest.fixture(scope="module")
def frame():
    return pd.concat([recording_to_frame(generate_subject(0, s), SPEC) for s in (1, 2)], ignore_index=True)


def test_columns_and_ids(frame, tmp_path):
    assert list(frame.columns) == list(ID_COLUMNS + EEG_COLUMNS + EYE_COLUMNS)
    assert len(frame.columns) == TABLE_COLUMNS and len(frame) == 2 * WINDOWS_PER_SUBJECT
    assert EEG_COLUMNS[:6] == ("eeg_FP1_delta", "eeg_FP1_theta", "eeg_FP1_alpha", "eeg_FP1_beta",
                               "eeg_FP1_gamma", "eeg_FPZ_delta")
    assert EEG_COLUMNS[-1] == "eeg_CB2_gamma" and EYE_COLUMNS[-1] == "eye_32"
    s1 = frame[frame.subject == 1]
    assert sorted(s1.session.unique()) == [1, 2, 3] and s1.trial.max() == 14
    first = s1[(s1.session == 2) & (s1.trial == 0)]
    assert len(first) == 59 and list(first.window) == list(range(59)) and set(first.label) == {2}
    write_table(frame, tmp_path / "f.parquet", SPEC)
    schema = pq.read_schema(tmp_path / "f.parquet")
    assert str(schema.field("subject").type) == "int8" and str(schema.field("window").type) == "int16"
    assert str(schema.field("eye_00").type) == "float"
    pd.testing.assert_frame_equal(read_table(tmp_path / "f.parquet", SPEC), frame)
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("scope,keys", [("subject", ["subject"]), ("session", ["subject", "session"])])
def test_normalize_scopes(frame, scope, keys):
    out = normalize(frame, scope)
    cols = list(FEATURE_COLUMNS)
    for _, group in out.groupby(keys):
        np.testing.assert_allclose(group[cols].mean(), 0, atol=1e-4)
        np.testing.assert_allclose(group[cols].std(ddof=0), 1, atol=1e-3)
    assert out[cols].dtypes.unique().tolist() == [np.float32]
    pd.testing.assert_frame_equal(out[list(ID_COLUMNS)], frame[list(ID_COLUMNS)])


def test_normalize_never_uses_labels(frame):
    shuffled = frame.copy()
    shuffled["label"] = np.random.default_rng(0).permutation(shuffled["label"].to_numpy())
    a, b = normalize(frame, "subject"), normalize(shuffled, "subject")
    np.testing.assert_array_equal(a[list(FEATURE_COLUMNS)].to_numpy(), b[list(FEATURE_COLUMNS)].to_numpy())


def test_normalize_none_and_constant_feature(frame):
    pd.testing.assert_frame_equal(normalize(frame, "none"), frame)
    const = frame.copy()
    const["eye_00"] = np.float32(3.0)
    assert (normalize(const, "subject")["eye_00"] == 0).all()
    with pytest.raises(ValueError, match="normalize.scope"):
        normalize(frame, "global")
