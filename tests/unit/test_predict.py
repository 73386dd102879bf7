"""pipeline.predict: new SEED-V recordings in, per-trial predictions out, through the safe reader."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from pipeline import predict
from pipeline.datasets.seedv import EMOTIONS, N_TRIALS, SPEC, subject_file
from pipeline.models import save_checkpoint
from pipeline.models.transformer import CrossModalTransformer
from tests.conftest import ROOT, make_params


@pytest.fixture
def checkpoint(tmp_path):
    params = make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32})
    path = tmp_path / "model.pt"
    save_checkpoint(path, CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, n_domains=2).eval(), params,
                    SPEC, [1, 2], 2, None)
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


def run_main(capsys, *argv) -> tuple[int, str]:
    """pipeline.predict's exit status and its stderr, in-process (an uncaught exception fails the test)."""
    try:
        code = predict.main([str(a) for a in argv])
    except SystemExit as exc:     # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


def damaged_checkpoint(checkpoint, tmp_path, change) -> str:
    ckpt = torch.load(checkpoint, weights_only=True)
    change(ckpt)
    path = tmp_path / "damaged.pt"
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda ckpt, tmp: (tmp / "notes.txt").write_text("a text file\n") and tmp / "notes.txt",
     r"notes.txt: not a model.pt checkpoint \(RuntimeError\)"),
    (lambda ckpt, tmp: torch.save({"weights": torch.zeros(3)}, tmp / "other.pt") or tmp / "other.pt",
     r"other.pt: a checkpoint of another format"),
    (lambda ckpt, tmp: damaged_checkpoint(ckpt, tmp, lambda c: c["state_dict"].pop("head.net.0.weight")),
     r"damaged.pt: weights do not fit the checkpoint's params \(tensor head.net.0.weight missing\)"),
    (lambda ckpt, tmp: damaged_checkpoint(ckpt, tmp, lambda c: c["params"]["model"].update(d_model=4096, heads=64,
                                                                                          layers=48, d_ff=65536)),
     r"damaged.pt: model, train.batch_size and cv.crop_windows: one training step needs about 901 GiB"),
    (lambda ckpt, tmp: damaged_checkpoint(ckpt, tmp, lambda c: c["params"]["model"].update(d_model=32, d_ff=64)),
     r"damaged.pt: weights do not fit the checkpoint's params \(tensor .* has shape"),
], ids=["text file", "other format", "missing tensor", "huge dims", "dims that disagree with the weights"])
def test_a_bad_model_is_one_line(dataset, checkpoint, tmp_path, capsys, make, message):
    import re

    code, err = run_main(capsys, dataset, "--model", make(checkpoint, tmp_path), "--out", tmp_path / "p.csv")
    assert code == 1 and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "p.csv").exists()


def test_bad_recordings_and_outputs_are_one_line(dataset, checkpoint, tmp_path, capsys):
    code, err = run_main(capsys, dataset, "--model", checkpoint, "--out", tmp_path)
    assert code == 2 and "--out" in err and "a folder; name a file in it" in err, err
    for modality in ("eeg", "eye"):            # subject 200: past the feature table's int8
        subject_file(dataset, modality, 2).rename(subject_file(dataset, modality, 200))
    code, err = run_main(capsys, dataset, "--model", checkpoint, "--out", tmp_path / "p.csv")
    assert code == 1 and err.count("\n") == 1 and "subject 200: subject number outside 1..127" in err, err
    for modality in ("eeg", "eye"):            # 1_123.npz and 01_123.npz: which one is subject 1?
        subject_file(dataset, modality, 200).unlink()
        copy = subject_file(dataset, modality, 1).with_name("01_123.npz")
        copy.write_bytes(subject_file(dataset, modality, 1).read_bytes())
    code, err = run_main(capsys, dataset, "--model", checkpoint, "--out", tmp_path / "p.csv")
    assert code == 1 and err.count("\n") == 1, err
    assert "EEG_DE_features/1_123.npz: subject 1: a second file names this subject: 01_123.npz" in err


def test_a_model_trained_with_other_params_is_named(checkpoint):
    from pipeline.errors import UserError
    from pipeline.models import check_trained_with

    trained = make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32})
    check_trained_with(trained, [checkpoint])
    check_trained_with(make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},   # reruns no
                                   mlflow={"experiment": "other"}, data={"nan_policy": "impute"}), [checkpoint])
    with pytest.raises(UserError, match=r"model.pt was trained with train.epochs = \d+, params.yaml now says 99"):
        check_trained_with(make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                                       train={"epochs": 99}), [checkpoint])


def test_the_same_weights_give_the_same_bytes_whatever_the_file_is_called(checkpoint, tmp_path):
    """DVC hashes data/models: a checkpoint's bytes must not depend on the temporary name it was written to."""
    from pipeline.models import load_checkpoint

    net, _ = load_checkpoint(checkpoint)
    params = make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32})
    for name in (".model.pt.123-abcdef01.tmp.pt", ".model.pt.456-0123abcd.tmp.pt"):
        save_checkpoint(tmp_path / name, net, params, SPEC, [1, 2], 2, None)
    assert (tmp_path / ".model.pt.123-abcdef01.tmp.pt").read_bytes() == (tmp_path / ".model.pt.456-0123abcd.tmp.pt").read_bytes()


def test_nan_values_follow_the_nan_policy_the_model_was_trained_with(dataset, tmp_path):
    """A NaN in a new recording: refused in one line by a model trained with nan_policy error, imputed (as
    ingest did for its training data) by one trained with impute."""
    import numpy as np

    from pipeline.errors import UserError
    from tests.unit.test_seedv import dicts, rewrite

    eeg = subject_file(dataset, "eeg", 1)
    data, _ = dicts(eeg)
    data[10] = data[10].copy()
    data[10][2, 7] = np.nan
    rewrite(eeg, data=data)
    models = {}
    for policy in ("error", "impute"):
        params = make_params(model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32}, data={"nan_policy": policy})
        models[policy] = tmp_path / f"{policy}.pt"
        save_checkpoint(models[policy], CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, 2).eval(),
                        params, SPEC, [1, 2], 2, None)
    with pytest.raises(UserError, match=r"subject 1, trial 10: 1 NaN/Inf values — clean the file or set "
                                        r"data.nan_policy: impute"):
        predict.predict(dataset, str(models["error"]))
    table = predict.predict(dataset, str(models["impute"]))
    assert len(table) == 2 * N_TRIALS and table[[f"p_{e}" for e in EMOTIONS]].notna().all().all()
