"""Trials as model inputs: padded trial arrays, the sequences each input kind makes of them, batches
gathered on the device, and batched inference. Training, prediction and interpretability all use it.

Input kinds (``cv.input``):

- ``trial``: one sequence per trial, zero-padded to the longest in the batch and masked, as the seed
  did. The number of valid windows identifies the clip, so a model can learn length.
- ``crop``: fixed-length crops of ``cv.crop_windows`` windows. Training draws ``train.crops_per_trial``
  random crops per trial and epoch; testing uses every sliding crop. A trial shorter than the crop is
  tiled cyclically (its windows repeated in order) to the crop length, so every input has exactly
  ``crop_windows`` valid windows and no padding: the input length carries no information about the clip.

Per-window output: each window's log-probabilities are the mean over the sequences (crops, or the whole
trial) that contain it; trial predictions are made from these by :mod:`pipeline.evaluate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .datasets import Spec


@dataclass
class Trials:
    """Every trial of a feature table as padded arrays (T trials, up to Lmax windows)."""

    eeg: np.ndarray       # (T, Lmax, widths["eeg"]) float32, zero-padded
    eye: np.ndarray       # (T, Lmax, widths["eye"]) float32, zero-padded
    lengths: np.ndarray   # (T,) windows per trial
    labels: np.ndarray    # (T,)
    subjects: np.ndarray  # (T,)
    sessions: np.ndarray  # (T,)
    trials: np.ndarray    # (T,) trial 0.. within the session
    spec: Spec

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, spec: Spec) -> "Trials":
        frame = frame.sort_values(["subject", "session", "trial", "window"], kind="stable")
        keys = frame[["subject", "session", "trial"]].to_numpy()
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
        lengths = np.diff(np.r_[starts, len(frame)])
        trial_of_row = np.repeat(np.arange(len(starts)), lengths)
        window_of_row = np.arange(len(frame)) - np.repeat(starts, lengths)
        padded = {}
        for name, columns in spec.columns.items():
            array = np.zeros((len(starts), lengths.max(), len(columns)), dtype=np.float32)
            array[trial_of_row, window_of_row] = frame[list(columns)].to_numpy(np.float32)
            padded[name] = array
        first = frame.iloc[starts]
        return cls(padded["eeg"], padded["eye"], lengths, first["label"].to_numpy(np.int64),
                   first["subject"].to_numpy(np.int64), first["session"].to_numpy(np.int64),
                   first["trial"].to_numpy(np.int64), spec)

    def keys(self) -> np.ndarray:
        """(T,) the trial key of each trial (:func:`pipeline.splits.trial_keys`)."""
        from .splits import trial_keys
        return trial_keys(self.subjects, self.sessions, self.trials)


def sequences(lengths: np.ndarray, cv_input: str, crop: int, starts: list[np.ndarray] | None = None):
    """Window-index rows for a list of trials: (N, L) positions and (N,) trial numbers (0-based into
    ``lengths``). ``starts`` gives the crop starts per trial (crop input); padding positions are -1."""
    rows, owners = [], []
    for i, n in enumerate(lengths):
        if cv_input == "trial":
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


def test_sequences(lengths: np.ndarray, cv_input: str, crop: int):
    """The sequences a trained model is tested on: every sliding crop, or each whole trial."""
    return sequences(lengths, cv_input, crop, [sliding_starts(n, crop) for n in lengths])


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device`` with no host sync: on CUDA pinned, then copied asynchronously
    (the caching host allocator keeps the pinned buffer until the copy is done); on CPU the array itself."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


class Batcher:
    """Holds one subject set's trial arrays on the device and gathers padded batches from index rows that
    are on the device too, so gathering a batch never waits for the host."""

    def __init__(self, trials: Trials, index: np.ndarray, device: torch.device):
        self.eeg = to_device(trials.eeg[index], device)
        self.eye = to_device(trials.eye[index], device)
        self.device = device

    def __call__(self, positions: torch.Tensor, owners: torch.Tensor):
        """(N, L) positions (-1: padding), (N,) owners, int64 on the device -> eeg (N, L, F_eeg),
        eye (N, L, F_eye), valid (N, L)."""
        valid = positions >= 0
        positions, owners = positions.clamp(min=0), owners.unsqueeze(1)
        return self.eeg[owners, positions], self.eye[owners, positions], valid


def precision(device: torch.device) -> str:
    """The training and inference precision on ``device``: bf16 autocast on a CUDA GPU that supports it
    (Ampere and newer), else fp32 (CPU: bit-reproducible)."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"


def autocast(device: torch.device):
    """bfloat16 autocast where :func:`precision` says bf16; a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision(device) == "bf16")


@torch.no_grad()
def run_sequences(model: torch.nn.Module, trials: Trials, index: np.ndarray, cv_input: str, crop: int,
                  device: torch.device = torch.device("cpu"), batch_size: int = 256, details: bool = False,
                  batcher: Batcher | None = None):
    """Run the model over the test sequences of trials ``index``, in batches; yield (batch (slice into the
    sequences), owners (N,) = trial number within ``index``, window positions (N, L), model Output).
    ``batcher``: the trials ``index`` already on the device (a training's inner validation, every epoch)."""
    model.eval()
    positions, owners = test_sequences(trials.lengths[index], cv_input, crop)
    batch_of = batcher or Batcher(trials, index, device)
    positions_on, owners_on = to_device(positions, device), to_device(owners, device)   # staged once
    bounds = np.cumsum([0] + [len(b) for b in np.array_split(owners, math.ceil(len(owners) / batch_size))])
    for batch in map(slice, bounds[:-1], bounds[1:]):   # near-equal batches: their sizes set the last bits
        with autocast(device):
            out = model(*batch_of(positions_on[batch], owners_on[batch]), details=details)
        yield batch, owners[batch], positions[batch], out


def predict_windows(model: torch.nn.Module, trials: Trials, index: np.ndarray, cv_input: str, crop: int,
                    device: torch.device = torch.device("cpu"), batcher: Batcher | None = None) -> pd.DataFrame:
    """Per-window class probabilities for the trials ``index``: each window gets the softmax of the mean
    log-probability over the sequences (sliding crops, or the whole trial) that contain it. The sums stay on
    the device until all batches are done: one read back per call."""
    lengths = trials.lengths[index]
    offsets, n_windows = np.r_[0, np.cumsum(lengths)[:-1]], int(lengths.sum())
    positions, owners = test_sequences(lengths, cv_input, crop)
    rows = np.where(positions >= 0, offsets[owners][:, None] + positions, n_windows)   # padding: a scratch row
    counts = np.bincount(rows.ravel(), minlength=n_windows + 1)[:n_windows]
    rows_on = to_device(rows, device)
    totals = torch.zeros(n_windows + 1, trials.spec.n_classes, dtype=torch.float64, device=device)
    for batch, _, _, out in run_sequences(model, trials, index, cv_input, crop, device, batcher=batcher):
        log_probs = torch.log_softmax(out.logits.float(), dim=-1).double()
        for column in rows_on[batch].T:   # a window appears at most once per column (but the scratch row)
            totals[column] += log_probs
    mean_log_prob = totals[:n_windows].cpu().numpy() / counts[:, None]
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
    for c, column in enumerate(trials.spec.probability_columns):
        out[column] = probs[:, c].astype(np.float32)
    return out
