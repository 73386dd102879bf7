"""Predict the emotion of every trial of new recordings with a trained model.

    python -m pipeline.predict DATA --model MODEL [--out predictions.csv]

DATA is a folder of the dataset the model was trained on (SEED-V: ``EEG_DE_features/`` and
``Eye_movement_features/``; SEED-IV: ``eeg_feature_smooth/`` and ``eye_feature_smooth/``; every subject
found there) or one subject's file inside such a folder (``.../EEG_DE_features/3_123.npz``). The files go through the
same safe reader as ``ingest``, with the ``data.nan_policy`` the model was trained with, and the same
label-free normalization as training (each recording by its own statistics). MODEL is a ``model.pt`` checkpoint (e.g. ``data/final_model/model.pt``) or an MLflow
model URI (``models:/seedv-cross-modal@candidate``, ``runs:/<id>/final``). Writes one row per trial:
subject, session, trial, predicted emotion, and the probability of each emotion (CSV, or Parquet when
OUT ends in ``.parquet``). A bad file stops with one line and exit status 1. Labels in the files are
read (the format has them) but never used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from . import datasets
from .evaluate import log_probability_columns, trial_predictions
from .features import normalize, recording_to_frame
from .files import atomic_path


def checkpoint_of(model: str) -> Path:
    """The ``model.pt`` behind MODEL: the file itself, or the checkpoint of an MLflow model logged by the
    ``track`` stage, *verified before anything of it is loaded*: the model's source run must be a pipeline
    run (``pipeline.role`` final or fold) that recorded the checkpoint's SHA-256 (``model.sha256``), and the
    downloaded checkpoint must have that hash. Nothing of the MLflow model is imported or unpickled (a pyfunc
    model is code, run on load): only its files are downloaded, and then only weights are read."""
    if Path(model).is_file():
        return Path(model)
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from .tracking import CHECKPOINT_TAG, sha256

    fix = "check the URI and MLFLOW_TRACKING_URI, or give a model.pt file"
    try:
        run = mlflow.MlflowClient().get_run(source_run(model))
        if run.data.tags.get("pipeline.role") not in ("final", "fold") or CHECKPOINT_TAG not in run.data.tags:
            raise UserError(f"--model {model}: not a model logged by this pipeline's track stage (its run has no "
                            f"{CHECKPOINT_TAG} tag), so it is not loaded — {fix}")
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except MlflowException as exc:
        raise UserError(f"--model {model}: no such MLflow model ({exc.error_code}) — {fix}") from None
    try:
        relative = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"][
            "checkpoint"]["path"]
        checkpoint = (folder / relative).resolve()
        inside = checkpoint.is_relative_to(folder.resolve()) and checkpoint.is_file()
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        inside = False
    if not inside:
        raise UserError(f"--model {model}: an MLflow model without this pipeline's checkpoint artifact — {fix}")
    if sha256(checkpoint) != run.data.tags[CHECKPOINT_TAG]:
        raise UserError(f"--model {model}: its model.pt is not the checkpoint its run {run.info.run_id} logged "
                        f"(SHA-256 differs from {CHECKPOINT_TAG}): replaced after logging, so it is not loaded")
    return checkpoint


def source_run(model: str) -> str:
    """The run that logged the MLflow model ``model`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``models:/<model id>``, ``runs:/<run id>/<path>``), from the tracking store alone."""
    import mlflow

    client = mlflow.MlflowClient()
    scheme, _, rest = model.partition(":/")
    if scheme == "runs" and rest.strip("/"):
        return rest.strip("/").split("/")[0]
    if scheme == "models" and "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    if scheme == "models" and rest.count("/") == 1:
        name, version = rest.split("/")
        return client.get_model_version(name, version).run_id
    if scheme == "models" and rest.startswith("m-"):
        return client.get_logged_model(rest).source_run_id
    raise UserError(f"--model {model}: neither a model.pt file nor an MLflow model URI (models:/<name>@<alias>, "
                    "models:/<name>/<version>, runs:/<run id>/final)")


def predict(data: Path, model: str) -> pd.DataFrame:
    """One row per trial of the recordings at ``data``: predicted emotion and each class's probability."""
    import torch

    from .models import load_checkpoint, resolve_device
    from .sequences import Trials, predict_windows

    checkpoint = checkpoint_of(model)
    net, ckpt = load_checkpoint(checkpoint)
    spec, settings = ckpt["spec"], ckpt["params"]
    dataset = datasets.load(spec.name)
    if dataset.SPEC != spec:
        raise UserError(f"--model {model}: trained on {spec.name} data whose facts differ from this code's "
                        f"{spec.name} (classes, sessions, widths, ...) — retrain it with this version")
    root, subjects = dataset.subjects_in(data)
    recordings = dataset.read_dataset(root, subjects, settings["data"]["nan_policy"])   # as it was trained
    frame = pd.concat([recording_to_frame(r, spec) for r in recordings], ignore_index=True)
    trials = Trials.from_frame(normalize(frame, settings["normalize"]["scope"]), spec)   # as the model was trained
    device = resolve_device("auto")   # a GPU when this machine has one, as in training
    windows = predict_windows(net.to(device), trials, np.arange(len(trials.lengths)), settings["cv"]["input"],
                              settings["cv"]["crop_windows"], device)
    trials = trial_predictions(windows)
    log_p = trials[log_probability_columns(spec.n_classes)].to_numpy()
    probs = np.exp(log_p - log_p.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = trials[["subject", "session", "trial"]].copy()
    out["predicted"] = [spec.classes[c] for c in trials["predicted"]]
    for c, emotion in enumerate(spec.classes):
        out[f"p_{emotion}"] = probs[:, c]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("data", type=Path, help="a dataset folder, or one subject's file in it")
    parser.add_argument("--model", required=True, help="a model.pt checkpoint or an MLflow model URI")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    args = parser.parse_args(argv)
    if args.out.is_dir() or not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: " + ("a folder; name a file in it" if args.out.is_dir()
                                                else "its folder does not exist"))
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
