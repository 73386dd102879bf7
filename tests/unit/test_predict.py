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


# --- the recording table: one code path for predict and the served model ---------------------------


@pytest.fixture(scope="module")
def trained_fold(tmp_path_factory):
    """A fold (subject 1 held out) trained on the normalized table of three raw synthetic subjects: (raw
    feature table as ingested, its fold's trial predictions, the checkpoint)."""
    from pipeline.evaluate import trial_predictions
    from pipeline.features import normalize, recording_to_frame
    from pipeline.sequences import Trials
    from pipeline.splits import make_folds
    from pipeline.synthetic import generate_subject
    from pipeline.train import train_fold

    raw = pd.concat([recording_to_frame(generate_subject(0, s), SPEC) for s in (1, 2, 3)], ignore_index=True)
    params = make_params(data={"subjects": [1, 2, 3]}, cv={"subjects": [1]}, train={"epochs": 2, "validation": 1},
                         model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32})
    fold = make_folds(SPEC, params)[0]
    result = train_fold(Trials.from_frame(normalize(raw, "subject"), SPEC), fold, params)
    path = tmp_path_factory.mktemp("fold") / "model.pt"
    save_checkpoint(path, result.model, params, SPEC, result.train_subjects, result.n_domains, fold.name)
    return raw, trial_predictions(result.predictions), path


def probabilities(trials: pd.DataFrame):
    import numpy as np

    from pipeline.evaluate import log_probability_columns

    log_p = trials[log_probability_columns(SPEC.n_classes)].to_numpy()
    p = np.exp(log_p - log_p.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_raw_features_of_a_held_out_subject_give_exactly_the_folds_predictions(trained_fold):
    """The served code path normalizes inside: subject 1's raw rows (labels dropped) give its fold's trial
    predictions bit for bit. The old contract (features straight into the network) gives others."""
    import numpy as np

    from pipeline.models import load_checkpoint
    from pipeline.sequences import Trials, predict_windows

    raw, expected, path = trained_fold
    network, ckpt = load_checkpoint(path)
    table = raw[raw.subject == 1].drop(columns="label").sample(frac=1, random_state=0)   # any row order
    got = predict.predict_table(network.eval(), ckpt, table, torch.device("cpu"))
    assert got[["subject", "session", "trial"]].to_numpy().tolist() == \
        expected[["subject", "session", "trial"]].to_numpy().tolist()
    assert got["predicted"].tolist() == [EMOTIONS[c] for c in expected["predicted"]]
    np.testing.assert_array_equal(got[[f"p_{e}" for e in EMOTIONS]].to_numpy(), probabilities(expected))

    trials = Trials.from_frame(raw[raw.subject == 1], SPEC)                   # un-normalized, as before
    old = predict_windows(network, trials, np.arange(len(trials.lengths)), "crop", 12)
    from pipeline.evaluate import trial_predictions

    assert np.abs(probabilities(trial_predictions(old)) - probabilities(expected)).max() > 0.05


def test_an_unlabelled_recording_of_10_trials_is_predicted(trained_fold, dataset, tmp_path):
    """A new recording: 10 of the 45 trials, no 'label' in either file."""
    import numpy as np

    from tests.unit.test_seedv import dicts

    _, _, path = trained_fold
    kept = [0, 3, 7, 14, 15, 22, 30, 31, 40, 44]
    for modality in ("eeg", "eye"):
        file = subject_file(dataset, modality, 2)
        data, _ = dicts(file)
        with open(file, "wb") as fh:
            import pickle

            np.savez(fh, data=pickle.dumps({str(t): data[t] for t in kept}))   # string keys, as other writers do
    table = predict.predict(subject_file(dataset, "eeg", 2), str(path))
    assert [(s - 1) * 15 + t for s, t in zip(table["session"], table["trial"])] == kept
    assert table["subject"].eq(2).all() and table[[f"p_{e}" for e in EMOTIONS]].sum(axis=1).round(5).eq(1).all()
    full = predict.predict(subject_file(dataset, "eeg", 1), str(path))      # subject 1 whole, for comparison
    assert len(full) == N_TRIALS


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns=["eye_32"]), r"lacks 1 column\(s\) \(eye_32\) — the model was trained on seed-v"),
    (lambda t: t.assign(eye_33=0.0), r"has feature columns seed-v does not \(eye_33\)"),
    (lambda t: t.assign(trial=t.trial.where(t.index != t.index[5], 15)), r"row 5: trial 15 is not an integer in 0..14"),
    (lambda t: t.assign(session=1.5), r"row 0: session 1.5 is not an integer in 1..3"),
    (lambda t: t.drop(index=t.index[3]), r"subject 1, session 1, trial 0: windows are not 0..\d+ \(the last is"),
    (lambda t: pd.concat([t, t.iloc[[2]]]), r"subject 1, session 1, trial 0: window 2 given twice"),
    (lambda t: t[t.window < 5], r"subject 1, session 1, trial 0: 5 window\(s\), fewer than the 12 of one model input"),
    (lambda t: t.assign(eeg_FP1_delta=t.eeg_FP1_delta.where(t.index != t.index[40], float("nan"))),
     r"subject 1, session 1, trial \d+: 1 NaN/Inf values — clean the recording"),
    (lambda t: t.assign(eye_00="x"), r"a feature column holds values that are not numbers"),
    (lambda t: t.iloc[:0], r"no rows"),
], ids=["missing column", "another dataset's column", "trial out of range", "fractional session",
        "a window missing", "a window twice", "too short for a crop", "NaN", "text", "empty"])
def test_a_recording_table_that_cannot_be_right_is_one_line(trained_fold, change, message):
    from pipeline.errors import UserError
    from pipeline.models import load_checkpoint

    raw, _, path = trained_fold
    network, ckpt = load_checkpoint(path)
    with pytest.raises(UserError, match=message) as refused:
        predict.predict_table(network, ckpt, change(raw[raw.subject == 1].reset_index(drop=True)), torch.device("cpu"))
    assert "\n" not in str(refused.value) and str(refused.value).startswith("recording table")


def test_the_request_body_carries_the_features_exactly(dataset, tmp_path):
    import json

    import numpy as np

    from pipeline.features import recording_to_frame
    from pipeline.datasets.seedv import read_subject

    out = tmp_path / "request.json"
    assert predict.main([str(subject_file(dataset, "eeg", 1)), "--request", str(out)]) == 0
    body = json.loads(out.read_text())["dataframe_split"]
    sent = pd.DataFrame(body["data"], columns=body["columns"])
    ingested = recording_to_frame(read_subject(dataset, 1), SPEC)
    assert "label" not in sent and len(sent) == len(ingested)
    np.testing.assert_array_equal(sent[list(SPEC.feature_columns)].to_numpy(np.float32),
                                  ingested[list(SPEC.feature_columns)].to_numpy())
