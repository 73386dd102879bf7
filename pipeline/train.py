"""Training of one fold: model selection on the fold's training part only, then prediction of its test part
(folds: :mod:`pipeline.splits`; models: :mod:`pipeline.models`; inputs and inference: :mod:`pipeline.sequences`).

Model selection (nested), every choice made from the fold's *training* part: with ``train.validation`` =
k > 0, k groups of it (drawn from the fold's seed; :func:`pipeline.splits.inner_split`: training subjects
under the subject-level splits, k trials per class within a subject) are held back as inner validation.
For every candidate setting of the model (the transformer's: each combination of the candidate lists
``train.input_noise`` × ``train.label_smoothing``) a model trains on the rest, with early stopping after
``train.patience`` epochs without improvement (0: train every epoch), and its epoch with the best
inner-validation trial-level score (``train.select_by``: macro-F1, ties broken by the loss, or the loss)
is its chosen epoch; the candidate whose chosen epoch scores best is the fold's choice (ties: the earlier
candidate). Then either that checkpoint is tested, or (``train.refit``) a model is retrained with the
chosen setting on the whole training part up to the chosen epoch, on the *selection run's* schedule (the
cosine learning rate and the gradient-reversal ramp are defined over ``train.epochs`` epochs, so the refit
stops at the same point of both schedules as the checkpoint it replaces; only its steps per epoch differ,
having more data). The test part is used for nothing but the final predictions.
With k = 0 the last epoch's model of the first candidate is tested, as the original did.

Every training of a fold starts from the fold's seed (the same initial weights and the same draws for
each candidate: a paired comparison), so a candidate's run does not depend on which others are listed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import models
from .models import FitData, device_facts, resolve_device
from .params import Params, ParamsError
from .sequences import Trials, predict_windows
from .splits import Fold, inner_split


@dataclass
class FoldResult:
    model: nn.Module
    curves: pd.DataFrame        # one row per epoch (inner-validation columns NaN without validation)
    predictions: pd.DataFrame   # one row per test window
    train_subjects: list[int]   # the subjects the tested model was fit on
    n_domains: int              # its adversarial branch's classes (0: none)
    selection: dict = field(default_factory=dict)   # chosen epoch, candidate and inner-validation groups
    device: dict = field(default_factory=dict)      # what it ran on (pipeline.models.device_facts)


def seed_everything(seed: int, key: tuple[int, ...]) -> np.random.Generator:
    """Seed torch and return the numpy generator of one training; both derive from (train.seed, *key), the
    fold's seed key (LOSO: the held-out subject)."""
    fold_seed = int(np.random.SeedSequence([seed, *key]).generate_state(1)[0])
    torch.manual_seed(fold_seed)
    torch.use_deterministic_algorithms(True)   # an op without a deterministic kernel raises, never warns
    return np.random.default_rng(fold_seed)


def fit_data(trials: Trials, train_keys, validation_keys, domain_by: str | None) -> FitData:
    """The trials of ``train_keys`` to fit on (with their domain classes: the distinct subjects, or
    sessions, among them, in order) and those of ``validation_keys`` to validate on."""
    keys = trials.keys()
    train_index = np.flatnonzero(np.isin(keys, np.asarray(train_keys, dtype=np.int64)))
    validation_index = np.flatnonzero(np.isin(keys, np.asarray(validation_keys, dtype=np.int64)))
    if domain_by is None:
        return FitData(trials, train_index, validation_index, None, 0)
    groups = (trials.subjects if domain_by == "subject" else trials.sessions)[train_index]
    classes, domains = np.unique(groups, return_inverse=True)
    return FitData(trials, train_index, validation_index, domains.astype(np.int64), len(classes))


def majority(values: list):
    """The most frequent value (ties: the one seen first), e.g. the folds' chosen candidates."""
    return Counter(values).most_common(1)[0][0]


def train_final(trials: Trials, params: Params, epochs: int, candidate,
                device: torch.device) -> tuple[nn.Module, list[int], int]:
    """One model on every trial of ``trials`` for ``epochs`` epochs of a ``train.epochs`` schedule (as a
    refit), with the ``candidate`` the folds chose (nothing held out, no validation), the subjects as
    domain classes; seeded with key (0,) so that it never shares a stream with a fold. Returns (model,
    subjects, n_domains)."""
    rng = seed_everything(params.train.seed, (0,))
    data = fit_data(trials, trials.keys(), (), "subject")
    fitted = models.load(params.model.name).fit(data, params, candidate, rng, device, epochs,
                                                schedule_epochs=params.train.epochs, desc="final")
    return fitted.model.cpu().eval(), sorted(set(trials.subjects.tolist())), data.n_domains


def check_folds(trials: Trials, folds: list[Fold]) -> None:
    """Raise ParamsError naming the subjects that ``folds`` train on (any trial) or test on (every trial)
    but the feature table lacks: found before any training starts, not by whichever fold fails first."""
    present = set(trials.keys().tolist())
    lacking = {int(k) >> 16 for fold in folds for k in fold.train if int(k) not in present}
    lacking |= {fold.subject for fold in folds if not present.intersection(map(int, fold.test))}
    if lacking:
        raise ParamsError(f"data.subjects: subject(s) {sorted(lacking)} are not (all) in the feature table — rerun "
                         "`dvc repro` to ingest them, or remove them from data.subjects and cv.subjects")


def train_fold(trials: Trials, fold: Fold, params: Params, device: torch.device | None = None) -> FoldResult:
    """Fit on ``fold``'s training part on ``device`` (default: ``train.device`` as this process resolves
    it), choosing the candidate setting and the epoch on its inner validation; then predict its test part."""
    module, tp = models.load(params.model.name), params.train
    device = device or resolve_device(tp.device)
    check_folds(trials, [fold])
    test_index = np.flatnonzero(fold.mask("test", trials))
    labels = dict(zip(trials.keys().tolist(), trials.labels.tolist()))
    inner, validation, validation_names = inner_split(fold, labels, tp.validation, tp.seed)
    selection_data = fit_data(trials, inner, validation, fold.domain_by)
    settings = module.candidates(params)
    runs = [module.fit(selection_data, params, candidate, seed_everything(tp.seed, fold.seed_key), device, tp.epochs,
                       desc=f"fold {fold.name}" + (f" candidate {k + 1}/{len(settings)}" if len(settings) > 1 else ""))
            for k, candidate in enumerate(settings)]
    best = min(range(len(runs)), key=lambda k: runs[k].score)   # ties: the earlier candidate
    chosen, fitted, data = settings[best], runs[best], selection_data
    if validation and tp.refit:   # the chosen recipe on the whole training part, to the chosen epoch
        data = fit_data(trials, fold.train, (), fold.domain_by)
        fitted = module.fit(data, params, chosen, seed_everything(tp.seed, fold.seed_key), device,
                            runs[best].chosen_epoch, schedule_epochs=tp.epochs, desc=f"fold {fold.name} refit")
    predictions = predict_windows(fitted.model, trials, test_index, params.cv.input, params.cv.crop_windows, device)
    selection = {"chosen_epoch": runs[best].chosen_epoch, "epochs_run": len(runs[best].curves),
                 "validation": validation_names, "domains": fold.domain_by if data.domains is not None else None,
                 "refit": bool(validation and tp.refit), **asdict(chosen)}
    if validation:   # every candidate's inner-validation score at its chosen epoch: why this one won
        selection["candidates"] = [{**asdict(c), "chosen_epoch": r.chosen_epoch, "epochs_run": len(r.curves),
                                    **{k: r.curves[r.chosen_epoch - 1][k] for k in ("val_f1", "val_loss")}}
                                   for c, r in zip(settings, runs)]
    train_subjects = sorted(set(trials.subjects[data.train_index].tolist()))
    return FoldResult(fitted.model, pd.DataFrame(runs[best].curves), predictions, train_subjects, data.n_domains,
                      selection, device_facts(device))
