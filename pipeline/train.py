"""Leave-one-subject-out training of one fold: the training loop, model selection on training subjects
only, then prediction of the held-out subject (protocols and inference: :mod:`pipeline.sequences`).

Model selection (nested LOSO), every choice made from the fold's *training* subjects: with
``train.validation_subjects`` = k > 0, k of them (drawn from the fold's seed; never the held-out one) are
held back as inner validation. For every candidate setting (each combination of the candidate lists
``train.input_noise`` × ``train.label_smoothing``) a model trains on the rest, with early stopping after
``train.patience`` epochs without improvement (0: train every epoch), and its epoch with the best
inner-validation trial-level score (``train.select_by``: macro-F1, ties broken by the loss, or the loss)
is its chosen epoch; the candidate whose chosen epoch scores best is the fold's choice (ties: the earlier
candidate). Then either that checkpoint is tested, or (``train.refit``) a model is retrained with the
chosen setting on all training subjects up to the chosen epoch, on the *selection run's* schedule (the
cosine learning rate and the gradient-reversal ramp are defined over ``train.epochs`` epochs, so the refit
stops at the same point of both schedules as the checkpoint it replaces; only its steps per epoch differ,
having more subjects). The held-out subject is used for nothing but the final predictions.
With k = 0 the last epoch's model of the first candidate is tested, as the original did.

Every training of a fold starts from the fold's seed (the same initial weights and the same draws for
each candidate: a paired comparison), so a candidate's run does not depend on which others are listed.
"""

from __future__ import annotations

import copy
from collections import Counter
import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from .errors import UserError
from .evaluate import LOG_PROBABILITY_COLUMNS, classification_scores, trial_predictions
from .model import CrossModalTransformer, grl_alpha
from .params import Params, ParamsError, Train
from .sequences import Batcher, Trials, autocast, predict_windows, sequences


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device: cuda was asked for but torch sees no CUDA device — "
                          "use auto or cpu on this machine")
    return torch.device(name)


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or the weights of a training became non-finite: the fold is a failure, never a score."""


def check_finite(model: nn.Module, step_losses: torch.Tensor, first_step: int, epoch: int, label: str,
                 tp: Train) -> None:
    """Raise :class:`TrainingDiverged` unless every one of the epoch's ``step_losses`` (steps, on the
    device) and every weight is finite; one host sync per epoch. ``first_step``: the epoch's first step
    number (from 1), ``label``: which training (``fold 3 candidate 2/2``, ``final``)."""
    weights_finite = torch.stack([torch.isfinite(w).all() for w in model.parameters()]).all()
    finite = torch.cat([torch.isfinite(step_losses), weights_finite[None]]).tolist()
    if all(finite):
        return
    bad = finite.index(False)
    what = (f"the training loss became {step_losses[bad].item()} at step {first_step + bad}" if bad < len(step_losses)
            else f"the weights became non-finite by step {first_step + len(step_losses) - 1}")
    raise TrainingDiverged(f"{label}: {what} (epoch {epoch}): the training diverged, so nothing of it is scored "
                           f"or written — lower train.lr (now {tp.lr:g}) or train.grad_clip (now {tp.grad_clip:g})")


@dataclass
class FoldResult:
    model: CrossModalTransformer
    curves: pd.DataFrame        # one row per epoch (inner-validation columns NaN without validation)
    predictions: pd.DataFrame   # one row per held-out window
    train_subjects: list[int]   # the subjects the tested model was fit on (its domain classes)
    selection: dict = field(default_factory=dict)   # chosen epoch and inner-validation subjects


@dataclass(frozen=True)
class Candidate:
    """One combination of the candidate-list settings, the regularizers a fold chooses between."""
    input_noise: float       # std of Gaussian noise on the z-scored training features
    label_smoothing: float   # of the emotion loss


def candidates(tp: Train) -> list[Candidate]:
    """Every combination of ``train.input_noise`` × ``train.label_smoothing``, in list order."""
    return [Candidate(*values) for values in itertools.product(tp.input_noise, tp.label_smoothing)]


def seed_everything(seed: int, held_out: int) -> np.random.Generator:
    """Seed torch and return the numpy generator for this fold; both derive from (train.seed, fold)."""
    fold_seed = int(np.random.SeedSequence([seed, held_out]).generate_state(1)[0])
    torch.manual_seed(fold_seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(fold_seed)


def validation_subjects(train_subjects: list[int], k: int, seed: int, held_out: int) -> list[int]:
    """The k inner-validation subjects of a fold, drawn from their own stream of the fold's seed (so the
    draw does not shift the training stream)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, held_out, 1]))
    return sorted(int(s) for s in rng.choice(train_subjects, size=k, replace=False)) if k else []


def validation_scores(predictions: pd.DataFrame) -> dict[str, float]:
    """Trial-level loss (NLL of the softmax of each trial's mean window log-probability), accuracy and
    macro-F1 of inner-validation predictions."""
    trials = trial_predictions(predictions)
    log_p = trials[LOG_PROBABILITY_COLUMNS].to_numpy()
    log_p = log_p - np.logaddexp.reduce(log_p, axis=1, keepdims=True)
    scores = classification_scores(trials["label"], trials["predicted"])
    return {"val_loss": float(-log_p[np.arange(len(trials)), trials["label"].to_numpy()].mean()),
            "val_accuracy": scores["accuracy"], "val_f1": scores["f1_macro"]}


def selection_key(row: dict, select_by: str) -> tuple[float, float]:
    """Smaller is better: the inner-validation loss, or the macro-F1 (ties broken by the loss)."""
    return (row["val_loss"], 0.0) if select_by == "loss" else (-row["val_f1"], row["val_loss"])


def steps_per_epoch(n_trials: int, params: Params) -> int:
    """Optimizer steps per epoch over ``n_trials`` training trials (``train.crops_per_trial`` crops each
    under ``crop``, one sequence each under ``trial``)."""
    per_epoch = n_trials * (params.train.crops_per_trial if params.cv.protocol == "crop" else 1)
    return math.ceil(per_epoch / params.train.batch_size)


def epoch_batches(lengths: np.ndarray, params: Params, rng: np.random.Generator, n_steps: int):
    """One epoch's training sequences, drawn from ``rng``: (N, L) positions, (N,) owners (trial numbers
    into ``lengths``) and ``n_steps`` shuffled batches of sequence indices."""
    cv = params.cv
    starts = [rng.integers(0, max(n - cv.crop_windows, 0) + 1, params.train.crops_per_trial) for n in lengths]
    positions, owners = sequences(lengths, cv.protocol, cv.crop_windows, starts)
    return positions, owners, np.array_split(rng.permutation(len(owners)), n_steps)


def train_step(model: CrossModalTransformer, optimizer: torch.optim.Optimizer, batch, labels: torch.Tensor,
               domains: torch.Tensor, alpha: float, tp: Train, candidate: Candidate) -> torch.Tensor:
    """One optimizer step on ``batch`` = (eeg (B, L, N_EEG), eye (B, L, N_EYE), valid (B, L)) with class
    ``labels`` (B,) and subject ``domains`` (B,), regularized as ``candidate`` says (Gaussian feature noise
    on the z-scored inputs, label smoothing). Returns the batch's summed (loss, class loss, domain loss,
    correct) as a float64 tensor on the device: nothing is read back to the host here."""
    eeg, eye, valid = batch
    noise = candidate.input_noise
    if noise:   # no draw at 0, so the dropout stream is that of an unregularized run
        eeg, eye = eeg + noise * torch.randn_like(eeg), eye + noise * torch.randn_like(eye)
    with autocast(eeg.device):
        out = model(eeg, eye, valid, grl_alpha=alpha)
        class_loss = nn.functional.cross_entropy(out.logits.float(), labels,
                                                 label_smoothing=candidate.label_smoothing)
        domain_loss = (nn.functional.cross_entropy(out.domain_logits.float(), domains)
                       if out.domain_logits is not None else torch.zeros((), device=eeg.device))
        loss = class_loss + tp.domain_weight * domain_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
    optimizer.step()
    correct = (out.logits.argmax(-1) == labels).sum()
    n = len(labels)
    return torch.stack([loss.detach().double() * n, class_loss.detach().double() * n,
                        domain_loss.detach().double() * n, correct.double()])


@dataclass
class Fit:
    model: CrossModalTransformer
    curves: list[dict]        # one row per epoch run
    chosen_epoch: int         # the best inner-validation epoch (the last one run without validation)
    score: tuple              # its selection key (smaller is better; inf without validation)


def fit(trials: Trials, subjects: list[int], params: Params, candidate: Candidate, rng: np.random.Generator,
        device: torch.device, epochs: int, validation: list[int] = (), schedule_epochs: int | None = None,
        desc: str = "fit") -> Fit:
    """Train a fresh model on ``subjects`` for up to ``epochs`` epochs with the regularizers of
    ``candidate``. The learning-rate and gradient-reversal schedules span ``schedule_epochs`` epochs
    (default ``epochs``): a refit that stops early follows the selection run's schedule. With ``validation``
    subjects the model of the best inner-validation epoch is returned."""
    cv, tp = params.cv, params.train
    train_index = np.flatnonzero(np.isin(trials.subjects, subjects))
    domain_of = {s: i for i, s in enumerate(subjects)}
    labels = torch.from_numpy(trials.labels[train_index]).to(device)
    domains = torch.tensor([domain_of[s] for s in trials.subjects[train_index]], device=device)
    lengths = trials.lengths[train_index]
    validation_index = np.flatnonzero(np.isin(trials.subjects, validation))

    model = CrossModalTransformer(params.model, n_subjects=len(subjects)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    epoch_steps = steps_per_epoch(len(lengths), params)
    total_steps = (schedule_epochs or epochs) * epoch_steps
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    batch_of = Batcher(trials, train_index, device)

    curves, step, best = [], 0, ((math.inf, math.inf), 0, None)   # (selection key, epoch, weights)
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None)
    for epoch in bar:
        model.train()
        positions, owners, batches = epoch_batches(lengths, params, rng, epoch_steps)
        sums = torch.zeros(4, dtype=torch.float64, device=device)   # loss, class, domain, correct
        step_losses = []
        for batch in batches:
            alpha = grl_alpha(step / max(total_steps - 1, 1))
            stats = train_step(model, optimizer, batch_of(positions[batch], owners[batch]), labels[owners[batch]],
                               domains[owners[batch]], alpha, tp, candidate)
            sums += stats
            step_losses.append(stats[0])
            scheduler.step()
            step += 1
        check_finite(model, torch.stack(step_losses), step - len(step_losses) + 1, epoch, desc, tp)
        loss, class_loss, domain_loss, correct = (sums / len(owners)).tolist()   # one host sync per epoch
        row = {"epoch": epoch, "loss": loss, "class_loss": class_loss, "domain_loss": domain_loss,
               "train_accuracy": correct, "lr": scheduler.get_last_lr()[0], "grl_alpha": alpha,
               "val_loss": math.nan, "val_accuracy": math.nan, "val_f1": math.nan}
        if len(validation_index):
            row.update(validation_scores(predict_windows(model, trials, validation_index, cv.protocol,
                                                         cv.crop_windows, device)))
            if selection_key(row, tp.select_by) < best[0]:
                best = (selection_key(row, tp.select_by), epoch, copy.deepcopy(model.state_dict()))
        curves.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.2f}")
        if len(validation_index) and tp.patience and epoch - best[1] >= tp.patience:
            break
    if best[2] is None:
        return Fit(model, curves, len(curves), best[0])
    model.load_state_dict(best[2])
    return Fit(model, curves, best[1], best[0])


def majority(values: list):
    """The most frequent value (ties: the one seen first), e.g. the folds' chosen candidates."""
    return Counter(values).most_common(1)[0][0]


def train_final(trials: Trials, params: Params, epochs: int, candidate: Candidate
                ) -> tuple[CrossModalTransformer, list[int]]:
    """One model on every subject of ``trials`` for ``epochs`` epochs of a ``train.epochs`` schedule (as a
    refit), with the ``candidate`` the folds chose (no held-out subject, no validation); seeded as fold 0
    so that it never shares a stream with a LOSO fold."""
    rng = seed_everything(params.train.seed, 0)
    subjects = sorted(set(trials.subjects.tolist()))
    fitted = fit(trials, subjects, params, candidate, rng, resolve_device(params.train.device), epochs,
                 schedule_epochs=params.train.epochs, desc="final")
    return fitted.model.cpu().eval(), subjects


def train_fold(trials: Trials, held_out: int, params: Params) -> FoldResult:
    """Fit on every subject but ``held_out`` (choosing the candidate setting and the epoch on
    inner-validation subjects), then predict the held-out subject's windows."""
    device = resolve_device(params.train.device)
    tp = params.train
    test_index = np.flatnonzero(trials.subjects == held_out)
    if len(test_index) == 0:
        raise ValueError(f"cv.subjects: subject {held_out} is not in the feature table")
    train_subjects = sorted(set(trials.subjects[trials.subjects != held_out].tolist()))
    validation = validation_subjects(train_subjects, tp.validation_subjects, tp.seed, held_out)
    inner = [s for s in train_subjects if s not in validation]
    if not inner:
        raise ValueError(f"train.validation_subjects: {tp.validation_subjects} inner-validation subjects leave no "
                         f"subject to train fold {held_out} on (the table has {len(train_subjects)} besides it)")
    settings = candidates(tp)
    runs = [fit(trials, inner, params, candidate, seed_everything(tp.seed, held_out), device, tp.epochs, validation,
                desc=f"fold {held_out}" + (f" candidate {k + 1}/{len(settings)}" if len(settings) > 1 else ""))
            for k, candidate in enumerate(settings)]
    best = min(range(len(runs)), key=lambda k: runs[k].score)   # ties: the earlier candidate
    chosen, fitted, fit_subjects = settings[best], runs[best], inner
    if validation and tp.refit:   # the chosen recipe on every training subject, to the chosen epoch
        fitted = fit(trials, train_subjects, params, chosen, seed_everything(tp.seed, held_out), device,
                     runs[best].chosen_epoch, schedule_epochs=tp.epochs, desc=f"fold {held_out} refit")
        fit_subjects = train_subjects
    predictions = predict_windows(fitted.model, trials, test_index, params.cv.protocol, params.cv.crop_windows,
                                  device)
    selection = {"chosen_epoch": runs[best].chosen_epoch, "epochs_run": len(runs[best].curves),
                 "validation_subjects": validation, "refit": bool(validation and tp.refit), **asdict(chosen)}
    if validation:   # every candidate's inner-validation score at its chosen epoch: why this one won
        selection["candidates"] = [{**asdict(c), "chosen_epoch": r.chosen_epoch, "epochs_run": len(r.curves),
                                    **{k: r.curves[r.chosen_epoch - 1][k] for k in ("val_f1", "val_loss")}}
                                   for c, r in zip(settings, runs)]
    return FoldResult(fitted.model, pd.DataFrame(runs[best].curves), predictions, fit_subjects, selection)
