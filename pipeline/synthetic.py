"""A deterministic synthetic dataset: the embedded data the default pipeline runs on.

One generator for every dataset of :mod:`pipeline.datasets`: it takes the dataset's facts (classes,
session label orders, clip-dependent trial lengths, channels, eye-feature groups) from its spec and writes
with its writer, in the exact on-disk layout, so the same code path reads it and the real data. SEED-V
(the default) uses the real label orders and trial lengths; SEED-IV the real label orders and lengths of
our choosing (see :mod:`pipeline.datasets.seediv`). Below, "trial t = 0..14" reads 0..23 for SEED-IV.

Generative model, for subject s, session k, trial (clip) c with emotion y and n windows w = 0..n-1::

    x_m[w] = base_m + subject_offset_m[s] + session_drift_m[s, k]
             + gain_m[s] * intensity[s, c, w] * (pattern_m[y] + idiosyncrasy_m[s, y])
             + scale_m[s] * ar1_noise_m[w]                                         (m = eeg | eye)

- ``base``: population level. EEG differential entropy falls with frequency (delta > ... > gamma) and
  varies smoothly over the scalp; eye features have plausible magnitudes per group (pupil diameter,
  dispersion, fixation/blink/saccade durations, event counts).
- ``pattern``: class-dependent structure reflecting what is reported for affective EEG/eye responses.
  EEG: happy raises beta/gamma over lateral temporal sites; neutral raises parietal-occipital alpha;
  sad raises frontal/occipital delta-theta and lowers temporal gamma; fear and disgust share a
  "negative, aroused" frontal theta / central beta pattern and differ only slightly in EEG.
  Eye: fear dilates the pupil and shortens fixations; disgust increases blinks and gaze dispersion (the
  pair EEG confuses separates well in eye features); happy, sad and neutral differ only weakly in eye
  features. So the modalities are complementary.
- ``intensity``: the response evolves over the clip. Each clip has emotional peaks (a shared time course,
  since every subject sees the same clip) that each subject follows with its own jitter and AR(1)
  fluctuation; windows far from a peak carry little class information, so temporal context matters.
- ``subject_offset``, ``scale``, ``idiosyncrasy``: the cross-subject shift (offsets, scales, and a
  subject-specific deformation of every class pattern).
- ``session_drift``: a per-session offset (electrode impedance, calibration).
- ``gain``: per-modality signal strength; some subjects have a weak EEG, others a weak eye recording.
- ``ar1_noise``: temporally correlated noise (phi = 0.8) so neighbouring windows are alike.

Optional slow within-session trend (``drift`` > 0; ``synthetic.drift``, default 0: none), the test case of
the position audit (:func:`pipeline.baselines.position_probe`). Trial t = 0..14 of a session adds to every
window::

    drift * scale_m[s] * noise_m * (t / 14 - 0.5) * direction_m[s]

in units of the noise std, so drift 1 moves each feature by about one noise std from a session's first
trial to its last (fatigue, drying electrodes). ``direction`` is mostly a population direction (EEG theta
and alpha rise, as with fatigue, plus a random part) and partly the subject's own, with unit RMS over the
features. Since SEED-V's label order per session is the same for every subject, such a trend makes trial
position, and so the label, readable from the features.

All randomness comes from ``numpy.random.default_rng`` seeded by ``(seed,)`` for the population and
``(seed, subject)`` per subject, so subject s is identical whatever the number of subjects generated. The
drift directions have their own streams, ``(seed, 0, 7)`` (population; no subject is 0) and
``(seed, subject, 7)``, drawn only when drift > 0: drift 0 leaves every stream and every bit as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import datasets
from .datasets import SubjectRecording

AR_PHI = 0.8
EEG_NOISE = 2.4
EYE_NOISE = 1.4

def _region_masks(channels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Boolean masks over the 62 channels for coarse scalp regions."""
    names = np.array(channels)

    def starts(*prefixes):
        return np.array([any(n.startswith(p) for p in prefixes) for n in names])

    lateral = np.array([n[-1].isdigit() and n[-1] in "5678" for n in names])
    return {
        "frontal": starts("FP", "AF", "F") & ~starts("FT", "FC"),
        "temporal": starts("FT", "T", "TP"),
        "lateral_temporal": starts("FT", "T", "TP") | (starts("C", "CP", "P") & lateral),
        "central": starts("FC", "C", "CP") & ~starts("CB"),
        "parietal": starts("P") & ~starts("PO"),
        "occipital": starts("PO", "O", "CB"),
    }


def _eye_slices(groups, width: int) -> dict[str, slice]:
    slices, start = {}, 0
    for name, count, _ in groups:
        slices[name] = slice(start, start + count)
        start += count
    assert start == width
    return slices


def _smooth_spatial(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Random field over (..., 62 channels, 5 bands), smoothed along the channel order (neighbours)."""
    field = rng.normal(size=size)
    kernel = np.array([0.25, 0.5, 0.25])
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), -2, field)


def _population(seed: int, dataset) -> dict:
    """Everything shared by all subjects: baselines, class patterns and clip time courses. Patterns are
    given by emotion name; a dataset without that emotion (SEED-IV has no disgust) skips its lines."""
    spec = dataset.SPEC
    rng = np.random.default_rng([seed])
    regions, bands = _region_masks(spec.channels), {b: i for i, b in enumerate(spec.bands)}
    n_ch, n_b, n_classes, n_eye = len(spec.channels), len(spec.bands), spec.n_classes, spec.eye_features
    label = {name: c for c, name in enumerate(spec.classes)}

    eeg_base = np.array([18.0, 15.5, 13.5, 11.5, 9.5])[None, :] + 1.5 * _smooth_spatial(rng, (n_ch, n_b))
    eeg_pattern = np.zeros((n_classes, n_ch, n_b))

    def add(emotion, region, band_names, amount):
        for band in band_names if emotion in label else ():
            eeg_pattern[label[emotion], regions[region], bands[band]] += amount

    add("happy", "lateral_temporal", ("beta", "gamma"), 0.9)
    add("happy", "frontal", ("alpha",), -0.3)
    add("neutral", "parietal", ("alpha",), 0.9)
    add("neutral", "occipital", ("alpha",), 0.9)
    add("sad", "frontal", ("delta", "theta"), 0.7)
    add("sad", "occipital", ("delta",), 0.6)
    add("sad", "temporal", ("gamma",), -0.7)
    for emotion in ("disgust", "fear"):                           # alike in EEG
        add(emotion, "frontal", ("theta",), 0.6)
        add(emotion, "central", ("beta",), 0.6)
    add("fear", "occipital", ("gamma",), 0.25)
    add("disgust", "temporal", ("theta",), 0.25)
    eeg_pattern += 0.25 * _smooth_spatial(rng, (n_classes, n_ch, n_b))

    eye = _eye_slices(dataset.EYE_GROUPS, n_eye)
    eye_base = np.concatenate([np.full(count, level) for _, count, level in dataset.EYE_GROUPS])
    eye_base = eye_base * rng.uniform(0.8, 1.2, n_eye)
    eye_pattern = np.zeros((n_classes, n_eye))

    def add_eye(emotion, group, amount):
        if emotion in label:
            eye_pattern[label[emotion], eye[group]] += amount

    add_eye("fear", "pupil_x", 1.2)  # fear: pupil dilation
    add_eye("fear", "pupil_y", 1.2)
    add_eye("fear", "fixation_duration", -0.9)
    add_eye("disgust", "blink_duration", 1.2)  # disgust: blinks, gaze aversion
    add_eye("disgust", "dispersion", 1.0)
    add_eye("disgust", "events", 0.6)
    add_eye("happy", "pupil_x", 0.35)  # happy / sad / neutral: weak
    add_eye("happy", "saccade", 0.35)
    add_eye("sad", "fixation_duration", 0.35)
    add_eye("sad", "saccade", -0.3)
    eye_pattern += 0.15 * rng.normal(size=eye_pattern.shape)

    # Per clip: one to three emotional peaks at positions in (0.15, 0.95) of the clip, widths 8-25 %.
    clip_peaks = []
    for _ in spec.trial_windows:
        k = rng.integers(1, 4)
        clip_peaks.append((rng.uniform(0.15, 0.95, k), rng.uniform(0.08, 0.25, k), rng.uniform(0.6, 1.0, k)))
    return dict(eeg_base=eeg_base.reshape(-1), eeg_pattern=eeg_pattern.reshape(n_classes, -1),
                eye_base=eye_base, eye_pattern=eye_pattern, clip_peaks=clip_peaks)


def _ar1(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """(n, width) unit-variance AR(1) noise along the first axis."""
    eps = rng.normal(size=(n, width))
    out = np.empty_like(eps)
    out[0] = eps[0]
    innovation = np.sqrt(1 - AR_PHI**2)
    for w in range(1, n):
        out[w] = AR_PHI * out[w - 1] + innovation * eps[w]
    return out


def _intensity(rng: np.random.Generator, peaks, n: int) -> np.ndarray:
    """(n,) emotional intensity over a clip: a low floor plus the clip's peaks, jittered per subject."""
    position = (np.arange(n) + 0.5) / n
    centres, widths, heights = peaks
    centres = centres + rng.normal(0, 0.04, len(centres))
    curve = sum(h * np.exp(-0.5 * ((position - c) / w) ** 2) for c, w, h in zip(centres, widths, heights))
    wobble = 0.15 * _ar1(rng, n, 1)[:, 0]
    return np.clip(0.15 + curve + wobble, 0.0, None)


def _drift_directions(seed: int, subject: int, spec) -> dict[str, np.ndarray]:
    """Per modality, the (features,) direction of the within-session trend: 0.8 of a population direction
    and 0.6 of the subject's own (each unit RMS, independent, so the sum is about unit RMS too)."""
    population, own = np.random.default_rng([seed, 0, 7]), np.random.default_rng([seed, subject, 7])
    fatigue = np.zeros((len(spec.channels), len(spec.bands)))
    fatigue[:, [spec.bands.index("theta"), spec.bands.index("alpha")]] = 1.0          # fatigue raises theta/alpha
    shared = {"eeg": fatigue.reshape(-1) + population.normal(size=fatigue.size),
              "eye": population.normal(size=spec.eye_features)}
    out = {}
    for modality, direction in shared.items():
        direction = direction / np.sqrt(np.mean(direction**2))
        out[modality] = 0.8 * direction + 0.6 * own.normal(size=direction.size)
    return out


def generate_subject(seed: int, subject: int, population: dict | None = None, drift: float = 0.0,
                     dataset=None) -> SubjectRecording:
    """One synthetic subject's trials of ``dataset`` (a module of :mod:`pipeline.datasets`; default SEED-V)
    (see the module docstring for the model; ``drift``: the within-session trend in noise stds over a
    session, 0 for none)."""
    dataset = dataset or datasets.load("seed-v")
    spec = dataset.SPEC
    pop = population or _population(seed, dataset)
    rng = np.random.default_rng([seed, subject])
    n_eeg, n_eye = pop["eeg_base"].size, spec.eye_features

    offsets = {"eeg": 1.2 * _smooth_spatial(rng, (len(spec.channels), len(spec.bands))).reshape(-1),
               "eye": 0.6 * rng.normal(size=n_eye) * pop["eye_base"] / 3}
    scales = {"eeg": rng.uniform(0.7, 1.4), "eye": rng.uniform(0.7, 1.4)}
    gains = {"eeg": rng.uniform(0.75, 1.25), "eye": rng.uniform(0.75, 1.25)}
    weak = rng.uniform()
    if weak < 0.25:
        gains["eeg"] *= 0.35      # poor EEG contact
    elif weak < 0.45:
        gains["eye"] *= 0.35      # poor eye tracking (glasses, calibration)
    idiosyncrasy = {"eeg": 0.6 * rng.normal(size=(spec.n_classes, n_eeg)),
                    "eye": 0.35 * rng.normal(size=(spec.n_classes, n_eye))}
    session_drift = {"eeg": 0.5 * rng.normal(size=(spec.sessions, n_eeg)),
                     "eye": 0.25 * rng.normal(size=(spec.sessions, n_eye))}
    noise = {"eeg": EEG_NOISE, "eye": EYE_NOISE}
    directions = _drift_directions(seed, subject, spec) if drift else None

    eeg, eye = [], []
    for trial, (label, n) in enumerate(zip(spec.trial_labels, spec.trial_windows)):
        session = spec.session_of(trial) - 1
        intensity = _intensity(rng, pop["clip_peaks"][trial], n)[:, None]
        for modality, out in (("eeg", eeg), ("eye", eye)):
            signal = pop[f"{modality}_pattern"][label] + idiosyncrasy[modality][label]
            x = (pop[f"{modality}_base"] + offsets[modality] + session_drift[modality][session]
                 + gains[modality] * intensity * signal
                 + scales[modality] * noise[modality] * _ar1(rng, n, signal.size))
            if directions is not None:
                position = spec.position_of(trial) / (spec.trials_per_session - 1) - 0.5   # -0.5 .. 0.5
                x = x + drift * scales[modality] * noise[modality] * position * directions[modality]
            out.append(x)
    return SubjectRecording(subject, eeg, eye, list(spec.trial_labels))


def write_dataset(root: Path | str, seed: int, n_subjects: int, drift: float = 0.0, dataset=None) -> None:
    """Write subjects 1..n_subjects of ``dataset`` (default SEED-V) in its exact layout under ``root``
    (``drift``: see the module docstring)."""
    dataset = dataset or datasets.load("seed-v")
    population = _population(seed, dataset)
    for subject in range(1, n_subjects + 1):
        dataset.write_subject(root, generate_subject(seed, subject, population, drift, dataset))
