"""A deterministic synthetic SEED-V: the embedded dataset the default pipeline runs on.

It is written in the exact SEED-V layout (see :mod:`pipeline.seedv`) with the real session label orders
and clip-dependent trial lengths, so the same code path reads it and the real data.

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

from .seedv import (BANDS, CHANNELS, N_CLASSES, N_EYE, N_SUBJECTS, TRIAL_LABELS, TRIAL_WINDOWS, TRIALS_PER_SESSION,
                    SubjectRecording, write_subject)

AR_PHI = 0.8
EEG_NOISE = 2.4
EYE_NOISE = 1.4

# Eye feature groups in file order (33 features): name, count, typical magnitude.
EYE_GROUPS = (
    ("pupil_x", 6, 3.5), ("pupil_y", 6, 3.5), ("dispersion", 4, 1.5), ("fixation_duration", 2, 2.5),
    ("blink_duration", 2, 1.2), ("saccade", 4, 1.8), ("events", 9, 2.0),
)


def _region_masks() -> dict[str, np.ndarray]:
    """Boolean masks over the 62 channels for coarse scalp regions."""
    names = np.array(CHANNELS)

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


def _eye_slices() -> dict[str, slice]:
    slices, start = {}, 0
    for name, count, _ in EYE_GROUPS:
        slices[name] = slice(start, start + count)
        start += count
    assert start == N_EYE
    return slices


def _smooth_spatial(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Random field over (..., 62 channels, 5 bands), smoothed along the channel order (neighbours)."""
    field = rng.normal(size=size)
    kernel = np.array([0.25, 0.5, 0.25])
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), -2, field)


def _population(seed: int) -> dict:
    """Everything shared by all subjects: baselines, class patterns and clip time courses."""
    rng = np.random.default_rng([seed])
    regions, bands = _region_masks(), {b: i for i, b in enumerate(BANDS)}
    n_ch, n_b = len(CHANNELS), len(BANDS)

    eeg_base = np.array([18.0, 15.5, 13.5, 11.5, 9.5])[None, :] + 1.5 * _smooth_spatial(rng, (n_ch, n_b))
    eeg_pattern = np.zeros((N_CLASSES, n_ch, n_b))

    def add(label, region, band_names, amount):
        for band in band_names:
            eeg_pattern[label, regions[region], bands[band]] += amount

    add(4, "lateral_temporal", ("beta", "gamma"), 0.9)          # happy
    add(4, "frontal", ("alpha",), -0.3)
    add(3, "parietal", ("alpha",), 0.9)                           # neutral
    add(3, "occipital", ("alpha",), 0.9)
    add(2, "frontal", ("delta", "theta"), 0.7)                    # sad
    add(2, "occipital", ("delta",), 0.6)
    add(2, "temporal", ("gamma",), -0.7)
    for label in (0, 1):                                          # disgust, fear: alike in EEG
        add(label, "frontal", ("theta",), 0.6)
        add(label, "central", ("beta",), 0.6)
    add(1, "occipital", ("gamma",), 0.25)
    add(0, "temporal", ("theta",), 0.25)
    eeg_pattern += 0.25 * _smooth_spatial(rng, (N_CLASSES, n_ch, n_b))

    eye = _eye_slices()
    eye_base = np.concatenate([np.full(count, level) for _, count, level in EYE_GROUPS])
    eye_base = eye_base * rng.uniform(0.8, 1.2, N_EYE)
    eye_pattern = np.zeros((N_CLASSES, N_EYE))
    eye_pattern[1, eye["pupil_x"]] += 1.2                        # fear: pupil dilation
    eye_pattern[1, eye["pupil_y"]] += 1.2
    eye_pattern[1, eye["fixation_duration"]] -= 0.9
    eye_pattern[0, eye["blink_duration"]] += 1.2                 # disgust: blinks, gaze aversion
    eye_pattern[0, eye["dispersion"]] += 1.0
    eye_pattern[0, eye["events"]] += 0.6
    eye_pattern[4, eye["pupil_x"]] += 0.35                       # happy / sad / neutral: weak
    eye_pattern[4, eye["saccade"]] += 0.35
    eye_pattern[2, eye["fixation_duration"]] += 0.35
    eye_pattern[2, eye["saccade"]] -= 0.3
    eye_pattern += 0.15 * rng.normal(size=eye_pattern.shape)

    # Per clip: one to three emotional peaks at positions in (0.15, 0.95) of the clip, widths 8-25 %.
    clip_peaks = []
    for _ in TRIAL_WINDOWS:
        k = rng.integers(1, 4)
        clip_peaks.append((rng.uniform(0.15, 0.95, k), rng.uniform(0.08, 0.25, k), rng.uniform(0.6, 1.0, k)))
    return dict(eeg_base=eeg_base.reshape(-1), eeg_pattern=eeg_pattern.reshape(N_CLASSES, -1),
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


def _drift_directions(seed: int, subject: int) -> dict[str, np.ndarray]:
    """Per modality, the (features,) direction of the within-session trend: 0.8 of a population direction
    and 0.6 of the subject's own (each unit RMS, independent, so the sum is about unit RMS too)."""
    population, own = np.random.default_rng([seed, 0, 7]), np.random.default_rng([seed, subject, 7])
    fatigue = np.zeros((len(CHANNELS), len(BANDS)))
    fatigue[:, [BANDS.index("theta"), BANDS.index("alpha")]] = 1.0          # fatigue raises theta/alpha
    shared = {"eeg": fatigue.reshape(-1) + population.normal(size=fatigue.size),
              "eye": population.normal(size=N_EYE)}
    out = {}
    for modality, direction in shared.items():
        direction = direction / np.sqrt(np.mean(direction**2))
        out[modality] = 0.8 * direction + 0.6 * own.normal(size=direction.size)
    return out


def generate_subject(seed: int, subject: int, population: dict | None = None,
                     drift: float = 0.0) -> SubjectRecording:
    """One synthetic subject's 45 trials (see the module docstring for the model; ``drift``: the
    within-session trend in noise stds over a session, 0 for none)."""
    pop = population or _population(seed)
    rng = np.random.default_rng([seed, subject])
    n_eeg, n_eye = pop["eeg_base"].size, N_EYE

    offsets = {"eeg": 1.2 * _smooth_spatial(rng, (len(CHANNELS), len(BANDS))).reshape(-1),
               "eye": 0.6 * rng.normal(size=n_eye) * pop["eye_base"] / 3}
    scales = {"eeg": rng.uniform(0.7, 1.4), "eye": rng.uniform(0.7, 1.4)}
    gains = {"eeg": rng.uniform(0.75, 1.25), "eye": rng.uniform(0.75, 1.25)}
    weak = rng.uniform()
    if weak < 0.25:
        gains["eeg"] *= 0.35      # poor EEG contact
    elif weak < 0.45:
        gains["eye"] *= 0.35      # poor eye tracking (glasses, calibration)
    idiosyncrasy = {"eeg": 0.6 * rng.normal(size=(N_CLASSES, n_eeg)),
                    "eye": 0.35 * rng.normal(size=(N_CLASSES, n_eye))}
    session_drift = {"eeg": 0.5 * rng.normal(size=(3, n_eeg)), "eye": 0.25 * rng.normal(size=(3, n_eye))}
    noise = {"eeg": EEG_NOISE, "eye": EYE_NOISE}
    directions = _drift_directions(seed, subject) if drift else None

    eeg, eye = [], []
    for trial, (label, n) in enumerate(zip(TRIAL_LABELS, TRIAL_WINDOWS)):
        session = trial // TRIALS_PER_SESSION
        intensity = _intensity(rng, pop["clip_peaks"][trial], n)[:, None]
        for modality, out in (("eeg", eeg), ("eye", eye)):
            signal = pop[f"{modality}_pattern"][label] + idiosyncrasy[modality][label]
            x = (pop[f"{modality}_base"] + offsets[modality] + session_drift[modality][session]
                 + gains[modality] * intensity * signal
                 + scales[modality] * noise[modality] * _ar1(rng, n, signal.size))
            if directions is not None:
                position = trial % TRIALS_PER_SESSION / (TRIALS_PER_SESSION - 1) - 0.5   # -0.5 .. 0.5
                x = x + drift * scales[modality] * noise[modality] * position * directions[modality]
            out.append(x)
    return SubjectRecording(subject, eeg, eye, list(TRIAL_LABELS))


def write_dataset(root: Path | str, seed: int, n_subjects: int = N_SUBJECTS, drift: float = 0.0) -> None:
    """Write subjects 1..n_subjects in the SEED-V layout under ``root`` (``drift``: see the module docstring)."""
    population = _population(seed)
    for subject in range(1, n_subjects + 1):
        write_subject(root, generate_subject(seed, subject, population, drift))
