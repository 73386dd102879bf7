"""The cross-modal transformer, read top to bottom: seven components, then the assembled model.

Shapes: B trials (or crops) in a batch, L windows per sequence, F features (N_EEG = 310 or N_EYE = 33),
D = ``d_model``. ``valid`` is a bool (B, L) mask, True for real windows; padding is masked everywhere
(feature-importance statistics, attention keys, pooling), so padding a sequence never changes its output.
Every component can be switched off from ``params.yaml`` for ablation (see :class:`CrossModalTransformer`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .params import Model as ModelParams
from .params import Params, from_dict
from .seedv import N_CLASSES, N_EEG, N_EYE

INPUT_FEATURES = {"eeg": N_EEG, "eye": N_EYE}


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid windows. x (B, L, F), valid (B, L) -> (B, F)."""
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) sinusoidal position codes: sin on even, cos on odd features."""
    position = torch.arange(length).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class PositionalEncoding(nn.Module):
    """1. Sinusoidal positional encoding over the window sequence. (B, L, D) -> (B, L, D), any L."""

    def __init__(self, d_model: int, max_len: int = 512):
        super().__init__()
        self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        table = self.table if length <= len(self.table) else sinusoid_table(length, x.shape[2]).to(x.device)
        return x + table[:length]


class FeatureImportance(nn.Module):
    """2. Feature Importance Module: an input-dependent sigmoid gate per input feature.

    The gate is computed from the masked mean of the sequence, so it is one weight per feature and
    sequence, interpretable as channel x band (EEG) or eye-feature importance.
    x (B, L, F), valid (B, L) -> gated x (B, L, F), weights (B, F) in (0, 1).
    """

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, n_features))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.sigmoid(self.gate(masked_mean(x, valid)))
        return x * weights.unsqueeze(1), weights


class CrossModalAttention(nn.Module):
    """3. Bidirectional cross-modal attention with residual + LayerNorm.

    EEG queries attend to eye keys/values and eye queries to EEG keys/values (same windows, same mask).
    eeg, eye (B, L, D), valid (B, L) -> eeg', eye' (B, L, D), attention maps eeg->eye and eye->eeg
    (B, L, L), averaged over heads; each query row sums to 1 over valid keys.
    """

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.eeg_to_eye = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.eye_to_eeg = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_eeg = nn.LayerNorm(d_model)
        self.norm_eye = nn.LayerNorm(d_model)

    def forward(self, eeg, eye, valid):
        padding = ~valid
        eeg_attended, eeg_map = self.eeg_to_eye(eeg, eye, eye, key_padding_mask=padding)
        eye_attended, eye_map = self.eye_to_eeg(eye, eeg, eeg, key_padding_mask=padding)
        return (self.norm_eeg(eeg + eeg_attended), self.norm_eye(eye + eye_attended), eeg_map, eye_map)


class SelfAttentionEncoder(nn.Module):
    """4. Per-modality Transformer encoder (intra-modal temporal dynamics). (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, heads: int, layers: int, d_ff: int, dropout: float):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout, activation="gelu", batch_first=True)
        # No nested-tensor fast path: it would make padded and unpadded inputs take different kernels.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, src_key_padding_mask=~valid)


class GlobalPooling(nn.Module):
    """5. Masked mean over valid windows (or, switched off, the last valid window). (B, L, D) -> (B, D)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            return masked_mean(x, valid)
        last = valid.long().sum(1).clamp(min=1) - 1
        return x[torch.arange(len(x), device=x.device), last]


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.alpha * grad, None


def grl_alpha(progress: float) -> float:
    """GRL coefficient schedule alpha = 2 / (1 + exp(-10 p)) - 1, p = training progress in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainClassifier(nn.Module):
    """6. Gradient reversal + subject classifier over the training subjects. (B, E) -> (B, n_subjects).

    Forward is the identity into an MLP; backward multiplies the gradient by -alpha, so the features
    are pushed to carry no subject identity.
    """

    def __init__(self, in_features: int, hidden: int, n_subjects: int):
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, n_subjects))

    def forward(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        return self.classifier(_ReverseGradient.apply(x, alpha))


class ClassificationHead(nn.Module):
    """7. MLP with GELU (or, switched off, one linear layer). (B, E) -> (B, 5) logits."""

    def __init__(self, in_features: int, hidden: int, dropout: float, mlp: bool = True):
        super().__init__()
        self.net = (nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, N_CLASSES))
                    if mlp else nn.Linear(in_features, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Output:
    logits: torch.Tensor                       # (B, 5)
    embedding: torch.Tensor                    # (B, E) fused representation
    domain_logits: torch.Tensor | None = None  # (B, n_subjects) when domain adaptation is on
    details: dict = field(default_factory=dict)  # FIM weights and attention maps, when asked for


class CrossModalTransformer(nn.Module):
    """The assembled model.

    eeg (B, L, N_EEG), eye (B, L, N_EYE), valid (B, L) -> :class:`Output`. With one modality in
    ``params.modalities`` only that branch exists (and cross-attention does not apply); the other input
    is ignored. ``n_subjects`` is the number of *training* subjects (domain classes); there are no
    per-subject parameters, so a held-out subject runs through exactly the same network.
    """

    def __init__(self, params: ModelParams, n_subjects: int):
        super().__init__()
        self.params = params
        d, self.modalities = params.d_model, tuple(params.modalities)
        self.fim = nn.ModuleDict({m: FeatureImportance(INPUT_FEATURES[m], d) for m in self.modalities}
                                 if params.feature_importance else {})
        self.project = nn.ModuleDict({m: nn.Linear(INPUT_FEATURES[m], d) for m in self.modalities})
        self.position = PositionalEncoding(d) if params.positional_encoding else None
        self.dropout = nn.Dropout(params.dropout)
        self.cross = (CrossModalAttention(d, params.heads, params.dropout)
                      if params.cross_attention and len(self.modalities) == 2 else None)
        self.encoders = nn.ModuleDict(
            {m: SelfAttentionEncoder(d, params.heads, params.layers, params.d_ff, params.dropout)
             for m in self.modalities} if params.self_attention else {})
        self.pool = GlobalPooling(params.global_pooling)
        fused = d * len(self.modalities)
        self.domain = DomainClassifier(fused, d, n_subjects) if params.domain_adaptation else None
        self.head = ClassificationHead(fused, d, params.dropout, mlp=params.mlp_head)

    def forward(self, eeg: torch.Tensor, eye: torch.Tensor, valid: torch.Tensor, grl_alpha: float = 0.0,
                details: bool = False) -> Output:
        inputs, extra = {"eeg": eeg, "eye": eye}, {}
        streams = {}
        for m in self.modalities:
            x = inputs[m]
            if m in self.fim:
                x, extra[f"fim_{m}"] = self.fim[m](x, valid)
            x = self.project[m](x)
            if self.position is not None:
                x = self.position(x)
            streams[m] = self.dropout(x)
        if self.cross is not None:
            streams["eeg"], streams["eye"], extra["attn_eeg_to_eye"], extra["attn_eye_to_eeg"] = self.cross(
                streams["eeg"], streams["eye"], valid)
        for m in self.encoders:
            streams[m] = self.encoders[m](streams[m], valid)
        embedding = torch.cat([self.pool(streams[m], valid) for m in self.modalities], dim=-1)
        domain = self.domain(embedding, grl_alpha) if self.domain is not None else None
        return Output(self.head(embedding), embedding, domain, extra if details else {})


# The serving input: one float tensor (B, L, SERVING_WIDTH) = EEG features, eye features, then the
# valid-window mask (1 real, 0 padding) as the last channel.
SERVING_EEG = slice(0, N_EEG)
SERVING_EYE = slice(N_EEG, N_EEG + N_EYE)
SERVING_MASK = N_EEG + N_EYE
SERVING_WIDTH = N_EEG + N_EYE + 1


def serving_example(batch: int, length: int) -> np.ndarray:
    """A valid all-zero serving input (B, L, SERVING_WIDTH): every window marked real."""
    example = np.zeros((batch, length, SERVING_WIDTH), dtype=np.float32)
    example[..., SERVING_MASK] = 1.0
    return example


class PackedInput(nn.Module):
    """One-tensor wrapper for serving (MLflow pyfunc): x (B, L, SERVING_WIDTH) -> probabilities (B, 5)."""

    def __init__(self, model: CrossModalTransformer):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eeg, eye, valid = x[..., SERVING_EEG], x[..., SERVING_EYE], x[..., SERVING_MASK] > 0.5
        return torch.softmax(self.model(eeg, eye, valid).logits, dim=-1)


# --- checkpoint format (model.pt) ---------------------------------------------------------------------


def save_checkpoint(path, model: CrossModalTransformer, params: Params, train_subjects: list[int],
                    held_out: int | None) -> None:
    """What ``model.pt`` holds: the weights and everything needed to rebuild the network. Written through
    a file object: given a path, torch names the archive inside after the file, and a temporary name of
    its own per process would make the same weights differ in bytes."""
    with open(path, "wb") as fh:
        torch.save({"state_dict": model.state_dict(), "params": asdict(params),
                    "train_subjects": list(train_subjects), "held_out": held_out}, fh)


TRAINING_SECTIONS = ("cv.", "model.", "train.")   # the params a model is made with (train's and final's in
                                                  # dvc.yaml): another change reruns neither, so it may differ


def check_trained_with(params: Params, paths) -> None:
    """Refuse (one UserError line) when a checkpoint at ``paths`` was trained with other ``cv``, ``model``
    or ``train`` params than ``params``: what is logged beside a model must be what made it, and
    params.yaml can change while a pipeline runs (an edit, or a second ``dvc exp run -S ...`` started in
    the same workspace)."""
    now = {k: v for k, v in params.flat().items() if k.startswith(TRAINING_SECTIONS)}
    for path in paths:
        then = from_dict(torch.load(path, map_location="cpu", weights_only=True)["params"], str(path)).flat()
        if changed := [k for k in now if now[k] != then[k]]:
            raise UserError(f"{path} was trained with {changed[0]} = {then[changed[0]]!r}, params.yaml now says "
                            f"{now[changed[0]]!r}: params.yaml changed during the run (another `dvc exp run` in "
                            "this workspace? queue experiments with `dvc exp run --queue`) — rerun `dvc repro`")


def load_checkpoint(path, map_location="cpu") -> tuple[CrossModalTransformer, dict]:
    """Rebuild a model from its ``model.pt`` (weights only: no pickle is executed). A file that is not such
    a checkpoint is one UserError line; its params are validated (memory included) and its tensors' shapes
    compared with the network they describe, built on the meta device, before anything is allocated."""
    fix = "give a model.pt written by this pipeline (data/final_model/model.pt, data/models/<subject>/model.pt)"
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as exc:   # a text file, a truncated zip, a pickle of other objects: torch raises many kinds
        raise UserError(f"{path}: not a model.pt checkpoint ({type(exc).__name__}) — {fix}") from None
    if not (isinstance(ckpt, dict) and {"state_dict", "params", "train_subjects"} <= set(ckpt)
            and isinstance(ckpt["state_dict"], dict) and isinstance(ckpt["train_subjects"], list)
            and all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())):
        raise UserError(f"{path}: a checkpoint of another format (no state_dict, params and train_subjects) — {fix}")
    params = from_dict(ckpt["params"], str(path))
    n_subjects = len(ckpt["train_subjects"])
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CrossModalTransformer(params.model, n_subjects).state_dict().items()}
    given = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if given != expected:
        missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        wrong = [k for k in sorted(set(expected) & set(given)) if expected[k] != given[k]]
        what = (f"tensor {missing[0]} missing" if missing else f"unexpected tensor {extra[0]}" if extra
                else f"tensor {wrong[0]} has shape {given[wrong[0]]}, its params give {expected[wrong[0]]}")
        raise UserError(f"{path}: weights do not fit the checkpoint's params ({what}) — {fix}")
    model = CrossModalTransformer(params.model, n_subjects)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
