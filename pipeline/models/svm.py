"""A linear SVM on the window features (``model.name: svm``): the dataset authors' unimodal baseline.

Liu et al. (IEEE TCDS 2021) report an SVM on DE features (EEG) and on eye-movement features; here it reads
``model.modalities`` (``[eeg]``, ``[eye]`` or both). scikit-learn's ``LinearSVC`` on standardized window
features, one-vs-rest, its ``C`` chosen per fold from the candidates ``svm.C`` by inner validation (no
epochs: ``chosen_epoch`` is 1). The fitted SVM becomes one ``nn.Linear`` (the standardization folded in),
so it is checkpointed, served and predicted like every model: a sequence's logits are the mean over its
valid windows of the log-softmax of the SVM's decision values (the way ``crop-logreg`` aggregates). The
softmax of margins is not a calibrated probability; trial predictions only use its argmax and ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn

from ..datasets import Spec
from ..params import Params
from ..sequences import predict_windows
from . import Fit, FitData, Output, masked_mean, selection_key, validation_scores

MAX_ITER = 5000        # liblinear iterations (primal: windows far outnumber features)
ABSENT_CLASS = -1e4    # decision value of a class no training window had


class WindowLinear(nn.Module):
    """A linear classifier of single windows. eeg (B, L, F_eeg), eye (B, L, F_eye), valid (B, L) ->
    Output(logits (B, C): the masked mean of each window's log-softmax, embedding (B, C): the mean decision
    values)."""

    def __init__(self, modalities: tuple[str, ...], widths: dict[str, int], n_classes: int):
        super().__init__()
        self.modalities = tuple(modalities)
        self.linear = nn.Linear(sum(widths[m] for m in self.modalities), n_classes)

    def forward(self, eeg, eye, valid, grl_alpha: float = 0.0, details: bool = False) -> Output:
        x = torch.cat([{"eeg": eeg, "eye": eye}[m] for m in self.modalities], dim=-1)
        decision = self.linear(x)
        return Output(masked_mean(torch.log_softmax(decision, dim=-1), valid), masked_mean(decision, valid))


def build(params: Params, spec: Spec, n_domains: int) -> WindowLinear:
    return WindowLinear(params.model.modalities, spec.widths, spec.n_classes)


@dataclass(frozen=True)
class Candidate:
    C: float     # the SVM's regularization (larger: less)


def candidates(params: Params) -> list[Candidate]:
    return [Candidate(c) for c in params.svm.C]


def windows(trials, index: np.ndarray, modalities) -> tuple[np.ndarray, np.ndarray]:
    """(W, F) features of every valid window of trials ``index`` (the modalities concatenated) and (W,)
    their trials' labels."""
    valid = np.arange(trials.eeg.shape[1])[None, :] < trials.lengths[index][:, None]
    x = np.concatenate([getattr(trials, m)[index][valid] for m in modalities], axis=1)
    return x, np.repeat(trials.labels[index], trials.lengths[index])


def linear_from(scaler: StandardScaler, svm: LinearSVC, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, F) weights and (C,) biases of the SVM on raw features: its standardization folded in, one row
    per class (a two-class SVM's single margin split into +/- halves; absent classes never win)."""
    coef, intercept = svm.coef_ / scaler.scale_, svm.intercept_ - (svm.coef_ / scaler.scale_) @ scaler.mean_
    if len(svm.classes_) == 2:
        coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, ABSENT_CLASS)
    weight[svm.classes_], bias[svm.classes_] = coef, intercept
    return weight, bias


def fit(data: FitData, params: Params, candidate: Candidate, rng: np.random.Generator, device: torch.device,
        epochs: int, schedule_epochs: int | None = None, desc: str = "fit") -> Fit:
    """Fit the SVM on the windows of ``data.train_index`` (``epochs`` is ignored: there are none) and
    score it on the inner-validation trials."""
    trials, modalities = data.trials, tuple(params.model.modalities)
    x, y = windows(trials, data.train_index, modalities)
    scaler = StandardScaler().fit(x)
    svm = LinearSVC(C=candidate.C, dual=False, max_iter=MAX_ITER, random_state=int(rng.integers(2**31)))
    svm.fit(scaler.transform(x), y)
    model = build(params, trials.spec, 0)
    weight, bias = linear_from(scaler, svm, trials.spec.n_classes)
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(weight))
        model.linear.bias.copy_(torch.from_numpy(bias))
    model = model.to(device).eval()
    row = {"epoch": 1, "train_accuracy": float(svm.score(scaler.transform(x), y)),
           "val_loss": math.nan, "val_accuracy": math.nan, "val_f1": math.nan}
    score = (math.inf, math.inf)
    if len(data.validation_index):
        row.update(validation_scores(predict_windows(model, trials, data.validation_index, params.cv.input,
                                                     params.cv.crop_windows, device)))
        score = selection_key(row, params.train.select_by)
    return Fit(model, [row], 1, score)
