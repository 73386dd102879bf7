"""Metrics from per-window predictions, computed the way the field reports them.

Trial prediction: argmax of the mean per-window log-probability over the trial's windows. Per held-out
subject: trial accuracy over its trials, window accuracy over its windows, macro F1 over the dataset's classes
(a class a subject never gets predicted scores F1 0). Across subjects: the mean and the *sample* standard
deviation (ddof 1) over held-out subjects, the one convention of every reported spread (over training
seeds too, in :func:`seed_summary`); the original's 75.42 +- 11.15 is a population std (ddof 0), about 3 %
smaller at 16 subjects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def n_classes(predictions: pd.DataFrame) -> int:
    """The classes of a predictions table: its ``p_0`` .. ``p_<C-1>`` probability columns."""
    return sum(1 for c in predictions.columns if c.startswith("p_") and c[2:].isdigit())


def probability_columns(n: int) -> list[str]:
    return [f"p_{c}" for c in range(n)]


def log_probability_columns(n: int) -> list[str]:
    """A trial predictions table's columns: the mean log-probability of each class."""
    return [f"logp_{c}" for c in range(n)]


def log_probabilities(predictions: pd.DataFrame) -> np.ndarray:
    columns = probability_columns(n_classes(predictions))
    return np.log(np.clip(predictions[columns].to_numpy(np.float64), 1e-12, None))


def trial_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: subject, session, trial, label, mean log-probabilities, predicted."""
    frame = predictions[["subject", "session", "trial", "label"]].copy()
    log_p = log_probabilities(predictions)
    columns = log_probability_columns(log_p.shape[1])
    for c, column in enumerate(columns):
        frame[column] = log_p[:, c]
    grouped = frame.groupby(["subject", "session", "trial"], sort=True)
    out = grouped[columns].mean()
    out["label"] = grouped["label"].first()
    out["predicted"] = out[columns].to_numpy().argmax(1)
    return out.reset_index()


def classification_scores(labels, predicted, n: int) -> dict[str, float]:
    """Accuracy and macro-F1 over the ``n`` classes (a class never predicted scores F1 0)."""
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "f1_macro": float(f1_score(labels, predicted, labels=list(range(n)), average="macro", zero_division=0))}


def subject_metrics(predictions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Trial- and window-level scores of one held-out subject's predictions."""
    trials = trial_predictions(predictions)
    log_p = log_probabilities(predictions)
    n = log_p.shape[1]
    return {"trial": {**classification_scores(trials["label"], trials["predicted"], n), "n": int(len(trials))},
            "window": {**classification_scores(predictions["label"], log_p.argmax(1), n), "n": int(len(predictions))}}


def summarize(per_subject: dict[int, dict]) -> dict:
    """Mean and sample std (ddof 1) over held-out subjects, in the layout ``metrics.json`` uses; the std is
    NaN with one held-out subject (undefined; NaN, not None, so that every reader still formats it)."""
    out = {}
    for level in ("trial", "window"):
        accuracy = np.array([m[level]["accuracy"] for m in per_subject.values()])
        f1 = np.array([m[level]["f1_macro"] for m in per_subject.values()])
        std = float(accuracy.std(ddof=1)) if len(accuracy) > 1 else float("nan")
        out[level] = {"accuracy_mean": float(accuracy.mean()), "accuracy_std": std,
                      "f1_macro_mean": float(f1.mean())}
    out["n_folds"] = len(per_subject)
    return out


def evaluate(predictions: pd.DataFrame) -> tuple[dict, dict[int, dict]]:
    """All held-out subjects' predictions -> (summary, per-subject metrics)."""
    per_subject = {int(s): subject_metrics(group) for s, group in predictions.groupby("subject", sort=True)}
    return summarize(per_subject), per_subject


def confusion(predictions: pd.DataFrame, normalize: str | None = None) -> np.ndarray:
    """Trial-level C x C confusion matrix, rows = true class in label order."""
    trials = trial_predictions(predictions)
    return confusion_matrix(trials["label"], trials["predicted"], labels=list(range(n_classes(predictions))),
                            normalize=normalize)


HEADLINE_BASELINES = {"logreg": "both-logreg", "length": "length-only", "position": "position-only",
                      "chance": "chance"}   # the strongest linear baseline and the shortcut audits


def headline(summary: dict, baselines: dict) -> dict[str, float]:
    """The few numbers ``dvc metrics show`` / ``dvc exp show`` show (7 columns, a 120-column terminal): the
    model's trial accuracy and macro-F1 and window accuracy, and the trial accuracy of the baselines that
    say whether it means anything, on the same folds; means over the test subjects."""
    out = {"trial_acc": summary["trial"]["accuracy_mean"], "trial_f1": summary["trial"]["f1_macro_mean"],
           "window_acc": summary["window"]["accuracy_mean"]}
    return out | {key: baselines[name]["trial"]["accuracy_mean"] for key, name in HEADLINE_BASELINES.items()}


def seed_summary(folds: dict[int, dict]) -> tuple[dict, dict[int, dict]]:
    """Seed variance from the fold metrics of a run with several training seeds (their ``seeds`` maps):
    (the ``seeds`` section of ``metrics.json``: each seed's mean over subjects, their mean, sample std
    (ddof 1) and 95 % t interval over seeds, ``<level>_accuracy_ci95_low``/``_high``, the point when every
    seed scores the same; per-subject accuracies averaged over seeds). Std and interval are None under 2
    seeds (train writes ``seeds`` maps only with 2 or more). ``({}, {})`` without ``seeds`` maps."""
    if not all("seeds" in fold for fold in folds.values()):
        return {}, {}
    seeds = sorted(next(iter(folds.values()))["seeds"], key=int)
    out: dict[str, float] = {"n": len(seeds)}
    for level in ("trial", "window"):
        per_seed = [summarize({s: fold["seeds"][k] for s, fold in folds.items()})[level]["accuracy_mean"]
                    for k in seeds]
        if len(per_seed) < 2:
            std = low = high = None
        elif np.ptp(per_seed) == 0:
            std, low, high = 0.0, float(per_seed[0]), float(per_seed[0])
        else:
            interval = stats.ttest_1samp(per_seed, 0).confidence_interval(0.95)
            std, low, high = float(np.std(per_seed, ddof=1)), float(interval.low), float(interval.high)
        out[f"{level}_accuracy_mean"] = float(np.mean(per_seed))
        out.update({f"{level}_accuracy_std": std, f"{level}_accuracy_ci95_low": low,
                    f"{level}_accuracy_ci95_high": high})
        out.update({f"{level}_accuracy_seed_{k}": float(v) for k, v in zip(seeds, per_seed)})
    averaged = {s: {level: {"accuracy": float(np.mean([fold["seeds"][k][level]["accuracy"] for k in seeds]))}
                    for level in ("trial", "window")} for s, fold in folds.items()}
    return out, averaged


def pool_by_subject(fold_metrics: dict[str, dict], subject_of: dict[str, int]) -> dict[int, dict]:
    """Per-subject metrics from per-fold ones, for splits with several folds per subject (a subject's
    blocks or sessions): trial and window accuracy pooled over the subject's folds (weighted by their
    trial / window counts: exactly the accuracy over all its test trials), macro-F1 their weighted mean
    (an approximation; the headline F1 comes from the pooled predictions), each training seed's
    likewise. A subject with one fold keeps that fold's metrics unchanged."""
    grouped: dict[int, list[dict]] = {}
    for name, metrics in fold_metrics.items():
        grouped.setdefault(subject_of[name], []).append(metrics)

    def pool(parts: list[dict]) -> dict:
        out = {}
        for level in ("trial", "window"):
            n = np.array([m[level]["n"] for m in parts], dtype=np.float64)
            out[level] = {k: float(np.dot(n, [m[level][k] for m in parts]) / n.sum()) for k in ("accuracy", "f1_macro")}
            out[level]["n"] = int(n.sum())
        if all("seeds" in m for m in parts):
            out["seeds"] = {k: pool([m["seeds"][k] for m in parts]) for k in parts[0]["seeds"]}
        return out

    return {s: parts[0] if len(parts) == 1 else pool(parts) for s, parts in sorted(grouped.items())}
