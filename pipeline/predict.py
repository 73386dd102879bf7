"""Predict the emotion of every trial of new recordings with a trained model.

    python -m pipeline.predict DATA --model MODEL [--out predictions.csv]
    python -m pipeline.predict DATA --request request.json     # the same recordings as a request body

DATA is a folder of the dataset the model was trained on (SEED-V: ``EEG_DE_features/`` and
``Eye_movement_features/``; SEED-IV: ``eeg_feature_smooth/`` and ``eye_feature_smooth/``; every subject
found there) or one subject's file inside such a folder (``.../EEG_DE_features/3_123.npz``). A new
recording may hold any of the dataset's trials and needs no labels (labels in the files are never read).
The files go through the same safe reader as ``ingest``, with the ``data.nan_policy`` the model was
trained with, and the same label-free normalization as training (each recording by its own statistics),
in the code the served model runs (:func:`predict_table`). MODEL is a ``model.pt`` checkpoint (e.g.
``data/final_model/model.pt``) or an MLflow model URI (``models:/seedv-cross-modal@candidate``,
``runs:/<id>/final``). Writes one row per trial: subject, session, trial, predicted emotion, and the
probability of each emotion (CSV, or Parquet when OUT ends in ``.parquet``). ``--request`` writes the
recordings' table (raw units, the ingest schema) as the JSON body the served model takes instead. A bad
file stops with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import datasets
from .datasets import MAX_SUBJECT, Spec, impute_trial
from .errors import UserError
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

    from .mlflow_store import access_refused
    from .tracking import CHECKPOINT_TAG, sha256

    fix = "check the URI and MLFLOW_TRACKING_URI, or give a model.pt file"
    try:
        run = mlflow.MlflowClient().get_run(source_run(model))
        if run.data.tags.get("pipeline.role") not in ("final", "fold") or CHECKPOINT_TAG not in run.data.tags:
            raise UserError(f"--model {model}: not a model logged by this pipeline's track stage (its run has no "
                            f"{CHECKPOINT_TAG} tag), so it is not loaded — {fix}")
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except MlflowException as exc:
        raise access_refused(exc) or UserError(f"--model {model}: no such MLflow model ({exc.error_code}) — {fix}"
                                               ) from None
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


# --- the recording table: what a user sends (pipeline.predict reads it from files, serving from a request) ---

KEY_COLUMNS = ("subject", "session", "trial", "window")
MAX_WINDOW = np.iinfo(np.int16).max   # the feature table stores window numbers as int16


def table_columns(spec: Spec) -> dict[str, str]:
    """The recording table's columns and MLflow types: the ingest schema in raw units (``label`` optional,
    never used), numbered as the feature table numbers them (session 1.., trial 0.. within it, window 0..)."""
    return {**{c: "long" for c in KEY_COLUMNS}, "label": "long", **{c: "double" for c in spec.feature_columns}}


def example_table(spec: Spec, windows: int) -> pd.DataFrame:
    """A valid recording table: one trial (subject 1, session 1, trial 0) of ``windows`` all-zero windows."""
    keys = pd.DataFrame({"subject": 1, "session": 1, "trial": 0, "window": np.arange(windows)})
    return pd.concat([keys, pd.DataFrame(0.0, index=keys.index, columns=list(spec.feature_columns))], axis=1)


def shortest_trial(settings: dict, spec: Spec) -> int:
    """Fewest windows a trial may have: one crop (``cv.crop_windows``), or the dataset's shortest trial when
    crops are longer than it (training tiles such trials cyclically); 1 under whole-trial input."""
    if settings["cv"]["input"] == "trial":
        return 1
    return min(settings["cv"]["crop_windows"], min(spec.trial_windows))


def check_recording(table: pd.DataFrame, spec: Spec, nan_policy: str, shortest: int) -> pd.DataFrame:
    """The feature-table rows of a recording table as a user sends it, checked: every column of ``spec``,
    integral keys in range, each trial's windows 0..n-1 once and at least ``shortest`` of them, float32
    features with NaN/Inf refused (``nan_policy: error``) or imputed per trial; labels become -1 (unknown).
    Anything else is one UserError line naming the first subject/session/trial concerned."""
    where = "recording table"
    missing = [c for c in (*KEY_COLUMNS, *spec.feature_columns) if c not in table.columns]
    foreign = [c for c in table.columns if str(c).startswith(("eeg_", "eye_")) and c not in spec.feature_columns]
    if missing or foreign:
        what = f"lacks {len(missing)} column(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})" \
            if missing else f"has feature columns {spec.name} does not ({', '.join(map(str, foreign[:3]))})"
        raise UserError(f"{where}: {what} — the model was trained on {spec.name}: send subject, session, trial, "
                        f"window and its {spec.widths['eeg']} EEG and {spec.widths['eye']} eye columns "
                        f"({spec.feature_columns[0]} .. {spec.feature_columns[-1]})")
    if table.empty:
        raise UserError(f"{where}: no rows — send at least one trial's windows")
    limits = {"subject": (1, MAX_SUBJECT), "session": (1, spec.sessions), "trial": (0, spec.trials_per_session - 1),
              "window": (0, MAX_WINDOW)}
    keys = {}
    for column, (low, high) in limits.items():
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        bad = ~(np.isfinite(values) & (values == np.round(values)) & (values >= low) & (values <= high))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserError(f"{where}: row {row}: {column} {' '.join(str(table[column].iloc[row]).split())[:40]} is "
                            f"not an integer in {low}..{high} — number {column}s as the ingest schema does")
        keys[column] = values.astype(np.int64)
    frame = pd.DataFrame(keys)
    try:
        features = table[list(spec.feature_columns)].to_numpy(np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: a feature column holds values that are not numbers — send numbers") from None
    frame = pd.concat([frame, pd.DataFrame(features, columns=list(spec.feature_columns))], axis=1)
    frame = frame.sort_values(list(KEY_COLUMNS), kind="stable", ignore_index=True)

    def trial_of(row: int) -> str:
        subject, session, trial = frame.loc[row, ["subject", "session", "trial"]]
        return f"{where}: subject {subject}, session {session}, trial {trial}"

    if (repeated := frame.duplicated(list(KEY_COLUMNS))).any():
        row = int(np.flatnonzero(repeated)[0])
        raise UserError(f"{trial_of(row)}: window {frame.loc[row, 'window']} given twice — send each window once")
    trials = frame.groupby(["subject", "session", "trial"], sort=False)
    counts, last = trials.size().to_numpy(), trials["window"].max().to_numpy()
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    if (gap := np.flatnonzero(last != counts - 1)).size:
        k = gap[0]
        raise UserError(f"{trial_of(starts[k])}: windows are not 0..{counts[k] - 1} (the last is {last[k]}) — send "
                        "every window of a trial, numbered from 0")
    if (short := np.flatnonzero(counts < shortest)).size:
        k = short[0]
        raise UserError(f"{trial_of(starts[k])}: {counts[k]} window(s), fewer than the {shortest} of one model "
                        "input — send the whole trial")
    values = frame[list(spec.feature_columns)].to_numpy(np.float64)
    if (too_large := np.abs(np.where(np.isfinite(values), values, 0.0)) > np.finfo(np.float32).max).any():
        raise UserError(f"{trial_of(int(np.flatnonzero(too_large.any(1))[0]))}: values beyond the float32 range "
                        "(|x| > 3.4e38) — send features in their own units (differential entropy, eye features)")
    values = values.astype(np.float32)
    if not (finite := np.isfinite(values)).all():
        if nan_policy != "impute":
            raise UserError(f"{trial_of(int(np.flatnonzero(~finite.all(1))[0]))}: {int((~finite).sum())} NaN/Inf "
                            "values — clean the recording (this model was trained with data.nan_policy: error)")
        for start, n in zip(starts, counts):
            values[start:start + n] = impute_trial(values[start:start + n])
    out = frame[list(KEY_COLUMNS)].astype({"subject": np.int8, "session": np.int8, "trial": np.int8,
                                           "window": np.int16})
    out["label"] = np.int8(-1)
    return pd.concat([out, pd.DataFrame(values, columns=list(spec.feature_columns))], axis=1)


def predict_table(network, checkpoint: dict, table: pd.DataFrame, device) -> pd.DataFrame:
    """One row per trial of a recording table (see :func:`check_recording`): subject, session, trial, the
    predicted emotion and each emotion's probability. Normalized inside, exactly as training did
    (``normalize.scope`` of the checkpoint: each subject, or each session, by its own statistics over the
    windows sent), with the checkpoint's ``data.nan_policy``. The one code path of ``pipeline.predict`` and
    the served model."""
    from .sequences import Trials, predict_windows

    spec, settings = checkpoint["spec"], checkpoint["params"]
    frame = check_recording(table, spec, settings["data"]["nan_policy"], shortest_trial(settings, spec))
    trials = Trials.from_frame(normalize(frame, settings["normalize"]["scope"]), spec)
    windows = predict_windows(network.to(device), trials, np.arange(len(trials.lengths)), settings["cv"]["input"],
                              settings["cv"]["crop_windows"], device)
    trials = trial_predictions(windows)
    log_p = trials[log_probability_columns(spec.n_classes)].to_numpy()
    probs = np.exp(log_p - log_p.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = trials[["subject", "session", "trial"]].astype(np.int64)
    out["predicted"] = [spec.classes[c] for c in trials["predicted"]]
    for c, emotion in enumerate(spec.classes):
        out[f"p_{emotion}"] = probs[:, c]
    return out


def read_recordings(data: Path, spec: Spec, nan_policy: str) -> pd.DataFrame:
    """The recording table of the files at ``data`` (a dataset folder or one subject's file): every trial
    found (any subset of the dataset's), labels not needed."""
    dataset = datasets.load(spec.name)
    root, subjects = dataset.subjects_in(data)
    recordings = dataset.read_dataset(root, subjects, nan_policy, complete=False)
    return pd.concat([recording_to_frame(r, spec) for r in recordings], ignore_index=True)


def predict(data: Path, model: str) -> pd.DataFrame:
    """One row per trial of the recordings at ``data``: predicted emotion and each class's probability."""
    from .models import load_checkpoint, resolve_device

    network, checkpoint = load_checkpoint(checkpoint_of(model))
    spec = checkpoint["spec"]
    if datasets.spec(spec.name) != spec:
        raise UserError(f"--model {model}: trained on {spec.name} data whose facts differ from this code's "
                        f"{spec.name} (classes, sessions, widths, ...) — retrain it with this version")
    table = read_recordings(data, spec, checkpoint["params"]["data"]["nan_policy"])   # as it was trained
    return predict_table(network, checkpoint, table, resolve_device("auto"))   # a GPU when there is one


def request_json(table: pd.DataFrame) -> str:
    """A recording table as the body of a request to the served model (MLflow's ``dataframe_split``), with
    every float exactly as stored (pandas' own JSON writer rounds to 10 digits)."""
    import json

    columns = [c for c in table.columns if c != "label"]
    return json.dumps({"dataframe_split": {"columns": columns, "data": table[columns].to_numpy(object).tolist()}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("data", type=Path, help="a dataset folder, or one subject's file in it")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a model.pt checkpoint or an MLflow model URI")
    what.add_argument("--request", type=Path, help="write the recordings as a request body (JSON) for the served "
                                                   "model instead of predicting")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--dataset", choices=datasets.DATASETS, default="seed-v", help="with --request: the layout "
                        "of DATA (default seed-v)")
    args = parser.parse_args(argv)
    out = args.request or args.out
    if out.is_dir() or not out.parent.is_dir():
        parser.error(f"{out}: " + ("a folder; name a file in it" if out.is_dir() else "its folder does not exist"))
    try:
        if args.request:
            table = read_recordings(args.data, datasets.spec(args.dataset), "error")
        else:
            table = predict(args.data, args.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with atomic_path(out) as tmp:
        if args.request:
            tmp.write_text(request_json(table))
        elif out.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
    trials = table.groupby(["subject", "session", "trial"]).ngroups
    print(f"{trials} trials of {table['subject'].nunique()} subject(s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
