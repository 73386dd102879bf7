"""train: every LOSO fold of cv.subjects, one after another in this process.

    python -m stages.train FEATURES MODELS PREDICTIONS FOLD_METRICS CURVES      (as dvc.yaml runs it)
    python -m stages.train FEATURES MODELS PREDICTIONS FOLD_METRICS CURVES --fold 3   (debug one fold)

Writes, per held-out subject s, MODELS/<s>/model.pt, PREDICTIONS/<s>.parquet, FOLD_METRICS/<s>.json and
CURVES/<s>.csv. The four folders are built under temporary names and renamed into place only when every
fold has succeeded, so a failed run leaves none of them behind (``--fold`` replaces just that fold's
files). Each fold is a child run of the execution's MLflow parent.

Subject ids never appear in dvc.yaml: they come from the validated params here, so a hostile
``cv.subjects`` value cannot reach a shell command or an output path that DVC deletes.
"""

import argparse
import signal
import sys
from pathlib import Path

from pipeline.evaluate import subject_metrics
from pipeline.features import read_table
from pipeline.files import atomic_path, atomic_paths, write_json
from pipeline.model import PackedInput, save_checkpoint, serving_example
from pipeline.sequences import Trials
from pipeline.tracking import Tracker
from pipeline.train import resolve_device, train_fold
from stages.common import params, user_errors


def write_fold(held_out, result, p, metrics, models: Path, predictions: Path, folds: Path, curves: Path):
    with atomic_path(models / str(held_out) / "model.pt") as tmp:
        save_checkpoint(tmp, result.model, p, result.train_subjects, held_out)
    with atomic_path(predictions / f"{held_out}.parquet") as tmp:
        result.predictions.to_parquet(tmp, index=False)
    with atomic_path(curves / f"{held_out}.csv") as tmp:
        result.curves.assign(fold=held_out).to_csv(tmp, index=False)
    write_json(folds / f"{held_out}.json", metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("features", "models", "predictions", "fold_metrics", "curves"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--fold", type=int, help="train only this held-out subject (outside DVC)")
    args = parser.parse_args()
    p = params()
    with user_errors():
        device = resolve_device(p.train.device)
        if args.fold is not None and args.fold not in p.data.subjects:
            raise SystemExit(f"error: --fold {args.fold} is not one of data.subjects {p.data.subjects}")
        tracker = Tracker(p.mlflow.experiment)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # lets the MLflow runs end as KILLED
    trials = Trials.from_frame(read_table(args.features))
    parent = tracker.parent(p.flat())
    tracker.set_tags(parent, {"device": str(device)})

    def fold(held_out, outputs):
        with tracker.stage_run(parent, "fold", f"fold {held_out}", {**p.flat(), "fold": held_out}) as run_id:
            result = train_fold(trials, held_out, p,
                                on_epoch=lambda row: tracker.log_metrics(run_id, row, step=int(row["epoch"])))
            metrics = subject_metrics(result.predictions)
            tracker.log_metrics(run_id, {f"{level}.{k}": v for level, m in metrics.items() for k, v in m.items()})
            example = serving_example(2, p.cv.crop_windows)   # batch 2: not specialized to one
            tracker.log_model(run_id, PackedInput(result.model.cpu().eval()), example)
        write_fold(held_out, result, p, metrics, *outputs)
        print(f"fold {held_out}: trial accuracy {metrics['trial']['accuracy']:.3f}, "
              f"window accuracy {metrics['window']['accuracy']:.3f}", flush=True)

    outputs = (args.models, args.predictions, args.fold_metrics, args.curves)
    if args.fold is not None:
        fold(args.fold, outputs)
        return
    with atomic_paths(*outputs) as temporaries:
        for held_out in p.cv.subjects:
            fold(held_out, temporaries)


if __name__ == "__main__":
    main()
