"""plots: interpretability figures from the fold models -> plots/*.png, attached to the MLflow parent."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import interpret
from pipeline.evaluate import confusion, trial_predictions
from pipeline.features import read_table
from pipeline.rebuild import pipeline_metrics
from pipeline.tracking import Tracker
from pipeline.train import Trials, load_model
from stages.common import params

OUT = "plots"

if __name__ == "__main__":
    p = params()
    trials = Trials.from_frame(read_table("data/processed/features.parquet"))
    protocol, crop = p.cv.protocol, p.cv.crop_windows
    bins = crop if protocol == "crop" else 20
    extraction = interpret.Extraction()
    for subject in tqdm(p.cv.subjects, desc="plots", unit="fold", disable=None):
        model, _ = load_model(f"data/models/{subject}/model.pt")
        interpret.extract(model, trials, np.flatnonzero(trials.subjects == subject), protocol, crop, bins, extraction)

    predictions = pd.concat([pd.read_parquet(f"data/predictions/{s}.parquet") for s in p.cv.subjects])
    per_subject = json.load(open("metrics/per_subject.json"))
    baselines = json.load(open("metrics/baselines_per_subject.json"))
    accuracy = lambda folds: {int(s): m["trial"]["accuracy"] for s, m in folds.items()}  # noqa: E731

    first = p.cv.subjects[0]
    model, _ = load_model(f"data/models/{first}/model.pt")
    embeddings = interpret.trial_embeddings(model, trials, protocol, crop)
    figures = [
        interpret.cross_attention_figure(extraction, f"{OUT}/cross_attention.png"),
        interpret.temporal_attention_figure(extraction, f"{OUT}/temporal_attention.png"),
        interpret.confidence_figure(trial_predictions(predictions), f"{OUT}/confidence.png"),
        interpret.feature_importance_figure(extraction, f"{OUT}/feature_importance.png"),
        interpret.subject_variability_figure(
            accuracy(per_subject), {name: accuracy(baselines[name]) for name in ("length-only", "both-logreg")},
            f"{OUT}/subject_variability.png"),
        interpret.confusion_figure(confusion(predictions, normalize="true"), f"{OUT}/confusion_normalized.png"),
        interpret.tsne_figure(embeddings, trials.labels, trials.subjects, first, p.train.seed, f"{OUT}/tsne.png"),
    ]

    tracker = Tracker(p.mlflow.experiment)
    parent = tracker.parent(p.flat())
    with tracker.stage_run(parent, "plots", "plots") as run_id:
        tracker.log_artifacts(run_id, figures)
    tracker.log_artifacts(parent, figures)
    # The last stage: the parent carries the final metrics even where evaluate or baselines were cached.
    tracker.log_metrics(parent, pipeline_metrics(Path(".")))
    print(f"wrote {len(figures)} figures to {OUT}/")
