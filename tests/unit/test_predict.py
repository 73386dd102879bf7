"""pipeline.predict: new SEED-V recordings in, per-trial predictions out, through the safe reader."""

import subprocess
import sys

import pandas as pd
import pytest

from pipeline import predict
from pipeline.model import CrossModalTransformer, save_checkpoint
from pipeline.seedv import EMOTIONS, N_TRIALS, subject_file
from tests.conftest import ROOT, make_params


@pytest.fixture
def checkpoint(tmp_path):
    params = make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32})
    path = tmp_path / "model.pt"
    save_checkpoint(path, CrossModalTransformer(params.model, n_subjects=2).eval(), params, [1, 2], None)
    return path


def test_a_folder_and_a_file_are_predicted(dataset, checkpoint, tmp_path):
    table = predict.predict(dataset, str(checkpoint))
    assert len(table) == 2 * N_TRIALS and set(table["predicted"]) <= set(EMOTIONS)
    assert table[[f"p_{e}" for e in EMOTIONS]].sum(axis=1).round(5).eq(1).all()
    one = predict.predict(subject_file(dataset, "eeg", 2), str(checkpoint))
    pd.testing.assert_frame_equal(one.reset_index(drop=True),
                                  table[table.subject == 2].reset_index(drop=True))


def test_the_command_writes_a_table_and_refuses_a_bad_file_in_one_line(dataset, checkpoint, tmp_path):
    out = tmp_path / "out.parquet"
    ok = subprocess.run([sys.executable, "-m", "pipeline.predict", str(dataset), "--model", str(checkpoint),
                         "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(pd.read_parquet(out)) == 2 * N_TRIALS
    bad = subject_file(dataset, "eye", 1)
    bad.write_bytes(bad.read_bytes()[:500])
    failed = subprocess.run([sys.executable, "-m", "pipeline.predict", str(dataset), "--model", str(checkpoint),
                             "--out", str(tmp_path / "x.csv")], cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert "Eye_movement_features/1_123.npz: subject 1: unreadable npz" in failed.stderr
    assert not (tmp_path / "x.csv").exists()
