"""``params.yaml`` as typed, validated settings. A bad value stops with one line naming the key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .seedv import N_SUBJECTS

ALL_SUBJECTS = list(range(1, N_SUBJECTS + 1))


class ParamsError(ValueError):
    pass


@dataclass
class Data:
    raw_dir: str = "data/raw/synthetic"
    subjects: list[int] = field(default_factory=lambda: list(ALL_SUBJECTS))
    nan_policy: str = "error"  # error | impute


@dataclass
class Synthetic:
    seed: int = 0
    subjects: int = N_SUBJECTS


@dataclass
class Normalize:
    scope: str = "subject"  # subject | session | none


@dataclass
class CV:
    subjects: list[int] = field(default_factory=lambda: list(ALL_SUBJECTS))
    protocol: str = "crop"  # crop | trial
    crop_windows: int = 12


@dataclass
class Model:
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    modalities: list[str] = field(default_factory=lambda: ["eeg", "eye"])
    positional_encoding: bool = True
    feature_importance: bool = True
    cross_attention: bool = True
    self_attention: bool = True
    global_pooling: bool = True   # off: the last valid window's representation instead of the masked mean
    domain_adaptation: bool = True
    mlp_head: bool = True         # off: a single linear layer


@dataclass
class Train:
    epochs: int = 20
    batch_size: int = 32
    crops_per_trial: int = 2
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    grad_clip: float = 1.0
    domain_weight: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class Mlflow:
    experiment: str = "seedv-cross-modal"
    register_best: bool = False   # evaluate registers the best fold's model under the experiment name


@dataclass
class Params:
    data: Data = field(default_factory=Data)
    synthetic: Synthetic = field(default_factory=Synthetic)
    normalize: Normalize = field(default_factory=Normalize)
    cv: CV = field(default_factory=CV)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    mlflow: Mlflow = field(default_factory=Mlflow)

    def flat(self) -> dict[str, object]:
        """``{"model.heads": 4, ...}`` for logging."""
        return {f"{section}.{key}": value for section, values in asdict(self).items()
                for key, value in values.items()}


def _coerce(where: str, value, default):
    """Check ``value`` against the type of the default; ints are accepted where floats are expected."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, type(default[0])) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamsError(f"{where}: {value!r} should be of type {type(default).__name__}")
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ParamsError(message)


def validate(p: Params) -> Params:
    subjects = set(ALL_SUBJECTS)
    _check(p.data.nan_policy in ("error", "impute"), "data.nan_policy: must be 'error' or 'impute'")
    _check(bool(p.data.subjects) and set(p.data.subjects) <= subjects and len(set(p.data.subjects))
           == len(p.data.subjects), "data.subjects: distinct subjects from 1..16")
    _check(1 <= p.synthetic.subjects <= N_SUBJECTS, "synthetic.subjects: between 1 and 16")
    _check(p.normalize.scope in ("subject", "session", "none"),
           "normalize.scope: must be 'subject', 'session' or 'none'")
    _check(bool(p.cv.subjects) and set(p.cv.subjects) <= set(p.data.subjects),
           "cv.subjects: held-out subjects must be among data.subjects")
    _check(len(p.data.subjects) >= 2, "data.subjects: at least 2 (one held out, the others to train on)")
    _check(p.cv.protocol in ("crop", "trial"), "cv.protocol: must be 'crop' or 'trial'")
    _check(p.cv.crop_windows >= 1, "cv.crop_windows: at least 1")
    m = p.model
    _check(m.d_model > 0 and m.heads > 0 and m.d_model % m.heads == 0,
           f"model.d_model ({m.d_model}) must be a positive multiple of model.heads ({m.heads})")
    _check(m.layers >= 1 and m.d_ff >= 1, "model.layers and model.d_ff: at least 1")
    _check(0.0 <= m.dropout < 1.0, "model.dropout: in [0, 1)")
    _check(bool(m.modalities) and set(m.modalities) <= {"eeg", "eye"}
           and len(set(m.modalities)) == len(m.modalities), "model.modalities: a non-empty subset of [eeg, eye]")
    _check(m.d_model % 2 == 0 or not m.positional_encoding,
           "model.d_model: must be even for the sinusoidal positional encoding")
    t = p.train
    _check(t.epochs >= 1 and t.batch_size >= 1 and t.crops_per_trial >= 1,
           "train.epochs, train.batch_size, train.crops_per_trial: at least 1")
    _check(t.lr > 0 and t.weight_decay >= 0 and t.grad_clip > 0 and t.domain_weight >= 0,
           "train.lr and train.grad_clip must be > 0, weight_decay and domain_weight >= 0")
    _check(t.device in ("auto", "cpu", "cuda"), "train.device: must be 'auto', 'cpu' or 'cuda'")
    return p


def from_dict(raw: dict | None, source: str = "params.yaml") -> Params:
    raw = raw or {}
    sections = {}
    for f in fields(Params):
        given = raw.get(f.name) or {}
        default = f.default_factory()
        if not isinstance(given, dict):
            raise ParamsError(f"{source}: {f.name}: should be a mapping")
        unknown = set(given) - {g.name for g in fields(default)}
        if unknown:
            raise ParamsError(f"{source}: {f.name}.{sorted(unknown)[0]}: unknown key")
        values = {key: _coerce(f"{source}: {f.name}.{key}", value, getattr(default, key))
                  for key, value in given.items()}
        sections[f.name] = type(default)(**{**asdict(default), **values})
    unknown = set(raw) - {f.name for f in fields(Params)}
    if unknown:
        raise ParamsError(f"{source}: {sorted(unknown)[0]}: unknown section")
    try:
        return validate(Params(**sections))
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None


def load(path: Path | str = "params.yaml") -> Params:
    with open(path) as fh:
        return from_dict(yaml.safe_load(fh), str(path))
