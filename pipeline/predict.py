"""Predict the emotion of every trial of new SEED-V recordings with a trained model.

    python -m pipeline.predict DATA --model MODEL [--out predictions.csv]

DATA is a SEED-V folder (``EEG_DE_features/`` and ``Eye_movement_features/``; every subject found there)
or one subject's file inside such a folder (``.../EEG_DE_features/3_123.npz``). The files go through the
same safe reader as ``ingest`` and the same label-free normalization as training (each recording by its
own statistics). MODEL is a ``model.pt`` checkpoint (e.g. ``data/final_model/model.pt``) or an MLflow
model URI (``models:/seedv-cross-modal@candidate``, ``runs:/<id>/final``). Writes one row per trial:
subject, session, trial, predicted emotion, and the probability of each emotion (CSV, or Parquet when
OUT ends in ``.parquet``). A bad file stops with one line and exit status 1. Labels in the files are
read (the format has them) but never used.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .evaluate import LOG_PROBABILITY_COLUMNS, trial_predictions
from .features import FEATURE_COLUMNS, PROBABILITY_COLUMNS, normalize, recording_to_frame
from .files import atomic_path
from .seedv import EMOTIONS, MODALITIES, read_subject


def subjects_in(data: Path) -> tuple[Path, list[int]]:
    """(SEED-V root, subjects) for a folder or one subject's file in it."""
    if data.is_file():
        match = re.fullmatch(r"(\d+)_123\.npz", data.name)
        if not match or data.parent.name not in {folder for folder, _ in MODALITIES.values()}:
            raise UserError(f"{data}: not a SEED-V subject file (<subject>_123.npz in EEG_DE_features/ or "
                            "Eye_movement_features/)")
        return data.parent.parent, [int(match.group(1))]
    eeg = data / MODALITIES["eeg"][0]
    subjects = sorted(int(m.group(1)) for f in eeg.glob("*_123.npz") if (m := re.fullmatch(r"(\d+)_123\.npz", f.name)))
    if not subjects:
        raise UserError(f"{data}: no SEED-V subject files in {eeg} — point at a SEED-V folder or file")
    return data, subjects


def window_probabilities(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per-window probabilities of ``frame`` (normalized features) from a checkpoint or an MLflow model."""
    import torch

    from .sequences import Trials, predict_windows, test_sequences

    trials = Trials.from_frame(frame)
    index = np.arange(len(trials.lengths))
    if Path(model).is_file():
        from .model import load_checkpoint

        net, ckpt = load_checkpoint(model)
        cv = ckpt["params"]["cv"]
        return predict_windows(net, trials, index, cv["protocol"], cv["crop_windows"], torch.device("cpu"))

    import mlflow

    from .model import SERVING_EEG, SERVING_EYE, SERVING_MASK, serving_example

    pyfunc = mlflow.pyfunc.load_model(model)
    crop = pyfunc.metadata.signature.inputs.inputs[0].shape[1]
    positions, owners = test_sequences(trials.lengths, "crop", crop)
    packed = serving_example(len(owners), crop)
    packed[..., SERVING_EEG] = trials.eeg[owners[:, None], positions]
    packed[..., SERVING_EYE] = trials.eye[owners[:, None], positions]
    packed[..., SERVING_MASK] = 1.0
    probs = np.concatenate([np.asarray(pyfunc.predict(packed[i:i + 4096]), dtype=np.float64)
                            for i in range(0, len(packed), 4096)])
    log_p = np.log(np.clip(probs, 1e-12, None))
    rows = []
    for trial in index:   # each window: the mean log-probability of the crops that contain it
        n = trials.lengths[trial]
        totals, counts = np.zeros((n, len(EMOTIONS))), np.zeros(n)
        for k in np.flatnonzero(owners == trial):
            np.add.at(totals, positions[k], log_p[k])
            np.add.at(counts, positions[k], 1)
        mean = totals / counts[:, None]
        probs = np.exp(mean - mean.max(1, keepdims=True))
        rows.append(probs / probs.sum(1, keepdims=True))
    out = frame.sort_values(["subject", "session", "trial", "window"], kind="stable")[
        ["subject", "session", "trial", "window", "label"]].reset_index(drop=True)
    out[list(PROBABILITY_COLUMNS)] = np.concatenate(rows).astype(np.float32)
    return out


def predict(data: Path, model: str) -> pd.DataFrame:
    """One row per trial of the recordings at ``data``: predicted emotion and the five probabilities."""
    root, subjects = subjects_in(data)
    scope = "subject"   # the default; a checkpoint says which scope its model was trained with
    if Path(model).is_file():
        from .model import load_checkpoint

        scope = load_checkpoint(model)[1]["params"]["normalize"]["scope"]
    frame = pd.concat([recording_to_frame(read_subject(root, s)) for s in subjects], ignore_index=True)
    frame = normalize(frame, scope)
    trials = trial_predictions(window_probabilities(frame[["subject", "session", "trial", "window", "label",
                                                            *FEATURE_COLUMNS]], model))
    log_p = trials[LOG_PROBABILITY_COLUMNS].to_numpy()
    probs = np.exp(log_p - log_p.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = trials[["subject", "session", "trial"]].copy()
    out["predicted"] = [EMOTIONS[c] for c in trials["predicted"]]
    for c, emotion in enumerate(EMOTIONS):
        out[f"p_{emotion}"] = probs[:, c]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("data", type=Path, help="a SEED-V folder, or one subject's npz in it")
    parser.add_argument("--model", required=True, help="a model.pt checkpoint or an MLflow model URI")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    args = parser.parse_args(argv)
    try:
        table = predict(args.data, args.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False) if args.out.suffix == ".parquet" else table.to_csv(tmp, index=False)
    print(f"{len(table)} trials of {table['subject'].nunique()} subject(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
