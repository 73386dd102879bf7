"""Leave-one-subject-out training of one fold: protocols, the training loop, prediction.

Protocols (``cv.protocol``):

- ``trial``: one sequence per trial, zero-padded to the longest in the batch and masked, as the seed
  did. The number of valid windows identifies the clip, so a model can learn length.
- ``crop``: fixed-length crops of ``cv.crop_windows`` windows. Training draws ``train.crops_per_trial``
  random crops per trial and epoch; testing uses every sliding crop. A trial shorter than the crop is
  tiled cyclically (its windows repeated in order) to the crop length, so every input has exactly
  ``crop_windows`` valid windows and no padding: the input length carries no information about the clip.

Per-window output: each window's log-probabilities are the mean over the sequences (crops, or the whole
trial) that contain it; trial predictions are made from these by :mod:`pipeline.evaluate`.
Model selection never looks at the held-out subject: the last epoch's model is tested, as the original did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from .features import EEG_COLUMNS, EYE_COLUMNS
from .model import N_CLASSES, CrossModalTransformer, grl_alpha
from .params import Params, ParamsError

PROBABILITY_COLUMNS = [f"p_{c}" for c in range(N_CLASSES)]


@dataclass
class Trials:
    """Every trial of a feature table as padded arrays (T trials, up to Lmax windows)."""

    eeg: np.ndarray       # (T, Lmax, 310) float32, zero-padded
    eye: np.ndarray       # (T, Lmax, 33) float32, zero-padded
    lengths: np.ndarray   # (T,) windows per trial
    labels: np.ndarray    # (T,)
    subjects: np.ndarray  # (T,)
    sessions: np.ndarray  # (T,)
    trials: np.ndarray    # (T,) trial 0..14 within the session

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "Trials":
        frame = frame.sort_values(["subject", "session", "trial", "window"], kind="stable")
        keys = frame[["subject", "session", "trial"]].to_numpy()
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
        lengths = np.diff(np.r_[starts, len(frame)])
        trial_of_row = np.repeat(np.arange(len(starts)), lengths)
        window_of_row = np.arange(len(frame)) - np.repeat(starts, lengths)
        padded = {}
        for name, columns in (("eeg", EEG_COLUMNS), ("eye", EYE_COLUMNS)):
            array = np.zeros((len(starts), lengths.max(), len(columns)), dtype=np.float32)
            array[trial_of_row, window_of_row] = frame[list(columns)].to_numpy(np.float32)
            padded[name] = array
        first = frame.iloc[starts]
        return cls(padded["eeg"], padded["eye"], lengths, first["label"].to_numpy(np.int64),
                   first["subject"].to_numpy(np.int64), first["session"].to_numpy(np.int64),
                   first["trial"].to_numpy(np.int64))


def sequences(lengths: np.ndarray, protocol: str, crop: int, starts: list[np.ndarray] | None = None):
    """Window-index rows for a list of trials: (N, L) positions and (N,) trial numbers (0-based into
    ``lengths``). ``starts`` gives the crop starts per trial (crop protocol); padding positions are -1."""
    rows, owners = [], []
    for i, n in enumerate(lengths):
        if protocol == "trial":
            rows.append(np.arange(n))
            owners.append(i)
            continue
        for start in starts[i]:
            rows.append((start + np.arange(crop)) % n)   # cyclic tiling only when n < crop
            owners.append(i)
    width = max(len(r) for r in rows)
    positions = np.full((len(rows), width), -1, dtype=np.int64)
    for k, r in enumerate(rows):
        positions[k, : len(r)] = r
    return positions, np.asarray(owners, dtype=np.int64)


def sliding_starts(n: int, crop: int) -> np.ndarray:
    return np.arange(max(n - crop, 0) + 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device: cuda was asked for but torch sees no CUDA device — "
                          "use auto or cpu on this machine")
    return torch.device(name)


class _Batcher:
    """Holds one subject set's trial arrays on the device and gathers padded batches from index rows."""

    def __init__(self, trials: Trials, index: np.ndarray, device: torch.device):
        self.eeg = torch.from_numpy(trials.eeg[index]).to(device)
        self.eye = torch.from_numpy(trials.eye[index]).to(device)
        self.device = device

    def __call__(self, positions: np.ndarray, owners: np.ndarray):
        pos = torch.from_numpy(positions).to(self.device)
        own = torch.from_numpy(owners).to(self.device).unsqueeze(1)
        valid = pos >= 0
        pos = pos.clamp(min=0)
        return self.eeg[own, pos], self.eye[own, pos], valid


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
    batch_of = _Batcher(trials, train_index, device)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
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
            with amp:
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

    predictions = predict_windows(model, trials, test_index, params, device)
    return FoldResult(model, pd.DataFrame(curves), predictions, train_subjects)


@torch.no_grad()
def predict_windows(model: CrossModalTransformer, trials: Trials, index: np.ndarray, params: Params,
                    device: torch.device, batch_size: int = 256) -> pd.DataFrame:
    """Per-window class probabilities for the trials ``index``: each window gets the softmax of the mean
    log-probability over the sequences (sliding crops, or the whole trial) that contain it."""
    model.eval()
    lengths = trials.lengths[index]
    crop = params.cv.crop_windows
    positions, owners = sequences(lengths, params.cv.protocol, crop, [sliding_starts(n, crop) for n in lengths])
    batch_of = _Batcher(trials, index, device)
    log_probs = []
    for batch in np.array_split(np.arange(len(owners)), math.ceil(len(owners) / batch_size)):
        eeg, eye, valid = batch_of(positions[batch], owners[batch])
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(eeg, eye, valid).logits
        log_probs.append(torch.log_softmax(logits.float(), dim=-1).cpu().numpy())
    log_probs = np.concatenate(log_probs).astype(np.float64)

    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    rows = np.where(positions >= 0, offsets[owners][:, None] + positions, -1)
    totals = np.zeros((lengths.sum(), N_CLASSES))
    counts = np.zeros(lengths.sum())
    for k in range(positions.shape[1]):
        hit = rows[:, k] >= 0
        np.add.at(totals, rows[hit, k], log_probs[hit])
        np.add.at(counts, rows[hit, k], 1)
    mean_log_prob = totals / counts[:, None]
    probs = np.exp(mean_log_prob - mean_log_prob.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)

    owner = np.repeat(np.arange(len(index)), lengths)
    out = pd.DataFrame({
        "subject": trials.subjects[index][owner].astype(np.int8),
        "session": trials.sessions[index][owner].astype(np.int8),
        "trial": trials.trials[index][owner].astype(np.int8),
        "window": np.concatenate([np.arange(n) for n in lengths]).astype(np.int16),
        "label": trials.labels[index][owner].astype(np.int8),
    })
    for c in range(N_CLASSES):
        out[PROBABILITY_COLUMNS[c]] = probs[:, c].astype(np.float32)
    return out


def checkpoint(result: FoldResult, params: Params, held_out: int) -> dict:
    """What ``model.pt`` holds: the weights and everything needed to rebuild the network."""
    return {"state_dict": result.model.state_dict(), "params": asdict(params),
            "train_subjects": result.train_subjects, "held_out": held_out}


def load_model(path, map_location="cpu") -> tuple[CrossModalTransformer, dict]:
    """Rebuild a fold's model from its ``model.pt``."""
    from .params import from_dict

    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    params = from_dict(ckpt["params"], str(path))
    model = CrossModalTransformer(params.model, n_subjects=len(ckpt["train_subjects"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
