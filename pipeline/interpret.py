"""Interpretability: extract attention and feature-importance from fold models, and draw the figures.

Extraction runs each fold model over its held-out subject's sequences (sliding crops, or whole trials,
as in testing: :func:`pipeline.sequences.run_sequences`) and keeps, per sequence, the FIM gate weights
and the cross-modal attention maps. Positions are binned to ``bins`` relative positions so trials of
different length can be averaged.
Every figure is titled, has labelled axes, and names classes in label order (disgust .. happy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from .files import atomic_path  # noqa: E402
from .datasets import Spec  # noqa: E402
from .evaluate import log_probability_columns  # noqa: E402
from .sequences import Trials, run_sequences  # noqa: E402

DPI = 150


def bin_attention(attention: np.ndarray, n: int, bins: int) -> np.ndarray:
    """(L, L) attention over the first n valid windows -> (bins, bins) over relative positions.

    Cell [a, b] is the mean over queries in bin a of the attention they give to keys in bin b, so each
    row still sums to 1."""
    index = np.minimum((np.arange(n) * bins) // n, bins - 1)
    summed = np.zeros((n, bins))
    np.add.at(summed.T, index, attention[:n, :n].T)          # sum over keys within each key bin
    out = np.zeros((bins, bins))
    np.add.at(out, index, summed)
    counts = np.bincount(index, minlength=bins)[:, None]
    return np.divide(out, counts, out=np.full_like(out, np.nan), where=counts > 0)


def key_mass(attention: np.ndarray, n: int) -> np.ndarray:
    """(L, L) attention -> (n,) attention received by each valid key, averaged over queries, times n
    (so 1 means uniform attention)."""
    return attention[:n, :n].mean(0) * n


@dataclass
class Extraction:
    """Per held-out trial (T trials) of the folds: what the models did with them."""

    spec: Spec
    labels: list[int] = field(default_factory=list)
    subjects: list[int] = field(default_factory=list)
    fim: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"eeg": [], "eye": []})  # (F,) each
    attention: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"eeg_to_eye": [], "eye_to_eeg": []})
    temporal: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"eeg_to_eye": [], "eye_to_eeg": []})


def _accumulate(acc: dict, positions: np.ndarray, details: dict, length: int, bins: int) -> None:
    """Add one sequence's FIM weights and attention to its trial's running sums."""
    acc["n"] += 1
    n_valid = int((positions >= 0).sum())
    for modality in ("eeg", "eye"):
        if f"fim_{modality}" in details:
            acc["fim"][modality] = acc["fim"].get(modality, 0) + details[f"fim_{modality}"]
    for direction in ("eeg_to_eye", "eye_to_eeg"):
        if f"attn_{direction}" not in details:
            continue
        attention = details[f"attn_{direction}"]
        acc["attention"][direction] = acc["attention"].get(direction, 0) + bin_attention(attention, n_valid, bins)
        mass = acc["temporal"].setdefault(direction, np.zeros((2, length)))
        np.add.at(mass[0], positions[:n_valid], key_mass(attention, n_valid))
        np.add.at(mass[1], positions[:n_valid], 1)


def extract(model, trials: Trials, index: np.ndarray, cv_input: str, crop: int,
            bins: int, into: Extraction, device: torch.device = torch.device("cpu")) -> Extraction:
    """Add the held-out trials ``index`` of one fold model (on ``device``) to ``into``."""
    lengths = trials.lengths[index]
    per_trial = [dict(n=0, fim={}, attention={}, temporal={}) for _ in index]
    for _, owners, batch_positions, out in run_sequences(model, trials, index, cv_input, crop, device, details=True):
        batch_details = {name: value.float().cpu().numpy() for name, value in out.details.items()}
        for k, owner in enumerate(owners):
            details = {name: value[k] for name, value in batch_details.items()}
            _accumulate(per_trial[owner], batch_positions[k], details, lengths[owner], bins)
    for t, acc in enumerate(per_trial):
        into.labels.append(int(trials.labels[index[t]]))
        into.subjects.append(int(trials.subjects[index[t]]))
        for modality, total in acc["fim"].items():
            into.fim[modality].append(total / acc["n"])
        for direction, total in acc["attention"].items():
            into.attention[direction].append(total / acc["n"])
        for direction, (mass, count) in acc["temporal"].items():
            per_window = mass / np.maximum(count, 1)
            # Resample to `bins` relative positions within the clip.
            grid = (np.arange(bins) + 0.5) / bins
            into.temporal[direction].append(np.interp(grid, (np.arange(len(per_window)) + 0.5) / len(per_window),
                                                      per_window))
    return into


@torch.no_grad()
def trial_embeddings(model, trials: Trials, index: np.ndarray, cv_input: str,
                     crop: int, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """(len(index), E) fused embedding per trial of ``index``: the mean over its test sequences."""
    owners, embeddings = [], []
    for _, batch_owners, _, out in run_sequences(model, trials, index, cv_input, crop, device):
        owners.append(batch_owners)
        embeddings.append(out.embedding.float().cpu().numpy())
    owners, embeddings = np.concatenate(owners), np.concatenate(embeddings)
    return np.stack([embeddings[owners == t].mean(0) for t in range(len(index))])


def subject_probe(embeddings: np.ndarray, subjects: np.ndarray, seed: int) -> float:
    """How much subject identity the fused embeddings still carry: 5-fold cross-validated accuracy of a
    logistic regression predicting the subject (chance: 1 / number of subjects)."""
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(probe, embeddings, subjects, cv=folds).mean())


# --- figures ----------------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def disabled_figure(path: Path, title: str, reason: str) -> Path:
    """A figure that says a component is switched off, in place of one that cannot be drawn."""
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, f"component disabled:\n{reason}", ha="center", va="center", fontsize=12,
            transform=ax.transAxes)
    return _save(fig, path)


def emotion_differences(values: list[np.ndarray], labels, subjects, n_classes: int
                        ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per emotion: each test subject's map for that emotion minus the subject's all-emotion map, averaged
    over subjects, and where its 95 % t interval across subjects excludes 0 (subjects are the unit, as in
    every comparison here). None for an emotion no subject has."""
    stacked, labels, subjects = np.stack(values), np.asarray(labels), np.asarray(subjects)
    subject_mean = {s: np.nanmean(stacked[subjects == s], axis=0) for s in np.unique(subjects)}
    out = []
    for c in range(n_classes):
        diffs = [np.nanmean(stacked[(labels == c) & (subjects == s)], axis=0) - mean
                 for s, mean in subject_mean.items() if ((labels == c) & (subjects == s)).any()]
        if not diffs:
            out.append(None)
            continue
        d = np.stack(diffs)
        mean = d.mean(0)
        if len(d) < 2:
            out.append((mean, np.zeros(mean.shape, dtype=bool)))
            continue
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(0, ddof=1) / np.sqrt(len(d))
        out.append((mean, np.abs(mean) > half))
    return out


RELATIVE_SCALE = 0.10   # difference maps: the colour saturates at 10 % of the mean weight (or the largest effect)
SHOWN = ("blank: its 95 % interval across subjects includes 0 (per cell, not corrected for the number of cells); "
         "colour saturates at ±10 % of the mean weight")


def _difference_map(ax, mean_weight: float, difference: tuple[np.ndarray, np.ndarray] | None, **imshow):
    """One emotion's difference map: colour in units of the mean weight, cells not distinguishable from 0
    left blank. Returns the image and the largest |difference| shown (relative to the mean weight)."""
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    if difference is None:
        shown = np.full((1, 1), np.nan)
    else:
        shown = np.where(difference[1], difference[0] / mean_weight, np.nan)
    largest = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 0.0
    bound = max(RELATIVE_SCALE, largest)
    return ax.imshow(shown, cmap=cmap, vmin=-bound, vmax=bound, **imshow), largest


def cross_attention_figure(ex: Extraction, path: Path) -> Path:
    """Per direction: the all-emotion mean map, then each emotion's difference from it (per subject, then
    averaged over subjects) as a share of the mean weight, blank where its 95 % interval across subjects
    includes 0: what is specific to an emotion, not the shared crop-edge pattern, and only where it holds
    across subjects."""
    if not ex.attention["eeg_to_eye"]:
        return disabled_figure(path, "Cross-modal attention", "model.cross_attention is off or one modality")
    classes = ex.spec.classes
    fig, axes = plt.subplots(2, len(classes) + 1, figsize=(19 / 6 * (len(classes) + 1), 6.6), constrained_layout=True)
    largest = 0.0
    for row, (direction, name) in enumerate((("eeg_to_eye", "EEG queries → eye keys"),
                                             ("eye_to_eeg", "eye queries → EEG keys"))):
        mean = np.nanmean(np.stack(ex.attention[direction]), axis=0)
        image = axes[row, 0].imshow(mean, vmin=0, cmap="viridis")
        axes[row, 0].set_title(f"all emotions (mean)\n{name}", fontsize=9)
        fig.colorbar(image, ax=axes[row, 0], shrink=0.8, label="attention weight")
        differences = emotion_differences(ex.attention[direction], ex.labels, ex.subjects, len(classes))
        for c, difference in enumerate(differences):
            image, shown = _difference_map(axes[row, c + 1], float(np.nanmean(mean)), difference)
            largest = max(largest, shown)
            axes[row, c + 1].set_title(f"{classes[c]} − mean\n{name}", fontsize=9)
        fig.colorbar(image, ax=axes[row, 1:], shrink=0.8, label="difference / mean weight")
        for ax in axes[row]:
            ax.set_xlabel("key position (relative bin)")
            ax.set_ylabel("query position (relative bin)")
    verdict = ("no emotion-specific difference holds across subjects" if largest == 0 else
               f"largest difference that holds across subjects: {largest:.0%} of the mean weight")
    fig.suptitle(f"Cross-modal attention over held-out trials: the shared pattern, and each emotion's difference "
                 f"from it ({verdict})\n{SHOWN}")
    return _save(fig, path)


def temporal_attention_figure(ex: Extraction, path: Path) -> Path:
    """Attention each window receives against its relative position, per emotion: the mean over held-out
    subjects with a 95 % band (± 1.96 standard errors across subjects)."""
    if not ex.temporal["eeg_to_eye"]:
        return disabled_figure(path, "Temporal attention", "model.cross_attention is off or one modality")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True, constrained_layout=True)
    labels, subjects = np.asarray(ex.labels), np.asarray(ex.subjects)
    for ax, (direction, name) in zip(axes, (("eeg_to_eye", "eye windows attended by EEG"),
                                            ("eye_to_eeg", "EEG windows attended by eye"))):
        curves = np.stack(ex.temporal[direction])
        grid = (np.arange(curves.shape[1]) + 0.5) / curves.shape[1]
        for c, emotion in enumerate(ex.spec.classes):
            per_subject = np.stack([curves[(labels == c) & (subjects == s)].mean(0) for s in np.unique(subjects)
                                    if ((labels == c) & (subjects == s)).any()])
            mean = per_subject.mean(0)
            half = 1.96 * per_subject.std(0, ddof=1) / np.sqrt(len(per_subject)) if len(per_subject) > 1 else 0 * mean
            ax.plot(grid, mean, label=emotion)
            ax.fill_between(grid, mean - half, mean + half, alpha=0.2)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(name)
        ax.set_xlabel("relative position in the clip (0 = start, 1 = end)")
        ax.set_ylabel("attention received (1 = uniform)")
    axes[1].legend(title="emotion")
    fig.suptitle(f"Temporal attention per emotion: mean over {len(np.unique(subjects))} held-out subjects, "
                 "95 % band across subjects\nnear a clip's start and end, every crop holding a window has it at the "
                 "crop's edge: a rise there can be the crop's edge effect, not the clip's")
    return _save(fig, path)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10):
    """ECE with equal-width confidence bins; also returns per-bin (confidence, accuracy, count)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table = [(confidence[which == b].mean(), correct[which == b].mean(), int((which == b).sum()))
             for b in range(bins) if (which == b).any()]
    ece = sum(n / len(confidence) * abs(acc - conf) for conf, acc, n in table)
    return float(ece), table


def confidence_figure(trial_table, path: Path) -> Path:
    """trial_table: evaluate.trial_predictions output (logp_* columns, label, predicted)."""
    log_p = trial_table[log_probability_columns(sum(c.startswith("logp_") for c in trial_table.columns))].to_numpy()
    probs = np.exp(log_p - log_p.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    confidence = probs.max(1)
    correct = (trial_table["predicted"] == trial_table["label"]).to_numpy()
    ece, table = expected_calibration_error(confidence, correct)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    edges = np.linspace(0.2, 1, 17)
    left.hist(confidence[correct], bins=edges, alpha=0.7, label=f"correct ({correct.sum()})")
    left.hist(confidence[~correct], bins=edges, alpha=0.7, label=f"wrong ({(~correct).sum()})")
    left.set_xlabel("max class probability of the trial")
    left.set_ylabel("trials")
    left.set_title("Confidence of correct vs wrong trial predictions")
    left.legend()
    conf, acc, counts = map(np.array, zip(*table))
    right.plot([0, 1], [0, 1], color="grey", ls="--", label="perfect calibration")
    intervals = [stats.binomtest(int(round(a * n)), int(n)).proportion_ci(method="wilson") for a, n in zip(acc, counts)]
    errors = np.array([[a - ci.low for a, ci in zip(acc, intervals)], [ci.high - a for a, ci in zip(acc, intervals)]])
    right.bar(conf, acc, width=0.07, alpha=0.7, label="accuracy per confidence bin")
    right.errorbar(conf, acc, yerr=errors, fmt="none", color="black", capsize=3, lw=1,
                   label="95 % Wilson interval (few trials: wide)")
    for x, high, n in zip(conf, acc + errors[1], counts):
        right.annotate(str(n), (x, high), ha="center", va="bottom", fontsize=7)
    right.set_xlim(0, 1)
    right.set_ylim(0, 1.05)
    right.set_xlabel("confidence (mean in bin)")
    right.set_ylabel("accuracy")
    right.set_title(f"Reliability diagram, ECE = {ece:.3f} (bar labels: trials)")
    right.legend(loc="upper left")
    return _save(fig, path)


def feature_importance_figure(ex: Extraction, path: Path) -> Path:
    """FIM gates per emotion as deviations from the all-emotion mean gate (colour scale centred on zero);
    the mean gate itself is given in the title."""
    if not ex.fim["eeg"] and not ex.fim["eye"]:
        return disabled_figure(path, "Feature importance (FIM)", "model.feature_importance is off")
    classes, channels, bands = ex.spec.classes, ex.spec.channels, ex.spec.bands
    fig = plt.figure(figsize=(16 / 5 * len(classes), 13), constrained_layout=True)
    grid = fig.add_gridspec(2, len(classes), height_ratios=[4, 1])
    notes = []
    if ex.fim["eeg"]:
        mean = np.mean(np.stack(ex.fim["eeg"]), axis=0).reshape(len(channels), len(bands))
        largest = 0.0
        for c, difference in enumerate(emotion_differences(ex.fim["eeg"], ex.labels, ex.subjects, len(classes))):
            ax = fig.add_subplot(grid[0, c])
            if difference is not None:
                difference = tuple(x.reshape(len(channels), len(bands)) for x in difference)
            image, shown = _difference_map(ax, float(mean.mean()), difference, aspect="auto")
            largest = max(largest, shown)
            ax.set_title(f"EEG: {classes[c]} − mean")
            ax.set_xticks(range(len(bands)), bands, rotation=45)
            ax.set_yticks(range(len(channels)), channels if c == 0 else [""] * len(channels), fontsize=6)
            ax.set_xlabel("band")
            if c == 0:
                ax.set_ylabel("channel")
        fig.colorbar(image, ax=fig.axes[-1], label="(gate − mean gate) / mean gate")
        notes.append(f"EEG mean gate {mean.mean():.2f} (range {mean.min():.2f}–{mean.max():.2f}); the largest "
                     f"deviation holding across subjects is {largest:.1%} of it")
    ax = fig.add_subplot(grid[1, :])
    if ex.fim["eye"]:
        mean = np.mean(np.stack(ex.fim["eye"]), axis=0)
        differences = [d if d is not None else (np.full(mean.shape, np.nan), np.zeros(mean.shape, dtype=bool))
                       for d in emotion_differences(ex.fim["eye"], ex.labels, ex.subjects, len(classes))]
        image, bound = _difference_map(ax, float(mean.mean()), (np.stack([d[0] for d in differences]),
                                                                np.stack([d[1] for d in differences])), aspect="auto")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xticks(range(len(mean)), [f"{i:02d}" for i in range(len(mean))], fontsize=7)
        ax.set_xlabel(f"eye feature eye_NN, file order ({ex.spec.name.upper()}'s per-index feature order is not published)")
        ax.set_ylabel("emotion")
        ax.set_title("Eye-feature FIM gate per emotion − mean gate")
        fig.colorbar(image, ax=ax, label="(gate − mean gate) / mean gate")
        notes.append(f"eye mean gate {mean.mean():.2f}; the largest deviation holding across subjects is {bound:.1%} "
                     "of it")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "eye modality not in model.modalities", ha="center", va="center")
    fig.suptitle("Feature Importance Module gates over held-out trials, each emotion's deviation from the mean "
                 "gate\n" + "; ".join(notes) + f"\n{SHOWN.replace('weight', 'gate')}")
    return _save(fig, path)


def subject_variability_figure(model_acc: dict[int, float], baselines: dict[str, dict[int, float]], chance: float,
                               path: Path) -> Path:
    """Bars per test subject: the model and ``baselines``; the dotted line is ``chance``, the chance baseline's
    mean trial accuracy on the same folds (stratified guessing: above 1 / classes when classes are unequal)."""
    subjects = sorted(model_acc)
    series = {"model": model_acc, **baselines}
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, len(subjects) * 0.8), 4.5), constrained_layout=True)
    for k, (name, accuracy) in enumerate(series.items()):
        values = np.array([accuracy[s] for s in subjects])
        bars = ax.bar(np.arange(len(subjects)) + (k - (len(series) - 1) / 2) * width, values, width,
                      label=f"{name}: {values.mean():.1%} ± {values.std(ddof=1):.1%}")
        ax.axhline(values.mean(), color=bars.patches[0].get_facecolor(), lw=1, ls="--")
    ax.axhline(chance, color="black", lw=0.8, ls=":", label=f"chance baseline ({chance:.1%})")
    ax.set_xticks(range(len(subjects)), [str(s) for s in subjects])
    ax.set_xlabel("test subject")
    ax.set_ylabel("trial accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Per-subject trial accuracy (dashed: mean; legend: mean ± sample std over subjects)")
    ax.legend(fontsize=8, ncol=len(series) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return _save(fig, path)


def confusion_figure(matrix: np.ndarray, classes: tuple[str, ...], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5.5), constrained_layout=True)
    ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(ax=ax, values_format=".2f", cmap="Blues",
                                                                       colorbar=True)
    ax.set_xlabel("predicted emotion")
    ax.set_ylabel("true emotion")
    ax.set_title("Confusion matrix (trials), normalized by true class (rows sum to 1)", fontsize=10)
    return _save(fig, path)


def tsne_figure(held_out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                probe: tuple[str, float, float, int] | None, seed: int, classes: tuple[str, ...], path: Path) -> Path:
    """t-SNE of test embeddings only: one panel per fold, its model's embeddings of its own test trials
    (models differ, so their spaces are never mixed). ``held_out[fold name]`` = (embeddings, labels,
    predicted); ``probe`` = (fold, subject-probe accuracy on that fold's training subjects' embeddings, the
    same probe on their normalized input features (trial means), number of training subjects), or None
    when the fold trained on one subject.

    Both probes can fall *below* chance: per-subject normalization centres each subject's windows on zero,
    so a trial the probe's cross-validation holds out lies opposite the mean of its subject's remaining
    trials, and is pushed towards the other subjects (on the synthetic data the inputs' probe scores 0 %).
    The input probe is the reference the embeddings' probe is read against, not chance alone."""
    columns = min(4, len(held_out))
    rows = -(-len(held_out) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows + 0.8), squeeze=False,
                             constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for ax, (s, (embeddings, labels, predicted)) in zip(axes.flat, held_out.items()):
        points = TSNE(n_components=2, perplexity=min(10.0, (len(labels) - 1) / 3), init="pca",
                      random_state=seed).fit_transform(embeddings)
        for c, name in enumerate(classes):
            for correct, marker in ((True, "o"), (False, "x")):
                chosen = (labels == c) & ((predicted == labels) == correct)
                ax.scatter(*points[chosen].T, s=16, marker=marker, color=colors(c),
                           label=name if correct else None)
        ax.set_title(f"{s}: {np.mean(predicted == labels):.0%} correct", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(held_out):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best", title="emotion (o right, x wrong)", title_fontsize=7)
    if probe is None:
        probe_line = "no subject-identity probe: the folds train on one subject"
    else:
        fold, accuracy, inputs, n_subjects = probe
        verdict = ("no subject identity detectable" if accuracy < 1.5 / n_subjects
                   else "subject identity remains")
        probe_line = (f"subject-identity probe on fold {fold}'s {n_subjects} training subjects: embeddings "
                      f"{accuracy:.1%}, normalized inputs {inputs:.1%}, chance {1 / n_subjects:.1%} — {verdict}\n"
                      "(read it against the inputs' probe: per-subject normalization puts a held-out trial opposite "
                      "its subject's other trials, so even the inputs score below chance)")
    fig.suptitle("t-SNE of each fold model's fused embeddings of its own test trials (never trained on)\n"
                 + probe_line, fontsize=10)
    return _save(fig, path)
