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


class Batcher:
    """Holds one subject set's trial arrays on the device and gathers padded batches from index rows."""

    def __init__(self, trials: Trials, index: np.ndarray, device: torch.device):
        self.eeg = torch.from_numpy(trials.eeg[index]).to(device)
        self.eye = torch.from_numpy(trials.eye[index]).to(device)
        self.device = device

    def __call__(self, positions: np.ndarray, owners: np.ndarray):
        """(N, L) positions, (N,) owners -> eeg (N, L, F_eeg), eye (N, L, F_eye), valid (N, L)."""
        pos = torch.from_numpy(positions).to(self.device)
        own = torch.from_numpy(owners).to(self.device).unsqueeze(1)
        valid = pos >= 0
        pos = pos.clamp(min=0)
        return self.eeg[own, pos], self.eye[own, pos], valid


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA; a no-op on CPU (float32 there, bit-reproducible)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def run_sequences(model: torch.nn.Module, trials: Trials, index: np.ndarray, cv_input: str, crop: int,
                  device: torch.device = torch.device("cpu"), batch_size: int = 256, details: bool = False):
    """Run the model over the test sequences of trials ``index``, in batches; yield (owners (N,) = trial
    number within ``index``, window positions (N, L), model Output)."""
    model.eval()
    positions, owners = test_sequences(trials.lengths[index], cv_input, crop)
    batch_of = Batcher(trials, index, device)
    for batch in np.array_split(np.arange(len(owners)), math.ceil(len(owners) / batch_size)):
        with autocast(device):
            out = model(*batch_of(positions[batch], owners[batch]), details=details)
        yield owners[batch], positions[batch], out


def predict_windows(model: torch.nn.Module, trials: Trials, index: np.ndarray, cv_input: str, crop: int,
                    device: torch.device = torch.device("cpu")) -> pd.DataFrame:
    """Per-window class probabilities for the trials ``index``: each window gets the softmax of the mean
    log-probability over the sequences (sliding crops, or the whole trial) that contain it."""
    lengths = trials.lengths[index]
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    totals = np.zeros((lengths.sum(), trials.spec.n_classes))
    counts = np.zeros(lengths.sum())
    for owners, positions, out in run_sequences(model, trials, index, cv_input, crop, device):
        log_probs = torch.log_softmax(out.logits.float(), dim=-1).cpu().numpy().astype(np.float64)
        rows = np.where(positions >= 0, offsets[owners][:, None] + positions, -1)
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
    for c, column in enumerate(trials.spec.probability_columns):
        out[column] = probs[:, c].astype(np.float32)
    return out
