"""track: record the pipeline's results in MLflow. The only stage that talks to MLflow, so a change to how
runs are logged reruns this stage and never retrains anything.

    python -m stages.track MODELS PREDICTIONS FOLD_METRICS CURVES METRICS_DIR FINAL_MODEL PLOTS_DIR RECORD

One parent run per execution that changed anything: named after the DVC experiment (else short commit
+ changed params), with every param, the exact params.yaml, git/data/version tags, the summary and
baseline metrics, a description, the metrics files, the figures, every fold's predictions (so that
``pipeline.rebuild`` can compare them) and fold metrics (``folds/``, for ``pipeline.ablation
mlflow:<id>``). Under it one run per fold (its params, per-epoch curves with the epoch as the step and
the chosen epoch marked, metrics, the device it ran on as ``device.*`` tags, and its model as a
*reference*: tags ``model.path`` and ``model.md5`` name the file in DVC's cache, which alone holds fold
weights) and one ``final`` run with the model trained on every subject, logged with its weights (the model
people load and serve). So a study's weights are stored once, plus the final model's copy: at the
original's size (28 M parameters, 112 MB a model) 1.9 GB instead of 3.8 GB. The parent's ``device.names``
lists every device its trainings used. A run's start and duration are those of what it records: a fold's
or the final model's training when data/timings/ knows it (pipeline/timing.py), else the logging; the
parent's, the ``dvc repro``/``dvc exp run`` that ran this stage, to the end of logging. Metrics are logged to 5
significant digits, for reading; the exact numbers are the parent's metrics/ and folds/ artifacts.
Nothing is registered: ``python -m pipeline.promote <parent run id> --reason …`` is the
one way ``models:/<mlflow.experiment>@candidate`` moves.

RECORD (``data/tracked.json``) lists what was logged. DVC caches it rather than git, so a fresh clone's
``dvc repro`` logs into its own MLflow store. To log the same results into another store (e.g. a team
server): ``MLFLOW_TRACKING_URI=… dvc repro --force --single-item track``.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

from pipeline.files import write_json
from pipeline.models import check_trained_with
from pipeline.promote import ALIAS
from pipeline.timing import md5, timing_of
from pipeline.tracking import UI_VIEW, Tracker, flat_metrics, headline, parent_name, pipeline_metrics, provenance
from stages.common import folds as make_folds
from stages.common import dvc_process, params, paths, spec, user_errors


def device_tags(facts: dict) -> dict[str, str]:
    """``device.type``, ``device.name``, ``device.precision``, ... of one training."""
    return {f"device.{key}": str(value) for key, value in facts.items()}


# On a fold's page: inner/* is the training that chose the candidate and the epoch (on the fold's
# inner-training part, validated on its inner-validation part), one point per epoch; trial/* and window/*
# are the refit model on the fold's test part.
FOLD_PAGE = ("Curves `inner/*`: the training on this fold's inner-training part that chose the candidate and "
             "the epoch (validated on its inner-validation part); `inner/chosen_epoch` is 1 at the chosen epoch "
             "and 0 elsewhere, on the curves' epoch axis (the number: `selection/chosen_epoch`). `trial/*` and "
             "`window/*`: the refit model (trained on the whole training part for that many epochs) on the "
             "fold's test part. ")
TIMED = {True: "The run's start and duration are the fold's training (`time/train_seconds`).",
         False: "The run's start and duration are its logging: when the fold trained is not known here "
                "(data/timings/ has no note for these weights: trained in another checkout)."}


def curve_steps(path, chosen_epoch: int) -> list[tuple[int, dict[str, float]]]:
    """A fold's curves CSV as (epoch, ``inner/<metric>``) steps, NaN (no inner validation) left out, with
    ``inner/chosen_epoch`` marking the chosen one (MLflow draws each metric over the same epoch axis)."""
    curves = pd.read_csv(path).drop(columns=["fold"])
    return [(epoch := int(row.pop("epoch")), {**{f"inner/{k}": v for k, v in row.items() if v == v},
                                             "inner/chosen_epoch": int(epoch == chosen_epoch)})
            for row in curves.to_dict("records")]


def span(timing: dict | None) -> tuple[float, float] | None:
    """A training's (start, end) in Unix seconds, for the run's start and duration."""
    return None if timing is None else (timing["started"], timing["started"] + timing["seconds"])


def took(timing: dict | None) -> dict[str, float]:
    """A training's ``time/train_seconds`` metric; none when its time is not known."""
    return {} if timing is None else {"time/train_seconds": timing["seconds"]}


if __name__ == "__main__":
    args = paths(__doc__, "models", "predictions", "fold_metrics", "curves", "metrics", "final_model", "plots",
                 "record")
    p = params()
    every_fold = make_folds(p)
    with user_errors():
        check_trained_with(p, [args.models / f.name / "model.pt" for f in every_fold]
                           + [args.final_model / "model.pt"])
        tracker = Tracker(p.mlflow.experiment)
    def terminated(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)      # a second SIGTERM cannot cut the clean-up short
        sys.exit(143)                                      # the open runs end as KILLED

    signal.signal(signal.SIGTERM, terminated)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # plain log lines
    start, flat, tags = time.monotonic(), p.flat(), provenance()
    folds = {f.name: json.loads((args.fold_metrics / f"{f.name}.json").read_text()) for f in every_fold}
    name, runs = parent_name(flat, tags["git.commit"]), []
    final = json.loads((args.final_model / "final.json").read_text())
    devices = sorted({fold["device"]["name"] for fold in folds.values()} | {final["device"]["name"]})
    digests = {s: md5(args.models / s / "model.pt") for s in folds}   # the weights' names in DVC's cache
    timings = {s: timing_of(s, digest) for s, digest in digests.items()}
    timings["final"] = timing_of("final", md5(args.final_model / "model.pt"))
    # The parent spans the execution: from the start of the dvc command running this stage to the end of
    # this logging (outside dvc: the logging alone).
    try:
        execution = None if (dvc := dvc_process()) is None else (psutil.Process(dvc).create_time(), None)
    except psutil.Error:          # gone or not ours to read: the stage's own check stops it anyway
        execution = None
    with user_errors(), tracker.execution(), tracker.run(name, "parent", flat,
                                                         {**tags, "device.names": ", ".join(devices)},
                                                         span=execution) as parent:
        tracker.log_artifacts(parent, ["params.yaml"])           # the exact file, for pipeline.rebuild
        for k, (s, fold) in enumerate(folds.items(), 1):
            model = args.models / s / "model.pt"
            reference = {"model.path": str(model), "model.md5": digests[s]}   # in DVC's cache at git.commit
            with tracker.run(f"fold {s}", "fold", {**flat, "fold": s}, {**tags, **device_tags(fold["device"]),
                                                                         **reference}, parent=parent,
                             span=span(timings[s])) as run:
                tracker.log_steps(run, curve_steps(args.curves / f"{s}.csv", fold["selection"]["chosen_epoch"]))
                tracker.describe(run, FOLD_PAGE + TIMED[timings[s] is not None])
                scores = flat_metrics({level: fold[level] for level in ("trial", "window")})
                chosen = {f"selection/{k}": v for k, v in fold["selection"].items() if type(v) in (int, float)}
                tracker.log_metrics(run, {**scores, **chosen, **took(timings[s])})
            runs.append(f"fold {s}")
            print(f"tracked fold {s} ({k}/{len(folds)}) | elapsed {time.monotonic() - start:.0f} s", flush=True)

        with tracker.run("final", "final", {**flat, "final.epochs": final["epochs"]},
                         {**tags, **device_tags(final["device"])}, parent=parent, span=span(timings["final"])) as run:
            tracker.log_metrics(run, {**{f"final/{k}": v for k, v in final.items() if type(v) in (int, float)},
                                      **took(timings["final"])})
            tracker.log_model(run, args.final_model / "model.pt", name="final")
        runs.append("final")

        summary = json.loads((args.metrics / "metrics.json").read_text())
        tracker.log_metrics(parent, pipeline_metrics(args.metrics))
        tracker.describe(parent, headline(summary, p.cv.split, spec(p).name,
                                          synthetic=p.data.raw_dir == "data/raw/synthetic"))
        tracker.log_artifacts(parent, [args.metrics / f"{f}.json" for f in ("metrics", "per_subject", "baselines",
                                                                             "comparison", "audits")], "metrics")
        tracker.log_artifacts(parent, sorted(args.plots.glob("*.png")), "plots")
        for root, folder, pattern in ((args.predictions, "predictions", "*.parquet"),   # for pipeline.rebuild
                                      (args.fold_metrics, "folds", "*.json")):          # for pipeline.ablation
            for path in sorted(root.rglob(pattern)):                                    # in the folds' folders
                tracker.log_artifacts(parent, [path], str(Path(folder, path.parent.relative_to(root))))
    # What was logged, without run ids or times: the same results give the same file.
    write_json(args.record, {"experiment": p.mlflow.experiment, "runs": runs})
    print(f"logged {len(runs)} runs under parent '{name}' to {tracker.uri}; in `mlflow ui`: "
          f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{parent}{UI_VIEW}\n"
          f"nothing was registered; to serve this execution's final model as models:/{p.mlflow.experiment}@{ALIAS}: "
          f"python -m pipeline.promote {parent} --reason '...'")
