"""evaluate: all folds' predictions -> summary and per-subject metrics, confusion and per-subject CSVs;
the summary goes to the execution's MLflow parent run too.

    python -m stages.evaluate PREDICTIONS METRICS PER_SUBJECT CONFUSION_CSV PER_SUBJECT_CSV
"""


import pandas as pd

from pipeline.evaluate import evaluate, flat_metrics, trial_predictions
from pipeline.files import atomic_path, write_json
from pipeline.seedv import EMOTIONS
from pipeline.tracking import Tracker
from stages.common import params, paths, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "predictions", "metrics", "per_subject", "confusion", "per_subject_csv")
    p = params()
    with user_errors():
        tracker = Tracker(p.mlflow.experiment)
    predictions = pd.concat([pd.read_parquet(args.predictions / f"{s}.parquet") for s in p.cv.subjects])
    summary, per_subject = evaluate(predictions)
    write_json(args.metrics, summary)
    write_json(args.per_subject, per_subject)

    trials = trial_predictions(predictions)
    names = dict(enumerate(EMOTIONS))
    with atomic_path(args.confusion) as tmp:
        pd.DataFrame({"actual": trials["label"].map(names), "predicted": trials["predicted"].map(names)}
                     ).to_csv(tmp, index=False)
    with atomic_path(args.per_subject_csv) as tmp:
        pd.DataFrame([{"subject": s, "trial_accuracy": m["trial"]["accuracy"],
                       "window_accuracy": m["window"]["accuracy"]} for s, m in per_subject.items()]
                     ).to_csv(tmp, index=False)

    flat = flat_metrics(summary)
    parent = tracker.parent(p.flat())
    with tracker.stage_run(parent, "evaluate", "evaluate") as run_id:
        tracker.log_metrics(run_id, flat)
        tracker.log_artifacts(run_id, [args.metrics, args.per_subject])
    tracker.log_metrics(parent, flat)
    print(f"trial accuracy {summary['trial']['accuracy_mean']:.4f} ± {summary['trial']['accuracy_std']:.4f} "
          f"over {summary['n_folds']} held-out subjects")
