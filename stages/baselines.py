"""baselines: shortcut-audit, logistic-regression and chance baselines on the same LOSO folds (same keys as
metrics.json per baseline), and the label-free position audit (``metrics/audits.json``).

    python -m stages.baselines FEATURES BASELINES_JSON PER_SUBJECT_JSON AUDITS_JSON
"""

from tqdm import tqdm

from pipeline.baselines import BASELINES, fold_baselines, position_probe, summarize_probe, trial_means
from pipeline.evaluate import subject_metrics, summarize
from pipeline.features import read_table
from pipeline.files import write_json
from stages.common import params, paths

if __name__ == "__main__":
    args = paths(__doc__, "features", "baselines", "per_subject", "audits")
    p = params()
    frame = read_table(args.features)
    means = trial_means(frame)
    per_subject, probe = {name: {} for name in BASELINES}, {}
    for subject in tqdm(p.cv.subjects, desc="baselines", unit="fold", disable=None):
        for name, predictions in fold_baselines(frame, subject, p.cv.protocol, p.cv.crop_windows,
                                                p.train.seed).items():
            per_subject[name][subject] = subject_metrics(predictions)
        probe[subject] = position_probe(frame, subject, p.train.seed, means)
    summaries = {name: summarize(folds) for name, folds in per_subject.items()}
    audit = summarize_probe(probe)
    write_json(args.baselines, summaries)
    write_json(args.per_subject, per_subject)
    write_json(args.audits, {"position_probe": audit})

    for name, s in summaries.items():
        print(f"{name:13s} trial accuracy {s['trial']['accuracy_mean']:.4f}  window {s['window']['accuracy_mean']:.4f}")
    print(f"position probe (trial-position tercile from features, chance {audit['chance']:.3f}): accuracy "
          f"{audit['accuracy_mean']:.4f} ± {audit['accuracy_std']:.4f} over {audit['n_folds']} held-out subjects")
