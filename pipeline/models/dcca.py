"""Deep canonical correlation analysis fusion (``model.name: dcca``): the dataset authors' multimodal model.

Liu et al. (IEEE TCDS 2021; SEED-V subject-dependent 3-fold: 85.3 %) transform each modality with its own
network, trained so that the two outputs are maximally correlated (deep CCA, Andrew et al. 2013), fuse the
transformed features by a weighted sum and classify them with an SVM. Here, per 4-s window:

    z_eeg = f_eeg(eeg), z_eye = f_eye(eye)          (dcca.hidden units, two sigmoid layers, dcca.outputs out)
    fused = w z_eeg + (1 - w) z_eye                  (w = dcca.eeg_weight)
    decision = LinearSVC(fused)                      (C from the candidates dcca.C)

The networks minimize cca-zoo's ``CCALoss`` (minus the sum of squared canonical correlations of a batch)
over batches of BATCH_WINDOWS training windows with AdamW (``train.lr``, ``train.weight_decay``,
``train.grad_clip``, cosine schedule over ``train.epochs``); with inner validation the epoch with the
lowest validation CCA loss is kept (label-free; early stopping after ``train.patience``), then the SVM is
fitted on the training windows' fused features and scored on the validation trials (that score chooses
``C``: each candidate trains the same networks from the same seed, so only the head differs). As for the
SVM model, a sequence's logits are the mean log-softmax of its windows' decision values.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from cca_zoo.deep.objectives import CCALoss
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn
from tqdm import tqdm

from ..datasets import Spec
from ..params import Params
from ..sequences import predict_windows
from . import Fit, FitData, Output, check_finite, masked_mean, selection_key, validation_scores
from .svm import MAX_ITER, linear_from, windows

BATCH_WINDOWS = 512   # windows per CCA batch: covariances of dcca.outputs components need many more samples
REG_COVAR = 1e-3      # ridge on each view's covariance (cca-zoo's reg_covar): keeps the whitening finite


def view_network(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """One modality's transform: (..., n_in) -> (..., n_out)."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Sigmoid(), nn.Linear(hidden, hidden), nn.Sigmoid(),
                         nn.Linear(hidden, n_out))


class DCCAFusion(nn.Module):
    """eeg (B, L, F_eeg), eye (B, L, F_eye), valid (B, L) -> Output(logits (B, C): the masked mean of each
    window's log-softmax decision, embedding (B, dcca.outputs): the masked mean of the fused features)."""

    def __init__(self, widths: dict[str, int], hidden: int, outputs: int, eeg_weight: float, n_classes: int):
        super().__init__()
        self.eeg, self.eye = view_network(widths["eeg"], hidden, outputs), view_network(widths["eye"], hidden, outputs)
        self.eeg_weight = eeg_weight
        self.head = nn.Linear(outputs, n_classes)

    def fuse(self, eeg: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
        return self.eeg_weight * self.eeg(eeg) + (1 - self.eeg_weight) * self.eye(eye)

    def forward(self, eeg, eye, valid, grl_alpha: float = 0.0, details: bool = False) -> Output:
        fused = self.fuse(eeg, eye)
        return Output(masked_mean(torch.log_softmax(self.head(fused), dim=-1), valid), masked_mean(fused, valid))


def build(params: Params, spec: Spec, n_domains: int) -> DCCAFusion:
    d = params.dcca
    return DCCAFusion(spec.widths, d.hidden, d.outputs, d.eeg_weight, spec.n_classes)


@dataclass(frozen=True)
class Candidate:
    C: float     # the SVM head's regularization


def candidates(params: Params) -> list[Candidate]:
    return [Candidate(c) for c in params.dcca.C]


def _views(trials, index: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(windows(trials, index, (m,))[0]).to(device) for m in ("eeg", "eye"))


@torch.no_grad()
def _cca_loss(model: DCCAFusion, loss: CCALoss, eeg: torch.Tensor, eye: torch.Tensor) -> float:
    return float(loss([model.eeg(eeg), model.eye(eye)]))


def fit(data: FitData, params: Params, candidate: Candidate, rng: np.random.Generator, device: torch.device,
        epochs: int, schedule_epochs: int | None = None, desc: str = "fit") -> Fit:
    """Train the two networks for up to ``epochs`` epochs of a ``schedule_epochs`` schedule, then the SVM
    head (C = ``candidate.C``) on the training windows' fused features."""
    tp, trials = params.train, data.trials
    eeg, eye = _views(trials, data.train_index, device)
    validation = _views(trials, data.validation_index, device) if len(data.validation_index) else None
    model = build(params, trials.spec, 0).to(device)
    loss_fn = CCALoss(reg_covar=REG_COVAR)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    epoch_steps = max(1, len(eeg) // BATCH_WINDOWS)      # full batches only: a CCA batch needs its size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=(schedule_epochs or epochs) * epoch_steps)

    curves, best, step = [], (math.inf, 0, None), 0     # (validation CCA loss, epoch, weights)
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None):
        model.train()
        order = torch.from_numpy(rng.permutation(len(eeg))[:epoch_steps * BATCH_WINDOWS]).to(device)
        step_losses = []
        for batch in order.view(epoch_steps, -1):
            loss = loss_fn([model.eeg(eeg[batch]), model.eye(eye[batch])])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            optimizer.step()
            scheduler.step()
            step_losses.append(loss.detach())
            step += 1
        check_finite(model, torch.stack(step_losses), step - len(step_losses) + 1, epoch, desc, tp)
        row = {"epoch": epoch, "loss": float(torch.stack(step_losses).mean()), "lr": scheduler.get_last_lr()[0],
               "val_cca_loss": math.nan, "val_loss": math.nan, "val_accuracy": math.nan, "val_f1": math.nan}
        if validation is not None:
            row["val_cca_loss"] = _cca_loss(model.eval(), loss_fn, *validation)
            if row["val_cca_loss"] < best[0]:
                best = (row["val_cca_loss"], epoch, copy.deepcopy(model.state_dict()))
        curves.append(row)
        if validation is not None and tp.patience and epoch - best[1] >= tp.patience:
            break
    chosen = len(curves)
    if best[2] is not None:
        model.load_state_dict(best[2])
        chosen = best[1]

    model.eval()
    with torch.no_grad():
        fused = model.fuse(eeg, eye).cpu().numpy().astype(np.float64)
    labels = np.repeat(trials.labels[data.train_index], trials.lengths[data.train_index])
    scaler = StandardScaler().fit(fused)
    svm = LinearSVC(C=candidate.C, dual=False, max_iter=MAX_ITER, random_state=int(rng.integers(2**31)))
    svm.fit(scaler.transform(fused), labels)
    weight, bias = linear_from(scaler, svm, trials.spec.n_classes)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    score = (math.inf, math.inf)
    if validation is not None:
        row = curves[chosen - 1]
        row.update(validation_scores(predict_windows(model, trials, data.validation_index, params.cv.input,
                                                     params.cv.crop_windows, device)))
        score = selection_key(row, tp.select_by)
    return Fit(model, curves, chosen, score)
