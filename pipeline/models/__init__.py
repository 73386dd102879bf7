"""Models as parts: ``model.name`` picks a module of this package; each implements one contract.

A model module provides (see ``transformer.py``, ``dcca.py``, ``svm.py``; "Add your own model" in
docs/protocols.md shows a complete one in a page)::

    Candidate                      # frozen dataclass: one setting its inner validation chooses between
    candidates(params) -> list[Candidate]
    fit(data: FitData, params, candidate, rng, device, epochs, schedule_epochs=None, desc="fit") -> Fit
    build(params, spec, n_domains) -> nn.Module    # an untrained network of the shape fit returns

The fitted network is an ``nn.Module`` whose forward takes ``eeg (B, L, F_eeg), eye (B, L, F_eye),
valid (B, L)`` (``L`` windows of one sequence: a crop or a whole trial; ``valid`` False on padding) and
returns :class:`Output` with ``logits (B, C)`` for the sequence. Everything else is shared and never
knows which model it runs: folds and inner validation (:mod:`pipeline.train`), per-window predictions
(:mod:`pipeline.sequences`), checkpoints (:func:`save_checkpoint`), MLflow logging, serving and
prediction on recording tables and new files (:func:`pipeline.predict.predict_table`), and the figures
(those that need attention maps or feature-importance weights ask for ``details`` and draw what the
model returns).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

import pandas as pd

from ..datasets import Spec
from ..errors import UserError
from ..evaluate import classification_scores, log_probability_columns, n_classes, trial_predictions
from ..params import Params, ParamsError, Train, from_dict, training_bytes

MODELS = ("transformer", "dcca", "svm")   # model.name -> module of this package


def load(name: str):
    """The module of model ``name`` (``model.name``; imported here, so that the stages' code dependencies
    see every model module)."""
    from . import dcca, svm, transformer

    modules = {"transformer": transformer, "dcca": dcca, "svm": svm}
    if name not in modules:
        raise UserError(f"model.name: {name!r} is not one of {', '.join(MODELS)}")
    return modules[name]


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid windows. x (B, L, F), valid (B, L) -> (B, F)."""
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@dataclass
class Output:
    logits: torch.Tensor                       # (B, C) per sequence
    embedding: torch.Tensor                    # (B, E) the representation the classifier reads
    domain_logits: torch.Tensor | None = None  # (B, n_domains) when an adversarial branch exists
    details: dict = field(default_factory=dict)  # attention maps, feature weights, ... when asked for


@dataclass
class FitData:
    """What one training sees: the trials, which of them to fit on and which validate (indices into
    ``trials``), and each fitted trial's domain class (None: no adversarial branch)."""

    trials: object              # pipeline.sequences.Trials
    train_index: np.ndarray     # (N,) trials to fit on
    validation_index: np.ndarray  # (V,) inner-validation trials (empty: none)
    domains: np.ndarray | None  # (N,) domain class of each fitted trial, 0..n_domains-1
    n_domains: int


@dataclass
class Fit:
    model: nn.Module
    curves: list[dict]          # one row per epoch run (inner-validation columns NaN without validation)
    chosen_epoch: int           # the best inner-validation epoch (the last one run without validation)
    score: tuple                # its selection key (smaller is better; inf without validation)


def validation_scores(predictions: pd.DataFrame) -> dict[str, float]:
    """Trial-level loss (NLL of the softmax of each trial's mean window log-probability), accuracy and
    macro-F1 of inner-validation predictions."""
    trials = trial_predictions(predictions)
    log_p = trials[log_probability_columns(n_classes(predictions))].to_numpy()
    log_p = log_p - np.logaddexp.reduce(log_p, axis=1, keepdims=True)
    scores = classification_scores(trials["label"], trials["predicted"], log_p.shape[1])
    return {"val_loss": float(-log_p[np.arange(len(trials)), trials["label"].to_numpy()].mean()),
            "val_accuracy": scores["accuracy"], "val_f1": scores["f1_macro"]}


def selection_key(row: dict, select_by: str) -> tuple[float, float]:
    """Smaller is better: the inner-validation loss, or the macro-F1 (ties broken by the loss)."""
    return (row["val_loss"], 0.0) if select_by == "loss" else (-row["val_f1"], row["val_loss"])


CUBLAS_WORKSPACE = ":4096:8"   # cuBLAS's deterministic workspace setting (CUDA's reproducibility notes)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as seen by *this* process (a Ray worker resolves its own): ``auto`` is CUDA when
    this process sees a GPU. Before any CUDA work starts it sets ``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS reads
    it when its first handle is made), without which ``torch.use_deterministic_algorithms`` refuses cuBLAS."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device: cuda was asked for but torch sees no CUDA device — "
                          "use auto or cpu on this machine")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto"
                          else name)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    return device


def device_facts(device: torch.device) -> dict[str, object]:
    """What a training or inference ran on, recorded beside its results: the device, its precision and
    the software that sets the last bits (bit-identity holds for the same facts)."""
    from ..sequences import precision

    facts = {"type": device.type, "name": "cpu", "precision": precision(device), "torch": torch.__version__}
    if device.type == "cuda":
        facts.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version())
    return facts


def check_device_memory(params: Params, device: torch.device, share: float = 1.0) -> None:
    """Refuse (one line) a training whose step would not fit in ``share`` of the GPU's memory (a Ray task's
    ``compute.gpus_per_fold``): found before the first step, not as a CUDA out-of-memory error mid-fold."""
    if device.type != "cuda" or params.model.name != "transformer":   # the others are far smaller
        return
    properties = torch.cuda.get_device_properties(device)
    need, have = training_bytes(params), properties.total_memory * min(share, 1.0)
    if need > have:
        raise ParamsError(f"model, train.batch_size and cv.crop_windows: one training step needs about "
                          f"{need / 2**30:.1f} GiB, this fold's share of the {properties.name} is "
                          f"{have / 2**30:.1f} GiB — raise compute.gpus_per_fold (now {params.compute.gpus_per_fold:g})"
                          " or shrink train.batch_size")


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or the weights of a training became non-finite: the fold is a failure, never a score."""


def check_finite(model: nn.Module, step_losses: torch.Tensor, first_step: int, epoch: int, label: str,
                 tp: Train) -> None:
    """Raise :class:`TrainingDiverged` unless every one of the epoch's ``step_losses`` (steps, on the
    device) and every weight is finite; one host sync per epoch. ``first_step``: the epoch's first step
    number (from 1), ``label``: which training (``fold subject-3 candidate 2/2``, ``final``)."""
    weights_finite = torch.stack([torch.isfinite(w).all() for w in model.parameters()]).all()
    finite = torch.cat([torch.isfinite(step_losses), weights_finite[None]]).tolist()
    if all(finite):
        return
    bad = finite.index(False)
    what = (f"the training loss became {step_losses[bad].item()} at step {first_step + bad}" if bad < len(step_losses)
            else f"the weights became non-finite by step {first_step + len(step_losses) - 1}")
    raise TrainingDiverged(f"{label}: {what} (epoch {epoch}): the training diverged, so nothing of it is scored "
                           f"or written — lower train.lr (now {tp.lr:g}) or train.grad_clip (now {tp.grad_clip:g})")


# --- checkpoint format (model.pt) ---------------------------------------------------------------------


def save_checkpoint(path, model: nn.Module, params: Params, spec: Spec, train_subjects: list[int],
                    n_domains: int, fold: str | None) -> None:
    """What ``model.pt`` holds: the weights and everything needed to rebuild the network (params, the
    dataset spec, the domain classes). Written through a file object: given a path, torch names the archive
    inside after the file, and a temporary name of its own per process would make the same weights differ
    in bytes."""
    with open(path, "wb") as fh:
        torch.save({"state_dict": model.state_dict(), "params": asdict(params), "dataset": spec.facts(),
                    "train_subjects": list(train_subjects), "n_domains": n_domains, "fold": fold}, fh)


TRAINING_SECTIONS = ("data.dataset", "cv.", "model.", "train.", "dcca.", "svm.")   # the params a model is made
                                          # with (train's and final's in dvc.yaml): another change reruns neither


SEED_COUNT = ("train.seeds",)   # the kept model is train.seed's, exactly what one seed gives: final does not
                                # rerun when only the count changes, so its checkpoint may name another


def check_trained_with(params: Params, paths) -> None:
    """Refuse (one UserError line) when a checkpoint at ``paths`` was trained with other training params
    than ``params``: what is logged beside a model must be what made it, and params.yaml can change while a
    pipeline runs (an edit, or a second ``dvc exp run -S ...`` started in the same workspace)."""
    now = {k: v for k, v in params.flat().items() if k.startswith(TRAINING_SECTIONS) and k not in SEED_COUNT}
    for path in paths:
        then = from_dict(torch.load(path, map_location="cpu", weights_only=True)["params"], str(path)).flat()
        if changed := [k for k in now if now[k] != then[k]]:
            raise UserError(f"{path} was trained with {changed[0]} = {then[changed[0]]!r}, params.yaml now says "
                            f"{now[changed[0]]!r}: params.yaml changed during the run (another `dvc exp run` in "
                            "this workspace? queue experiments with `dvc exp run --queue`) — rerun `dvc repro`")


def load_checkpoint(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from its ``model.pt`` (weights only: no pickle is executed). A file that is not such
    a checkpoint is one UserError line; its params are validated (memory included) and its tensors' shapes
    compared with the network they describe, built on the meta device, before anything is allocated.
    Returns (network, checkpoint dict with ``spec``: the dataset's :class:`Spec`)."""
    fix = "give a model.pt written by this pipeline (data/final_model/model.pt, data/models/<fold>/model.pt)"
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as exc:   # a text file, a truncated zip, a pickle of other objects: torch raises many kinds
        raise UserError(f"{path}: not a model.pt checkpoint ({type(exc).__name__}) — {fix}") from None
    if not (isinstance(ckpt, dict) and {"state_dict", "params", "dataset", "train_subjects", "n_domains"} <= set(ckpt)
            and isinstance(ckpt["state_dict"], dict) and isinstance(ckpt["train_subjects"], list)
            and type(ckpt["n_domains"]) is int and 0 <= ckpt["n_domains"] <= 1024 and isinstance(ckpt["dataset"], dict)
            and all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())):
        raise UserError(f"{path}: a checkpoint of another format (no state_dict, params, dataset, train_subjects "
                        f"and n_domains) — {fix}")
    params = from_dict(ckpt["params"], str(path))
    try:
        spec = Spec.from_facts(ckpt["dataset"])
        spec.widths, spec.n_classes
    except Exception as exc:
        raise UserError(f"{path}: its dataset spec is unreadable ({type(exc).__name__}) — {fix}") from None
    module = load(params.model.name)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in module.build(params, spec, ckpt["n_domains"]).state_dict().items()}
    given = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if given != expected:
        missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        wrong = [k for k in sorted(set(expected) & set(given)) if expected[k] != given[k]]
        what = (f"tensor {missing[0]} missing" if missing else f"unexpected tensor {extra[0]}" if extra
                else f"tensor {wrong[0]} has shape {given[wrong[0]]}, its params give {expected[wrong[0]]}")
        raise UserError(f"{path}: weights do not fit the checkpoint's params ({what}) — {fix}")
    model = module.build(params, spec, ckpt["n_domains"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), {**ckpt, "spec": spec}
