"""plots: interpretability figures from the fold models.

    python -m stages.plots FEATURES MODELS PREDICTIONS METRICS_DIR OUT_DIR

The t-SNE figure shows at most TSNE_PANELS folds (the first, in fold order).
"""

import json

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import interpret
from pipeline.evaluate import confusion, trial_predictions
from pipeline.features import read_table
from pipeline.models import load_checkpoint, resolve_device
from pipeline.sequences import Trials
from stages.common import folds, params, paths, spec, user_errors

TSNE_PANELS = 16

if __name__ == "__main__":
    args = paths(__doc__, "features", "models", "predictions", "metrics", "out")
    p = params()
    dataset, every_fold = spec(p), folds(p)
    with user_errors():
        device = resolve_device(p.train.device)
        trials = Trials.from_frame(read_table(args.features, dataset), dataset)
    cv_input, crop = p.cv.input, p.cv.crop_windows
    bins = crop if cv_input == "crop" else 20
    predictions = pd.concat([pd.read_parquet(args.predictions / f"{f.name}.parquet") for f in every_fold])
    trial_table = trial_predictions(predictions).set_index(["subject", "session", "trial"])["predicted"]
    extraction, held_out, probe = interpret.Extraction(dataset), {}, None
    for k, fold in enumerate(tqdm(every_fold, desc="plots", unit="fold", disable=None)):
        model, ckpt = load_checkpoint(args.models / fold.name / "model.pt")
        model = model.to(device)
        index = np.flatnonzero(fold.mask("test", trials))
        interpret.extract(model, trials, index, cv_input, crop, bins, extraction, device)
        if k < TSNE_PANELS:
            predicted = trial_table.loc[list(zip(trials.subjects[index], trials.sessions[index], trials.trials[index]))]
            held_out[fold.name] = (interpret.trial_embeddings(model, trials, index, cv_input, crop, device),
                                   trials.labels[index], predicted.to_numpy())
        if k == 0 and len(ckpt["train_subjects"]) > 1:   # subject identity left in one fold model's embeddings
            trained = np.flatnonzero(fold.mask("train", trials))
            embeddings = interpret.trial_embeddings(model, trials, trained, cv_input, crop, device)
            inputs = np.stack([np.concatenate([trials.eeg[t, :trials.lengths[t]].mean(0),
                                               trials.eye[t, :trials.lengths[t]].mean(0)]) for t in trained])
            probe = (fold.name, interpret.subject_probe(embeddings, trials.subjects[trained], p.train.seed),
                     interpret.subject_probe(inputs, trials.subjects[trained], p.train.seed),
                     len(ckpt["train_subjects"]))

    per_subject = json.loads((args.metrics / "per_subject.json").read_text())
    baselines = json.loads((args.metrics / "baselines_per_subject.json").read_text())
    accuracy = lambda folds: {int(s): m["trial"]["accuracy"] for s, m in folds.items()}  # noqa: E731

    out = args.out
    figures = [
        interpret.cross_attention_figure(extraction, out / "cross_attention.png"),
        interpret.temporal_attention_figure(extraction, out / "temporal_attention.png"),
        interpret.confidence_figure(trial_predictions(predictions), out / "confidence.png"),
        interpret.feature_importance_figure(extraction, out / "feature_importance.png"),
        interpret.subject_variability_figure(
            accuracy(per_subject), {name: accuracy(baselines[name]) for name in ("length-only", "both-logreg")},
            float(np.mean(list(accuracy(baselines["chance"]).values()))), out / "subject_variability.png"),
        interpret.confusion_figure(confusion(predictions, normalize="true"), dataset.classes,
                                   out / "confusion_normalized.png"),
        interpret.tsne_figure(held_out, probe, p.train.seed, dataset.classes, out / "tsne.png"),
    ]

    print(f"wrote {len(figures)} figures to {out}/")
