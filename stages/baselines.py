"""baselines: length-only, logistic-regression and chance baselines on the same LOSO folds
(same keys as metrics.json per baseline).

    python -m stages.baselines FEATURES BASELINES_JSON PER_SUBJECT_JSON
"""

from tqdm import tqdm

from pipeline.baselines import BASELINES, run_baseline
from pipeline.evaluate import subject_metrics, summarize
from pipeline.features import read_table
from pipeline.files import write_json
from stages.common import params, paths

if __name__ == "__main__":
    args = paths(__doc__, "features", "baselines", "per_subject")
    p = params()
    frame = read_table(args.features)
    per_subject = {name: {} for name in BASELINES}
    for subject in tqdm(p.cv.subjects, desc="baselines", unit="fold", disable=None):
        for name in BASELINES:
            predictions = run_baseline(name, frame, subject, p.cv.protocol, p.cv.crop_windows, p.train.seed)
            per_subject[name][subject] = subject_metrics(predictions)
    summaries = {name: summarize(folds) for name, folds in per_subject.items()}
    write_json(args.baselines, summaries)
    write_json(args.per_subject, per_subject)

    for name, s in summaries.items():
        print(f"{name:12s} trial accuracy {s['trial']['accuracy_mean']:.4f}  window {s['window']['accuracy_mean']:.4f}")
