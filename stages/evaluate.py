"""evaluate: all folds' predictions -> summary and per-subject metrics, confusion and per-subject CSVs.

    python -m stages.evaluate PREDICTIONS METRICS PER_SUBJECT CONFUSION_CSV PER_SUBJECT_CSV
"""


import pandas as pd

from pipeline.evaluate import evaluate, trial_predictions
from pipeline.files import atomic_path, write_json
from pipeline.seedv import EMOTIONS
from stages.common import params, paths

if __name__ == "__main__":
    args = paths(__doc__, "predictions", "metrics", "per_subject", "confusion", "per_subject_csv")
    p = params()
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

    print(f"trial accuracy {summary['trial']['accuracy_mean']:.4f} ± {summary['trial']['accuracy_std']:.4f} "
          f"over {summary['n_folds']} held-out subjects")
