"""``params.yaml`` as typed, validated settings; ``params.yaml`` itself is the only place defaults live.

Everything is checked before a stage does any work: every section and key present (no section replaced
by a scalar, nothing silently defaulted), no unknown or duplicate key, exact types (a bool is not an
int), every number finite and in range, and the YAML itself parsed without anchors/aliases (a few
hundred bytes of aliases can expand to gigabytes). A bad value stops with one line naming the key.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path


from .errors import UserError
from . import datasets
from .datasets import DATASETS, MAX_SUBJECT

MAX_WINDOWS_PER_TRIAL = 10_000   # 4-s windows: 11 hours (every reader refuses longer trials)


class ParamsError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Data:
    dataset: str     # a module of pipeline/datasets (DATASETS)
    raw_dir: str
    subjects: list[int]
    nan_policy: str


@dataclass(frozen=True)
class Synthetic:
    seed: int
    subjects: int
    drift: float     # slow within-session trend (0: none, the data bit-identical to before it existed)


@dataclass(frozen=True)
class Normalize:
    scope: str


@dataclass(frozen=True)
class CV:
    split: str           # loso | subject-dependent | cross-session | loso-unseen-clips (pipeline/splits.py)
    subjects: list[int]  # test subjects: every fold tests one of them
    input: str           # crop | trial: what one model input is (pipeline/sequences.py)
    crop_windows: int


@dataclass(frozen=True)
class Model:
    name: str                # transformer | dcca | svm: a module of pipeline/models; the keys below are the
    d_model: int             # transformer's, except modalities (every model's inputs)
    heads: int
    layers: int
    d_ff: int
    dropout: float
    modalities: list[str]
    positional_encoding: bool
    feature_importance: bool
    cross_attention: bool
    self_attention: bool
    global_pooling: bool
    domain_adaptation: bool
    mlp_head: bool


@dataclass(frozen=True)
class Dcca:
    hidden: int            # units of each per-modality network's hidden layers
    outputs: int           # canonical components per modality
    eeg_weight: float      # fused = eeg_weight x EEG projection + (1 - eeg_weight) x eye projection
    C: list[float]         # candidates: the linear-SVM head's regularization


@dataclass(frozen=True)
class Svm:
    C: list[float]         # candidates: the linear SVM's regularization


@dataclass(frozen=True)
class Train:
    epochs: int
    batch_size: int
    crops_per_trial: int
    lr: float
    weight_decay: float
    grad_clip: float
    label_smoothing: list[float]   # candidates: cross-entropy label smoothing of the emotion loss
    input_noise: list[float]   # candidates: std of Gaussian noise added to the z-scored training features
    domain_weight: float
    seed: int
    seeds: int                 # training seeds per fold: seed, seed + 1, ... (extra ones only for variance)
    device: str
    validation: int            # inner-validation groups per fold (0: no model selection, last epoch): training
                               # subjects (subject-level splits) or trial blocks (within-subject splits)
    patience: int              # early stopping: epochs without inner-validation improvement (0: never)
    select_by: str             # f1 | loss: the inner-validation score that chooses the epoch
    refit: bool                # retrain on all training subjects for the chosen epochs
    warmup_steps: int          # linear learning-rate warmup before the cosine schedule (0: none)
    compile: bool              # torch.compile the training step (once per training, not per step)


@dataclass(frozen=True)
class Compute:
    threads_per_fold: int    # torch CPU threads per fold: changes the last bits, so train tracks it
    gpus_per_fold: float     # GPU share per fold on CUDA (0.25: 4 folds per GPU): only concurrency
    cpus: int                # CPUs a private local Ray may use (0: Ray's own, container-aware count)


@dataclass(frozen=True)
class Mlflow:
    experiment: str   # also the registry name of the final model


@dataclass(frozen=True)
class Params:
    data: Data
    synthetic: Synthetic
    normalize: Normalize
    cv: CV
    model: Model
    dcca: Dcca
    svm: Svm
    train: Train
    compute: Compute
    mlflow: Mlflow

    def flat(self) -> dict[str, object]:
        """``{"model.heads": 4, ...}`` for logging."""
        return {f"{section}.{key}": value for section, values in asdict(self).items()
                for key, value in values.items()}


MAX_CANDIDATES = 8     # per candidate-list setting: each candidate is one more training per fold
SEED_MAX = 2**32 - 1   # numpy's SeedSequence entropy words
# Closed ranges for every number (min, max); None: unbounded on that side. Generous, but finite: a value
# outside them is a typo or an attack, not an experiment.
RANGES = {
    "synthetic.seed": (0, SEED_MAX), "synthetic.subjects": (1, MAX_SUBJECT), "synthetic.drift": (0.0, 100.0),
    "cv.crop_windows": (1, MAX_WINDOWS_PER_TRIAL),
    "model.d_model": (2, 4096), "model.heads": (1, 64), "model.layers": (1, 48), "model.d_ff": (1, 65536),
    "model.dropout": (0.0, 0.95),
    "dcca.hidden": (1, 4096), "dcca.outputs": (1, 512), "dcca.eeg_weight": (0.0, 1.0), "dcca.C": (1e-6, 1e6),
    "svm.C": (1e-6, 1e6),
    "train.epochs": (1, 10_000), "train.batch_size": (1, 65_536), "train.crops_per_trial": (1, 1000),
    "train.lr": (1e-12, 10.0), "train.weight_decay": (0.0, 10.0), "train.grad_clip": (1e-12, 1e6),
    "train.label_smoothing": (0.0, 0.99), "train.input_noise": (0.0, 100.0),
    "train.domain_weight": (0.0, 1000.0), "train.seed": (0, SEED_MAX),
    "train.seeds": (1, 100),
    "train.validation": (0, MAX_SUBJECT), "train.patience": (0, 10_000), "train.warmup_steps": (0, 1_000_000),
    "compute.threads_per_fold": (1, 256), "compute.gpus_per_fold": (0.01, 8.0), "compute.cpus": (0, 4096),
}
CHOICES = {
    "data.dataset": tuple(DATASETS), "model.name": ("transformer", "dcca", "svm"), "data.nan_policy": ("error", "impute"), "normalize.scope": ("subject", "session", "none"),
    "cv.split": ("loso", "subject-dependent", "cross-session", "loso-unseen-clips"), "cv.input": ("crop", "trial"),
    "train.device": ("auto", "cpu", "cuda"), "train.select_by": ("f1", "loss"),
}
# data.raw_dir is a dependency path in dvc.yaml: plain path characters only, no newline or shell syntax.
SAFE_PATH = re.compile(r"[A-Za-z0-9_./-][A-Za-z0-9_./ -]{0,511}")
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-][A-Za-z0-9_. -]{0,199}")


def _shown(value) -> str:
    """A short rendering of a user's value for an error message (never a huge repr)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _coerce(key: str, value, kind):
    """Check ``value`` against the annotated type exactly; ints are accepted where floats are expected."""
    item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
    if kind is bool:
        ok = type(value) is bool
    elif kind is int:
        ok = type(value) is int
    elif kind is float:
        ok = type(value) in (int, float)
        if ok and not math.isfinite(value):
            raise ParamsError(f"{key}: {_shown(value)} is not a finite number")
        value = float(value) if ok else value
    elif item is float:   # candidates: one number, or a non-empty list of them (each checked as a float)
        value = value if type(value) is list else [value]
        ok = bool(value)
        if len(value) > MAX_CANDIDATES:
            raise ParamsError(f"{key}: {len(value)} candidates; at most {MAX_CANDIDATES} (each is a training per fold)")
        if ok:
            value = [_coerce(key, v, float) for v in value]
            if len(set(value)) != len(value):
                raise ParamsError(f"{key}: {_shown(value)} lists a value twice")
            return value
    elif item is not None:
        ok = type(value) is list and all(type(v) is item for v in value)
        if ok and len(set(value)) != len(value):
            raise ParamsError(f"{key}: {_shown(value)} lists a value twice")
    else:
        ok = type(value) is kind
    if not ok:
        expected = ("a number or a non-empty list of numbers" if item is float else f"a list of {item.__name__}"
                    ) if item else kind.__name__
        raise ParamsError(f"{key}: {_shown(value)} should be {expected}")
    if key in RANGES:
        low, high = RANGES[key]
        if not low <= value <= high:
            raise ParamsError(f"{key}: {_shown(value)} is outside [{low}, {high}]")
    if key in CHOICES and value not in CHOICES[key]:
        raise ParamsError(f"{key}: {_shown(value)} must be one of {', '.join(CHOICES[key])}")
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ParamsError(message)


def validate(p: Params) -> Params:
    """Checks that involve more than one key (each key's own type and range is checked on reading)."""
    spec = datasets.spec(p.data.dataset)
    subjects = set(range(1, spec.subjects + 1))
    _check(SAFE_PATH.fullmatch(p.data.raw_dir) is not None,
           "data.raw_dir: use a plain path (letters, digits, '_', '.', '-', '/', spaces)")
    _check(len(p.data.subjects) >= 2 and set(p.data.subjects) <= subjects,
           f"data.subjects: at least 2 distinct subjects from 1..{spec.subjects} ({spec.name}; one held out, the "
           "others to train on)")
    _check(p.synthetic.subjects <= spec.subjects,
           f"synthetic.subjects: {spec.name} has {spec.subjects} subjects; give at most that many")
    _check(bool(p.cv.subjects) and set(p.cv.subjects) <= set(p.data.subjects),
           "cv.subjects: test subjects must be among data.subjects")
    lists = {"transformer": ("train.input_noise", "train.label_smoothing"), "dcca": ("dcca.C",), "svm": ("svm.C",)}
    flat = p.flat()
    _check(p.train.validation > 0 or all(len(flat[key]) == 1 for key in lists[p.model.name]),
           f"{' / '.join(lists[p.model.name])}: candidate lists need inner validation to choose from them "
           "(train.validation > 0), or give one value each")
    _check(p.model.name != "dcca" or len(p.model.modalities) == 2, "model.modalities: dcca fuses both, give [eeg, eye]")
    m = p.model
    _check(m.d_model % m.heads == 0, f"model.d_model ({m.d_model}) must be a multiple of model.heads ({m.heads})")
    _check(bool(m.modalities) and set(m.modalities) <= {"eeg", "eye"},
           "model.modalities: a non-empty subset of [eeg, eye]")
    _check(m.d_model % 2 == 0 or not m.positional_encoding,
           "model.d_model: must be even for the sinusoidal positional encoding")
    need = training_bytes(p) if p.model.name == "transformer" else 0   # the others are far smaller
    _check(need <= MAX_TRAINING_BYTES, f"model, train.batch_size and cv.crop_windows: one training step needs "
           f"about {need / 2**30:.0f} GiB, over MAX_TRAINING_BYTES = {MAX_TRAINING_BYTES // 2**30} GiB (shrink "
           "model.d_model, model.d_ff, model.layers, train.batch_size or cv.crop_windows)")
    _check(SAFE_NAME.fullmatch(p.mlflow.experiment) is not None,
           "mlflow.experiment: a name of letters, digits, '_', '.', '-' and spaces (at most 200)")
    return p


MAX_TRAINING_BYTES = 64 * 2**30   # one fold's training step: more than any machine this targets gives a fold
                                  # (24 GiB CPU machines; one 139 GiB GPU shared by its folds)


def training_bytes(p: Params) -> int:
    """Estimated peak memory of one training step in float32, from the params alone: weights with their
    gradients and two AdamW moments (16 bytes each), plus what autograd keeps per window of the batch
    (per encoder layer 12 d_model + 3 d_ff + 4 heads x L, the cross-attention 2 x (8 d_model + 4 heads x L),
    the input features). ``benchmarks/memory.py`` prints it beside the measured peak (within ~35 % on CPU)."""
    m, d, streams = p.model, p.model.d_model, len(p.model.modalities)
    spec = datasets.spec(p.data.dataset)
    length = p.cv.crop_windows if p.cv.input == "crop" else max(spec.trial_windows)
    width = sum(spec.widths[modality] for modality in m.modalities)
    cross = m.cross_attention and streams == 2
    weights = (width * d * (3 if m.feature_importance else 1) + 2 * streams * d * d
               + (streams * m.layers * (4 * d * d + 2 * d * m.d_ff) if m.self_attention else 0)
               + (8 * d * d if cross else 0))
    per_window = (width + (streams * m.layers * (12 * d + 3 * m.d_ff + 4 * m.heads * length) if m.self_attention else 0)
                  + (2 * (8 * d + 4 * m.heads * length) if cross else 0))
    return 16 * weights + 4 * p.train.batch_size * length * per_window


def _unknown_key(section: str, key: str, names: set[str]) -> str:
    """``model.hedas: unknown key (model has: ...)``, or where the key does belong (``train.device``)."""
    home = [s.name for s in fields(Params) if key in {f.name for f in fields(typing.get_type_hints(Params)[s.name])}]
    hint = f"it belongs in {home[0]}" if home else f"{section} has: {', '.join(sorted(names))}"
    return f"{section}.{key if key.isidentifier() else _shown(key)}: unknown key ({hint})"


ALL = "all"   # data.subjects, cv.subjects, synthetic.subjects: every subject of data.dataset
ALL_KEYS = (("data", "subjects"), ("cv", "subjects"), ("synthetic", "subjects"))


def every_subject(raw: dict) -> dict:
    """``raw`` with ``all`` in the subject keys replaced by every subject of ``data.dataset`` (a list; the
    count for ``synthetic.subjects``; for ``cv.subjects`` every subject of ``data.subjects``), so that ``-S data.dataset=seed-iv`` needs no other change. An
    unknown dataset is left for its own check to name."""
    data = raw.get("data")
    if not (isinstance(data, dict) and data.get("dataset") in DATASETS):
        return raw
    n = datasets.spec(data["dataset"]).subjects
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, key in ALL_KEYS:   # data first: cv's "all" is every subject of data.subjects
        if isinstance(out.get(section), dict) and out[section].get(key) == ALL:
            out[section][key] = (n if section == "synthetic" else list(out["data"]["subjects"])
                                 if section == "cv" and isinstance(out["data"].get("subjects"), list)
                                 else list(range(1, n + 1)))
    return out


def from_dict(raw, source: str = "params.yaml") -> Params:
    """Typed params from a complete mapping (as in ``params.yaml``); a ParamsError names the bad key."""
    try:
        _check(isinstance(raw, dict), "should be a mapping of sections (data, model, train, ...)")
        unknown = sorted(map(str, set(raw) - {f.name for f in fields(Params)}))
        _check(not unknown, f"{_shown(unknown[0]) if unknown else ''}: unknown section")
        raw = every_subject(raw)
        sections = {}
        for section in fields(Params):
            cls = typing.get_type_hints(Params)[section.name]
            given = raw.get(section.name)
            _check(isinstance(given, dict), f"{section.name}: missing, or not a mapping of keys")
            names = {f.name for f in fields(cls)}
            unknown = sorted(map(str, set(given) - names))
            _check(not unknown, _unknown_key(section.name, unknown[0], names) if unknown else "")
            missing = sorted(names - set(given))
            _check(not missing, f"{section.name}.{missing[0] if missing else ''}: missing")
            hints = typing.get_type_hints(cls)
            sections[section.name] = cls(**{key: _coerce(f"{section.name}.{key}", given[key], hints[key])
                                            for key in names})
        return validate(Params(**sections))
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None


def parse(text: str, source: str = "params.yaml"):
    """The YAML document in ``text``, read as DVC reads it (ruamel.yaml, YAML 1.2, ``typ="safe"``: so
    ``1e-3`` is 0.001 to the stages and to ``dvc params diff`` alike, and ``on``/``yes`` are strings for
    both); a syntax error, an unknown tag, a duplicate key or any alias is one ParamsError line. Aliases
    are refused from the event stream before anything is built: an anchor bomb of a few hundred bytes
    expands to gigabytes."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.events import AliasEvent

    reader = YAML(typ="safe", pure=True)
    try:
        for event in reader.parse(text):
            if isinstance(event, AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ParamsError(f"{source}: line {line}: anchors and aliases are not allowed in params.yaml "
                                  "(write each value out)")
        return reader.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{source}: not valid YAML{where}: {' '.join(str(problem).split())}") from None


def load(path: Path | str = "params.yaml") -> Params:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    return from_dict(parse(text, str(path)), str(path))
