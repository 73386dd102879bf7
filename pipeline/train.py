"""Leave-one-subject-out training of one fold: the training loop, then prediction of the held-out
subject (protocols and inference: :mod:`pipeline.sequences`).

Model selection never looks at the held-out subject: the last epoch's model is tested, as the original did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from .model import CrossModalTransformer, grl_alpha
from .params import Params, ParamsError
from .sequences import Batcher, Trials, autocast, predict_windows, sequences


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device: cuda was asked for but torch sees no CUDA device — "
                          "use auto or cpu on this machine")
    return torch.device(name)


@dataclass
class FoldResult:
    model: CrossModalTransformer
    curves: pd.DataFrame        # one row per epoch
    predictions: pd.DataFrame   # one row per held-out window
    train_subjects: list[int]


def seed_everything(seed: int, held_out: int) -> np.random.Generator:
    """Seed torch and return the numpy generator for this fold; both derive from (train.seed, fold)."""
    fold_seed = int(np.random.SeedSequence([seed, held_out]).generate_state(1)[0])
    torch.manual_seed(fold_seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(fold_seed)


def train_fold(trials: Trials, held_out: int, params: Params,
               on_epoch: Callable[[dict], None] | None = None) -> FoldResult:
    """Fit on every subject but ``held_out``, then predict the held-out subject's windows."""
    rng = seed_everything(params.train.seed, held_out)
    device = resolve_device(params.train.device)
    cv, tp = params.cv, params.train
    train_index = np.flatnonzero(trials.subjects != held_out)
    test_index = np.flatnonzero(trials.subjects == held_out)
    if len(test_index) == 0:
        raise ValueError(f"cv.subjects: subject {held_out} is not in the feature table")
    train_subjects = sorted(set(trials.subjects[train_index].tolist()))
    domain_of = {s: i for i, s in enumerate(train_subjects)}
    labels = torch.from_numpy(trials.labels[train_index]).to(device)
    domains = torch.tensor([domain_of[s] for s in trials.subjects[train_index]], device=device)
    lengths = trials.lengths[train_index]

    model = CrossModalTransformer(params.model, n_subjects=len(train_subjects)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    per_epoch = len(lengths) * (tp.crops_per_trial if cv.protocol == "crop" else 1)
    steps_per_epoch = math.ceil(per_epoch / tp.batch_size)
    total_steps = tp.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    batch_of = Batcher(trials, train_index, device)
    loss_fn = nn.CrossEntropyLoss()

    curves, step = [], 0
    bar = tqdm(range(1, tp.epochs + 1), desc=f"fold {held_out}", unit="epoch", disable=None)
    for epoch in bar:
        model.train()
        starts = [rng.integers(0, max(n - cv.crop_windows, 0) + 1, tp.crops_per_trial) for n in lengths]
        positions, owners = sequences(lengths, cv.protocol, cv.crop_windows, starts)
        order = rng.permutation(len(owners))
        sums = dict(loss=0.0, class_loss=0.0, domain_loss=0.0, correct=0.0, alpha=0.0)
        for batch in np.array_split(order, steps_per_epoch):
            alpha = grl_alpha(step / max(total_steps - 1, 1))
            eeg, eye, valid = batch_of(positions[batch], owners[batch])
            with autocast(device):
                out = model(eeg, eye, valid, grl_alpha=alpha)
                class_loss = loss_fn(out.logits.float(), labels[owners[batch]])
                domain_loss = (loss_fn(out.domain_logits.float(), domains[owners[batch]])
                               if out.domain_logits is not None else torch.zeros((), device=device))
                loss = class_loss + tp.domain_weight * domain_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n = len(batch)
            sums["loss"] += loss.item() * n
            sums["class_loss"] += class_loss.item() * n
            sums["domain_loss"] += domain_loss.item() * n
            sums["correct"] += (out.logits.argmax(-1) == labels[owners[batch]]).sum().item()
            sums["alpha"] = alpha
        row = {"epoch": epoch, "loss": sums["loss"] / len(order), "class_loss": sums["class_loss"] / len(order),
               "domain_loss": sums["domain_loss"] / len(order), "train_accuracy": sums["correct"] / len(order),
               "lr": scheduler.get_last_lr()[0], "grl_alpha": sums["alpha"]}
        curves.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.2f}")
        if on_epoch:
            on_epoch(row)

    predictions = predict_windows(model, trials, test_index, cv.protocol, cv.crop_windows, device)
    return FoldResult(model, pd.DataFrame(curves), predictions, train_subjects)
