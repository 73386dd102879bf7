"""evaluate: all folds' predictions -> summary and per-subject metrics (a subject's folds pooled), confusion
and per-subject CSVs, the model's paired comparison with each baseline over the same test subjects, and
every fold's training curves in one long table (one chart coloured by fold in ``dvc plots show``).

    python -m stages.evaluate PREDICTIONS CURVES FOLD_METRICS BASELINES_PER_SUBJECT BASELINES METRICS
                              PER_SUBJECT CONFUSION_CSV PER_SUBJECT_CSV CURVES_CSV COMPARISON HEADLINE

``HEADLINE`` (``metrics/summary.json``, the DVC metric) holds the 7 numbers of :func:`pipeline.evaluate.headline`.

Every spread is a sample std (ddof 1). ``comparison.json`` (pipeline/comparison.py): per baseline and
level the mean difference, BCa and t 95 % intervals, sign-flip permutation p and its Holm-adjusted p over
every baseline × level of the file, Cohen's d_z, wins/ties/losses.

With several training seeds (``train.seeds``) ``metrics.json`` gains a ``seeds`` section (each seed's
accuracy, their mean, sample std and 95 % t interval over seeds); the comparison pairs each subject's
accuracy averaged over the seeds, and each entry adds each seed's mean difference with a t interval over
seeds (descriptive: how much the difference depends on the seed). Everything else is the ``train.seed``
training.
"""

import json

import pandas as pd

from pipeline.comparison import compare_all, per_seed_metrics, summary_lines
from pipeline.evaluate import evaluate, headline, pool_by_subject, seed_summary, trial_predictions
from pipeline.files import atomic_path, write_json
from stages.common import folds, params, paths, spec

# What the training-curves chart shows, one panel each, where the model records it (the inner-validation
# ones only with validation; the SVM has no epochs, DCCA's losses are its CCA objective).
CURVES = {"class_loss": "training loss (per crop)", "val_loss": "inner-validation loss (per trial)",
          "val_f1": "inner-validation macro-F1 (per trial)", "val_cca_loss": "inner-validation CCA loss (dcca)"}

if __name__ == "__main__":
    args = paths(__doc__, "predictions", "curves", "fold_metrics", "baselines", "baselines_summary", "metrics",
                 "per_subject", "confusion", "per_subject_csv", "curves_csv", "comparison", "headline")
    p = params()
    every_fold = folds(p)
    predictions = pd.concat([pd.read_parquet(args.predictions / f"{f.name}.parquet") for f in every_fold])
    summary, per_subject = evaluate(predictions)
    fold_metrics = {f.name: json.loads((args.fold_metrics / f"{f.name}.json").read_text()) for f in every_fold}
    pooled = pool_by_subject(fold_metrics, {f.name: f.subject for f in every_fold})
    seeds, over_seeds = seed_summary(pooled)
    write_json(args.metrics, {**summary, **({"seeds": seeds} if seeds else {})})
    write_json(args.per_subject, per_subject)

    trials = trial_predictions(predictions)
    names = {c: f"{c + 1} {e}" for c, e in enumerate(spec(p).classes)}   # numbered: DVC sorts them in label order
    with atomic_path(args.confusion) as tmp:
        pd.DataFrame({"actual": trials["label"].map(names), "predicted": trials["predicted"].map(names)}
                     ).to_csv(tmp, index=False)
    with atomic_path(args.per_subject_csv) as tmp:
        pd.DataFrame([{"subject": s, "trial_accuracy": m["trial"]["accuracy"],
                       "window_accuracy": m["window"]["accuracy"]} for s, m in per_subject.items()]
                     ).to_csv(tmp, index=False)

    curves = pd.concat([pd.read_csv(args.curves / f"{f.name}.csv") for f in every_fold])
    chosen = pd.Series({f.name: fold_metrics[f.name]["selection"].get("chosen_epoch") for f in every_fold})
    curves["chosen"] = (curves["epoch"] == curves["fold"].map(chosen)).astype(int)   # the epoch the fold chose
    with atomic_path(args.curves_csv) as tmp:
        shown = {k: v for k, v in CURVES.items() if k in curves}    # what the model's training records
        curves.rename(columns=shown).melt(["fold", "epoch", "chosen"], list(shown.values()), "curve", "value"
                                          ).dropna().to_csv(tmp, index=False)

    baselines = {name: {int(s): m for s, m in folds.items()}
                 for name, folds in json.loads(args.baselines.read_text()).items()}
    model = over_seeds or per_subject
    comparison = compare_all(model, baselines, p.train.seed, per_seed_metrics(pooled))
    write_json(args.comparison, comparison)
    write_json(args.headline, headline(summary, json.loads(args.baselines_summary.read_text())))

    print(f"trial accuracy {summary['trial']['accuracy_mean']:.4f} ± {summary['trial']['accuracy_std']:.4f} "
          f"(mean ± sample std (ddof 1) over {summary['n_folds']} held-out subjects)")
    if seeds:
        print(f"over {seeds['n']} training seeds: trial accuracy {seeds['trial_accuracy_mean']:.4f} ± "
              f"{seeds['trial_accuracy_std']:.4f}, window {seeds['window_accuracy_mean']:.4f} ± "
              f"{seeds['window_accuracy_std']:.4f} (mean ± sample std of the per-seed means; trial 95 % t "
              f"interval {seeds['trial_accuracy_ci95_low']:.4f} to {seeds['trial_accuracy_ci95_high']:.4f})")
    print("\n".join(summary_lines(comparison)))
