"""evaluate: all folds' predictions -> metrics/metrics.json, metrics/per_subject.json, plots/*.csv;
the summary goes to the execution's MLflow parent run too."""

import pandas as pd

from pipeline.evaluate import evaluate, flat_metrics, trial_predictions
from pipeline.seedv import EMOTIONS
from pipeline.tracking import Tracker
from stages.common import atomic_path, params, write_json

if __name__ == "__main__":
    p = params()
    predictions = pd.concat([pd.read_parquet(f"data/predictions/{s}.parquet") for s in p.cv.subjects])
    summary, per_subject = evaluate(predictions)
    write_json("metrics/metrics.json", summary)
    write_json("metrics/per_subject.json", per_subject)

    trials = trial_predictions(predictions)
    names = dict(enumerate(EMOTIONS))
    with atomic_path("plots/confusion.csv") as tmp:
        pd.DataFrame({"actual": trials["label"].map(names), "predicted": trials["predicted"].map(names)}
                     ).to_csv(tmp, index=False)
    with atomic_path("plots/per_subject.csv") as tmp:
        pd.DataFrame([{"subject": s, "trial_accuracy": m["trial"]["accuracy"],
                       "window_accuracy": m["window"]["accuracy"]} for s, m in per_subject.items()]
                     ).to_csv(tmp, index=False)

    flat = flat_metrics(summary)
    tracker = Tracker(p.mlflow.experiment)
    parent = tracker.parent(p.flat())
    with tracker.stage_run(parent, "evaluate", "evaluate") as run_id:
        tracker.log_metrics(run_id, flat)
        tracker.log_artifacts(run_id, ["metrics/metrics.json", "metrics/per_subject.json"])
    tracker.log_metrics(parent, flat)
    if p.mlflow.register_best:
        version = tracker.register_best_fold(parent, p.mlflow.experiment)
        print(f"registered {version.name} version {version.version}" if version else "no fold run to register")
    print(f"trial accuracy {summary['trial']['accuracy_mean']:.4f} ± {summary['trial']['accuracy_std']:.4f} "
          f"over {summary['n_folds']} held-out subjects")
