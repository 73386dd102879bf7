"""The cross-modal transformer (``model.name: transformer``), read top to bottom: seven components, the
assembled model, then how one is trained.

Shapes: B trials (or crops) in a batch, L windows per sequence, F features (the dataset's widths: SEED-V
310 EEG and 33 eye), C classes, D = ``d_model``. ``valid`` is a bool (B, L) mask, True for real windows; padding is masked everywhere
(feature-importance statistics, attention keys, pooling), so padding a sequence never changes its output.
Every component can be switched off from ``params.yaml`` for ablation (see :class:`CrossModalTransformer`).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..datasets import Spec
from ..params import Model as ModelParams
from ..params import Params, Train
from ..sequences import Batcher, autocast, predict_windows, sequences, to_device
from . import Fit, FitData, Output, check_finite, masked_mean, selection_key, validation_scores


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
        ctx.save_for_backward(alpha)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        alpha, = ctx.saved_tensors
        return -alpha * grad, None


def grl_alpha(progress: float) -> float:
    """GRL coefficient schedule alpha = 2 / (1 + exp(-10 p)) - 1, p = training progress in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainClassifier(nn.Module):
    """6. Gradient reversal + subject classifier over the training subjects. (B, E) -> (B, n_subjects).

    Forward is the identity into an MLP; backward multiplies the gradient by -alpha, so the features
    are pushed to carry no subject identity. ``alpha`` is a 0-d tensor (a float is wrapped): a value that
    changes every step would make ``torch.compile`` recompile every step.
    """

    def __init__(self, in_features: int, hidden: int, n_subjects: int):
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, n_subjects))

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        if not isinstance(alpha, torch.Tensor):
            alpha = x.new_full((), alpha, dtype=torch.float32)   # a fill on the device, no host copy
        return self.classifier(_ReverseGradient.apply(x, alpha))


class ClassificationHead(nn.Module):
    """7. MLP with GELU (or, switched off, one linear layer). (B, E) -> (B, C) logits."""

    def __init__(self, in_features: int, hidden: int, dropout: float, n_classes: int, mlp: bool = True):
        super().__init__()
        self.net = (nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_classes))
                    if mlp else nn.Linear(in_features, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossModalTransformer(nn.Module):
    """The assembled model.

    eeg (B, L, F_eeg), eye (B, L, F_eye), valid (B, L) -> :class:`Output`. With one modality in
    ``params.modalities`` only that branch exists (and cross-attention does not apply); the other input
    is ignored. ``widths``: features per window of each modality; ``n_domains``: the classes of the
    adversarial branch, the fold's *training* subjects (or sessions; 0: no branch); there are no
    per-subject parameters, so a held-out subject runs through exactly the same network.
    """

    def __init__(self, params: ModelParams, widths: dict[str, int], n_classes: int, n_domains: int):
        super().__init__()
        self.params = params
        d, self.modalities = params.d_model, tuple(params.modalities)
        self.fim = nn.ModuleDict({m: FeatureImportance(widths[m], d) for m in self.modalities}
                                 if params.feature_importance else {})
        self.project = nn.ModuleDict({m: nn.Linear(widths[m], d) for m in self.modalities})
        self.position = PositionalEncoding(d) if params.positional_encoding else None
        self.dropout = nn.Dropout(params.dropout)
        self.cross = (CrossModalAttention(d, params.heads, params.dropout)
                      if params.cross_attention and len(self.modalities) == 2 else None)
        self.encoders = nn.ModuleDict(
            {m: SelfAttentionEncoder(d, params.heads, params.layers, params.d_ff, params.dropout)
             for m in self.modalities} if params.self_attention else {})
        self.pool = GlobalPooling(params.global_pooling)
        fused = d * len(self.modalities)
        self.domain = DomainClassifier(fused, d, n_domains) if params.domain_adaptation and n_domains else None
        self.head = ClassificationHead(fused, d, params.dropout, n_classes, mlp=params.mlp_head)

    def forward(self, eeg: torch.Tensor, eye: torch.Tensor, valid: torch.Tensor, grl_alpha: torch.Tensor | float = 0.0,
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




def build(params: Params, spec: Spec, n_domains: int) -> CrossModalTransformer:
    return CrossModalTransformer(params.model, spec.widths, spec.n_classes, n_domains)


# --- training ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One combination of the candidate-list settings, the regularizers a fold chooses between."""
    input_noise: float       # std of Gaussian noise on the z-scored training features
    label_smoothing: float   # of the emotion loss


def candidates(params: Params) -> list[Candidate]:
    """Every combination of ``train.input_noise`` × ``train.label_smoothing``, in list order."""
    tp = params.train
    return [Candidate(*values) for values in itertools.product(tp.input_noise, tp.label_smoothing)]


def steps_per_epoch(n_trials: int, params: Params) -> int:
    """Optimizer steps per epoch over ``n_trials`` training trials (``train.crops_per_trial`` crops each
    under ``crop``, one sequence each under ``trial``)."""
    per_epoch = n_trials * (params.train.crops_per_trial if params.cv.input == "crop" else 1)
    return math.ceil(per_epoch / params.train.batch_size)


def epoch_batches(lengths: np.ndarray, params: Params, rng: np.random.Generator, n_steps: int):
    """One epoch's training sequences, drawn from ``rng``: (N, L) positions, (N,) owners (trial numbers
    into ``lengths``) and ``n_steps`` shuffled batches of sequence indices."""
    cv = params.cv
    starts = [rng.integers(0, max(n - cv.crop_windows, 0) + 1, params.train.crops_per_trial) for n in lengths]
    positions, owners = sequences(lengths, cv.input, cv.crop_windows, starts)
    return positions, owners, np.array_split(rng.permutation(len(owners)), n_steps)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, labels: torch.Tensor,
               domains: torch.Tensor | None, alpha: torch.Tensor, tp: Train, candidate: Candidate) -> torch.Tensor:
    """One optimizer step of ``model`` (a :class:`CrossModalTransformer`, or it compiled) on ``batch`` =
    (eeg (B, L, F_eeg), eye (B, L, F_eye), valid (B, L)) with class ``labels`` (B,) and domain classes
    ``domains`` (B,), all on the device, and the 0-d GRL coefficient ``alpha``; regularized as ``candidate``
    says (Gaussian feature noise on the z-scored inputs, label smoothing). Returns the batch's summed (loss,
    class loss, domain loss, correct) as a float64 tensor on the device: nothing waits for the host here."""
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


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Per-step learning rate: cosine annealing over ``total_steps``, after ``warmup_steps`` of linear warmup
    (from lr / (warmup + 1)) when asked for: a post-LN transformer of the original's size wants warmup."""
    warmup = min(warmup_steps, total_steps - 1)
    if not warmup:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup)], milestones=[warmup])


def fit(data: FitData, params: Params, candidate: Candidate, rng: np.random.Generator, device: torch.device,
        epochs: int, schedule_epochs: int | None = None, desc: str = "fit") -> Fit:
    """Train a fresh model on ``data.train_index`` for up to ``epochs`` epochs with the regularizers of
    ``candidate``. The learning-rate and gradient-reversal schedules span ``schedule_epochs`` epochs
    (default ``epochs``): a refit that stops early follows the selection run's schedule. With validation
    trials the model of the best inner-validation epoch is returned (early stopping after
    ``train.patience`` epochs without improvement).

    Host syncs: one per epoch (the epoch's losses, the finiteness check) plus one per inner validation (its
    summed log-probabilities); an epoch's sequences are staged on the device once, and every batch, label
    and domain is gathered there."""
    cv, tp, trials = params.cv, params.train, data.trials
    train_index, validation_index = data.train_index, data.validation_index
    labels = to_device(trials.labels[train_index], device)
    domains = to_device(data.domains, device) if data.domains is not None else None
    lengths = trials.lengths[train_index]

    model = build(params, trials.spec, data.n_domains if data.domains is not None else 0).to(device)
    step_model = torch.compile(model) if tp.compile else model   # shares model's parameters
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    epoch_steps = steps_per_epoch(len(lengths), params)
    total_steps = (schedule_epochs or epochs) * epoch_steps
    scheduler = lr_schedule(optimizer, total_steps, tp.warmup_steps)
    alpha_values = [grl_alpha(s / max(total_steps - 1, 1))        # past the schedule's end (a refit told to
                    for s in range(max(epochs * epoch_steps, total_steps))]   # run longer) the ramp goes on
    alphas = to_device(np.asarray(alpha_values, dtype=np.float32), device)
    batch_of = Batcher(trials, train_index, device)
    validation_batcher = Batcher(trials, validation_index, device) if len(validation_index) else None

    curves, step, best = [], 0, ((math.inf, math.inf), 0, None)   # (selection key, epoch, weights)
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None)
    for epoch in bar:
        model.train()
        positions, owners, batches = epoch_batches(lengths, params, rng, epoch_steps)
        order = np.concatenate(batches)
        positions_on, owners_on = to_device(positions[order], device), to_device(owners[order], device)
        bounds = np.cumsum([0] + [len(b) for b in batches])
        sums = torch.zeros(4, dtype=torch.float64, device=device)   # loss, class, domain, correct
        step_losses = []
        for batch in map(slice, bounds[:-1], bounds[1:]):
            own = owners_on[batch]
            stats = train_step(step_model, optimizer, batch_of(positions_on[batch], own), labels[own],
                               domains[own] if domains is not None else None, alphas[step], tp, candidate)
            sums += stats
            step_losses.append(stats[0])
            scheduler.step()
            step += 1
        check_finite(model, torch.stack(step_losses), step - len(step_losses) + 1, epoch, desc, tp)
        loss, class_loss, domain_loss, correct = (sums / len(owners)).tolist()   # one host sync per epoch
        row = {"epoch": epoch, "loss": loss, "class_loss": class_loss, "domain_loss": domain_loss,
               "train_accuracy": correct, "lr": scheduler.get_last_lr()[0], "grl_alpha": alpha_values[step - 1],
               "val_loss": math.nan, "val_accuracy": math.nan, "val_f1": math.nan}
        if validation_batcher is not None:
            row.update(validation_scores(predict_windows(model, trials, validation_index, cv.input,
                                                         cv.crop_windows, device, validation_batcher)))
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
