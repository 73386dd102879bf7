"""baselines: shortcut-audit, logistic-regression and chance baselines on the model's folds (same keys as
metrics.json per baseline; a subject's folds pooled), and the label-free position audit per test subject
(``metrics/audits.json``).

    python -m stages.baselines FEATURES BASELINES_JSON PER_SUBJECT_JSON AUDITS_JSON
"""

import pandas as pd
from tqdm import tqdm

from pipeline.baselines import BASELINES, fold_baselines, position_probe, summarize_probe, trial_means
from pipeline.evaluate import subject_metrics, summarize
from pipeline.features import read_table
from pipeline.files import write_json
from stages.common import folds, params, paths, spec, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "features", "baselines", "per_subject", "audits")
    p = params()
    dataset, every_fold = spec(p), folds(p)
    with user_errors():
        frame = read_table(args.features, dataset)
    predictions = {name: {} for name in BASELINES}   # name -> subject -> its folds' predictions
    for fold in tqdm(every_fold, desc="baselines", unit="fold", disable=None):
        for name, table in fold_baselines(frame, fold, p.cv.input, p.cv.crop_windows, p.train.seed, dataset).items():
            predictions[name].setdefault(fold.subject, []).append(table)
    per_subject = {name: {s: subject_metrics(pd.concat(tables)) for s, tables in by_subject.items()}
                   for name, by_subject in predictions.items()}
    means = trial_means(frame)
    probe = {s: position_probe(frame, s, p.train.seed, dataset, means) for s in p.cv.subjects}
    summaries = {name: summarize(folds) for name, folds in per_subject.items()}
    audit = summarize_probe(probe, dataset)
    write_json(args.baselines, summaries)
    write_json(args.per_subject, per_subject)
    write_json(args.audits, {"position_probe": audit})

    for name, s in summaries.items():
        print(f"{name:13s} trial accuracy {s['trial']['accuracy_mean']:.4f}  window {s['window']['accuracy_mean']:.4f}")
    print(f"position probe (trial-position block from features, chance {audit['chance']:.3f}): accuracy "
          f"{audit['accuracy_mean']:.4f} ± {audit['accuracy_std']:.4f} over {audit['n_folds']} held-out subjects")
