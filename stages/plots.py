"""plots: interpretability figures from the fold models.

    python -m stages.plots FEATURES MODELS PREDICTIONS METRICS_DIR OUT_DIR
"""

import json

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import interpret
from pipeline.evaluate import confusion, trial_predictions
from pipeline.features import read_table
from pipeline.model import load_checkpoint
from pipeline.sequences import Trials
from stages.common import params, paths

if __name__ == "__main__":
    args = paths(__doc__, "features", "models", "predictions", "metrics", "out")
    p = params()
    trials = Trials.from_frame(read_table(args.features))
    protocol, crop = p.cv.protocol, p.cv.crop_windows
    bins = crop if protocol == "crop" else 20
    predictions = pd.concat([pd.read_parquet(args.predictions / f"{s}.parquet") for s in p.cv.subjects])
    trial_table = trial_predictions(predictions)   # sorted by subject, session, trial, as `trials` is
    extraction, held_out, first = interpret.Extraction(), {}, p.cv.subjects[0]
    for subject in tqdm(p.cv.subjects, desc="plots", unit="fold", disable=None):
        model, ckpt = load_checkpoint(args.models / str(subject) / "model.pt")
        index = np.flatnonzero(trials.subjects == subject)
        interpret.extract(model, trials, index, protocol, crop, bins, extraction)
        held_out[subject] = (interpret.trial_embeddings(model, trials, index, protocol, crop), trials.labels[index],
                             trial_table.loc[trial_table.subject == subject, "predicted"].to_numpy())
        if subject == first:   # subject identity left in one fold model's embeddings of its training subjects
            trained = np.flatnonzero(np.isin(trials.subjects, ckpt["train_subjects"]))
            embeddings = interpret.trial_embeddings(model, trials, trained, protocol, crop)
            probe = (first, interpret.subject_probe(embeddings, trials.subjects[trained], p.train.seed),
                     len(ckpt["train_subjects"]))

    per_subject = json.loads((args.metrics / "per_subject.json").read_text())
    baselines = json.loads((args.metrics / "baselines_per_subject.json").read_text())
    accuracy = lambda folds: {int(s): m["trial"]["accuracy"] for s, m in folds.items()}  # noqa: E731

    out = args.out
    figures = [
        interpret.cross_attention_figure(extraction, out / "cross_attention.png"),
        interpret.temporal_attention_figure(extraction, out / "temporal_attention.png"),
        interpret.confidence_figure(trial_table, out / "confidence.png"),
        interpret.feature_importance_figure(extraction, out / "feature_importance.png"),
        interpret.subject_variability_figure(
            accuracy(per_subject), {name: accuracy(baselines[name]) for name in ("length-only", "both-logreg")},
            out / "subject_variability.png"),
        interpret.confusion_figure(confusion(predictions, normalize="true"), out / "confusion_normalized.png"),
        interpret.tsne_figure(held_out, probe, p.train.seed, out / "tsne.png"),
    ]

    print(f"wrote {len(figures)} figures to {out}/")
