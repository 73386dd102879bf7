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
    extraction = interpret.Extraction()
    for subject in tqdm(p.cv.subjects, desc="plots", unit="fold", disable=None):
        model, _ = load_checkpoint(args.models / str(subject) / "model.pt")
        interpret.extract(model, trials, np.flatnonzero(trials.subjects == subject), protocol, crop, bins, extraction)

    predictions = pd.concat([pd.read_parquet(args.predictions / f"{s}.parquet") for s in p.cv.subjects])
    per_subject = json.loads((args.metrics / "per_subject.json").read_text())
    baselines = json.loads((args.metrics / "baselines_per_subject.json").read_text())
    accuracy = lambda folds: {int(s): m["trial"]["accuracy"] for s, m in folds.items()}  # noqa: E731

    first = p.cv.subjects[0]
    model, _ = load_checkpoint(args.models / str(first) / "model.pt")
    embeddings = interpret.trial_embeddings(model, trials, protocol, crop)
    out = args.out
    figures = [
        interpret.cross_attention_figure(extraction, out / "cross_attention.png"),
        interpret.temporal_attention_figure(extraction, out / "temporal_attention.png"),
        interpret.confidence_figure(trial_predictions(predictions), out / "confidence.png"),
        interpret.feature_importance_figure(extraction, out / "feature_importance.png"),
        interpret.subject_variability_figure(
            accuracy(per_subject), {name: accuracy(baselines[name]) for name in ("length-only", "both-logreg")},
            out / "subject_variability.png"),
        interpret.confusion_figure(confusion(predictions, normalize="true"), out / "confusion_normalized.png"),
        interpret.tsne_figure(embeddings, trials.labels, trials.subjects, first, p.train.seed, out / "tsne.png"),
    ]

    print(f"wrote {len(figures)} figures to {out}/")
