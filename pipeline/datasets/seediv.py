"""The SEED-IV on-disk format: its facts, a safe reader with validation, and a writer.

SEED-IV ("SJTU Emotion EEG Dataset for Four Emotions", the SEED-V lab's): 15 subjects, 3 sessions on
different days, 24 film clips (trials) per session, 4 classes (0 neutral, 1 sad, 2 fear, 3 happy). Layout
of a SEED-IV folder, as distributed::

    eeg_feature_smooth/<session 1|2|3>/<subject>_<date>.mat   de_LDS1..de_LDS24, each (62 channels, W, 5 bands)
                                                               (also de_movingAve*, psd_movingAve*, psd_LDS*)
    eye_feature_smooth/<session 1|2|3>/<subject>_<date>.mat   eye_1..eye_24, each (31 features, W)

W is the number of 4-s windows of the trial, the same in both files. The date is the recording day, so it
differs per subject and per session (``1_20160518.mat``). Labels are not in the files: they are published
per session (the same clip order for every subject) and are :data:`SESSION_LABELS` below. We read
``de_LDS`` (differential entropy smoothed by a linear dynamic system: the features the lab's papers report
with); the channel order and the 5 bands are SEED-V's (the same 62-channel cap).

Where the facts come from: the SEED-IV ReadMe (labels per session, variable names, shapes, 4-s windows);
TorchEEG's SEEDIVDataset reader (the ``eeg_feature_smooth/<session>/<subject>_<date>.mat`` walk and the
key names); public readers of ``eye_feature_smooth`` (eye variables (31, W)). Where they disagree, the
ReadMe wins.

MAT-files are parsed defensively, because scipy trusts the sizes a file declares: it allocates whatever
byte count a part's tag states before reading it (a 100-byte file can ask for 4 GB) and inflates
compressed variables without bound. So before scipy sees anything, the reader here checks the MAT-file
header (MATLAB v7.3 / HDF5 files are refused, never opened by scipy), walks the top-level variables,
inflates at most :data:`HEAD_BYTES` of each to let ``scipy.io.whosmat`` list names, shapes and classes,
validates those, inflates only the 24 variables it needs (each bounded by what its declared shape needs),
checks that every part inside them fits in the bytes present, and hands ``scipy.io.loadmat`` that checked,
uncompressed copy. Every problem a user's files can have is raised as :class:`SeedIVFormatError` with one
line: ``<file>: subject <s>, session <k>, trial <t> (<variable>): <what is wrong> — <what to do>``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.io

from ..errors import UserError
from . import MAX_SUBJECT, DataFormatError, Spec, SubjectRecording, impute_trial
from . import format_error as _format_error
from . import seedv

EMOTIONS = ("neutral", "sad", "fear", "happy")  # label 0..3
N_SUBJECTS = 15
N_EYE = 31
TRIALS_PER_SESSION = 24

# Trial labels per session (SEED-IV ReadMe; the same clips, in the same order, for every subject).
SESSION_LABELS = (
    (1, 2, 3, 0, 2, 0, 0, 1, 0, 1, 2, 1, 1, 1, 2, 3, 2, 2, 3, 3, 0, 3, 0, 3),
    (2, 1, 3, 0, 0, 2, 0, 2, 3, 3, 2, 3, 2, 0, 1, 1, 2, 1, 0, 3, 0, 1, 3, 1),
    (1, 2, 2, 1, 3, 3, 3, 1, 1, 2, 1, 0, 2, 3, 3, 0, 2, 3, 0, 0, 2, 0, 1, 0),
)
# Windows per trial of the SYNTHETIC data, not of the real recordings (whose per-trial lengths we do not
# have): fixed plausible values in 20..64 (clips of 1.5-4 min), all above the 12-window crops of cv.
SESSION_WINDOWS = (
    (52, 62, 59, 43, 62, 63, 63, 23, 40, 47, 32, 36, 48, 56, 46, 27, 50, 59, 29, 44, 35, 60, 22, 41),
    (60, 39, 26, 55, 63, 64, 61, 36, 52, 63, 45, 61, 46, 27, 40, 47, 33, 51, 38, 62, 29, 49, 24, 26),
    (43, 42, 42, 42, 58, 42, 36, 63, 59, 35, 29, 30, 27, 43, 45, 48, 60, 62, 44, 46, 23, 32, 64, 61),
)

SPEC = Spec(
    name="seed-iv", classes=EMOTIONS, subjects=N_SUBJECTS, session_labels=SESSION_LABELS,
    session_windows=SESSION_WINDOWS, channels=tuple(seedv.CHANNELS), bands=seedv.BANDS, eye_features=N_EYE,
    window_seconds=4.0, block_trials=8, subject_dependent="last-block",
    source="SEED-IV ReadMe (labels per session, variable names de_LDS1..24 and eye_1..24, shapes (62, W, 5) "
           "and (31, W), 4-s windows); TorchEEG's SEEDIVDataset reader (the eeg_feature_smooth/<session>/"
           "<subject>_<date>.mat walk and key names); public eye_feature_smooth readers (eye (31, W)); the "
           "62-channel order and 5 bands are SEED-V's (same cap); where sources disagree the ReadMe is followed")
# Eye feature groups in file order (31 features): name, count, typical magnitude (the synthetic generator's).
# SEED-V's groups with 7 event statistics instead of 9.
_SEEDV_EYE = {name: level for name, _, level in seedv.EYE_GROUPS}
EYE_GROUPS = tuple((name, count, _SEEDV_EYE[name]) for name, count in (
    ("pupil_x", 6), ("pupil_y", 6), ("dispersion", 4), ("fixation_duration", 2), ("blink_duration", 2),
    ("saccade", 4), ("events", 7)))

# modality -> (folder, variable name of trial t = 1..24, shape of one variable with None for W, dimension names)
MODALITIES = {
    "eeg": ("eeg_feature_smooth", "de_LDS{}", (len(seedv.CHANNELS), None, len(seedv.BANDS)),
            ("channels", "windows", "bands")),
    "eye": ("eye_feature_smooth", "eye_{}", (N_EYE, None), ("eye features", "windows")),
}

# Limits on what one file may make the reader hold, each checked before the memory it bounds is taken.
MAX_FILE_BYTES = 64 * 2**20       # one .mat on disk; a real EEG file with its four feature kinds is 20-30 MB
MAX_WINDOWS_PER_TRIAL = seedv.MAX_WINDOWS_PER_TRIAL   # 10 000 4-s windows: 11 hours; a SEED-IV clip is ~2-4 min
MAX_WINDOWS_PER_FILE = 10_000     # one session's 24 trials: 11 hours (a session is about one hour): at most
                                  # 25 MB of float64 EEG, 50 MB if complex, inflated and loaded
MAX_VARIABLES = 1024              # per file; a real EEG file has 96 (4 feature kinds x 24), an eye file 24
HEAD_BYTES = 4096                 # what whosmat may read of one variable: flags, dimensions and name take
                                  # under 100 bytes in any real file
NUMERIC_CLASSES = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
# logical (true/false) arrays are refused too: a boolean array is not a feature recording

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"   # at 0, 512, 1024 or 2048: MATLAB v7.3 puts it after a 512-byte header
_MI_MATRIX, _MI_COMPRESSED = 14, 15      # the two kinds of top-level element of a MAT v5 file
NAME = re.compile(r"0*(\d{1,6})_[^/]*\.mat")   # 1_20160518.mat, 01_20160518.mat


class SeedIVFormatError(DataFormatError):
    """A SEED-IV file that cannot be used; the message is one line naming file, subject, session and trial."""


def format_error(path, subject, what: str, fix: str, trial: int | str | None = None,
                 session: int | None = None) -> SeedIVFormatError:
    return _format_error(path, subject, what, fix, trial, session, error=SeedIVFormatError)


def subject_file(root: Path | str, modality: str, subject: int, session: int) -> Path:
    """The path our writer uses: the real layout, with a fixed date per session (2016010<session>)."""
    return Path(root) / MODALITIES[modality][0] / str(session) / f"{subject}_2016010{session}.mat"


def files_by_subject(folder: Path) -> dict[int, list[Path]]:
    """Every ``<subject>_<anything>.mat`` in ``folder``, by subject number; sorted by name."""
    found: dict[int, list[Path]] = {}
    for path in sorted(folder.glob("*.mat")) if folder.is_dir() else ():
        if match := NAME.fullmatch(path.name):
            found.setdefault(int(match.group(1)), []).append(path)
    return found


def _find_file(root: Path, modality: str, subject: int, session: int) -> Path:
    """The one file of ``subject`` in a session folder of ``modality``."""
    top = root / MODALITIES[modality][0]
    folder = top / str(session)
    if not root.is_dir():
        raise format_error(root, subject, "data folder missing", "check data.raw_dir", session=session)
    if not folder.is_dir():
        loose = " (its .mat files lie directly in it)" if top.is_dir() and any(top.glob("*.mat")) else ""
        raise format_error(folder, subject, f"session folder missing{loose}",
                           f"SEED-IV keeps each session's files in {top.name}/1, /2 and /3; check data.raw_dir",
                           session=session)
    files = files_by_subject(folder).get(subject, [])
    if len(files) > 1:
        more = f" and {len(files) - 2} more" if len(files) > 2 else ""
        raise format_error(folder, subject, f"two files name this subject: {files[0].name} and {files[1].name}"
                           f"{more}", "keep one file per subject and session (remove or move the other)",
                           session=session)
    if not files:
        pattern = folder / f"{subject}_<date>.mat"
        near = [p.name for p in sorted(folder.iterdir())
                if (m := re.match(r"\D*?0*(\d+)(?!\d)", p.name)) and int(m.group(1)) == subject]
        if near:
            raise format_error(pattern, subject, f"file missing, but {near[0]} is there",
                               f"rename it {subject}_<date>.mat", session=session)
        raise format_error(pattern, subject, "file missing", "check data.raw_dir and data.subjects",
                           session=session)
    return files[0]


# --- reading and validation -------------------------------------------------------------------------


class _Damaged(Exception):
    """A structural problem inside a MAT-file, reported by the caller with its file and trial."""


def _read_file(path: Path, subject: int, session: int) -> tuple[bytes, str]:
    """The bytes of one MAT v5 file and its byte order ('<' or '>'), after the checks that need no parsing."""
    def error(what, fix):
        return format_error(path, subject, what, fix, session=session)

    try:
        info = path.stat()
    except FileNotFoundError:
        missing = "file missing" + (" (a broken symbolic link)" if path.is_symlink() else "")
        raise error(missing, "check data.raw_dir and data.subjects") from None
    except OSError as exc:
        raise error(f"cannot be read ({type(exc).__name__})", "check the file's permissions") from None
    if not stat.S_ISREG(info.st_mode):   # never opened: a pipe would block, a device never end
        raise error("not a regular file (a directory, pipe or device)", "put the subject's .mat file here")
    try:
        # O_NONBLOCK and fstat: if a pipe replaced the file since stat, opening it does not block either
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise error(f"cannot be opened ({type(exc).__name__})", "check the file's permissions") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error("not a regular file (a directory, pipe or device)", "put the subject's .mat file here")
        head = fh.read(2056)
        if (_HDF5_SIGNATURE in {head[o:o + 8] for o in (0, 512, 1024, 2048)} or b"MATLAB 7.3 MAT-file" in head[:128]
                or head[124:128] in (b"\x00\x02IM", b"\x02\x00MI")):   # version 2: v7.3
            raise error("a MATLAB v7.3 (HDF5) MAT-file, which this reader does not open",
                        "re-save it as v7: load it in MATLAB and save it with save -v7 (or write it with scipy.io.savemat)")
        if info.st_size > MAX_FILE_BYTES:
            raise error(f"file of {info.st_size} bytes is over MAX_FILE_BYTES = {MAX_FILE_BYTES}",
                        "a SEED-IV feature file is a few tens of MB; check that this is the right file")
        raw = head + fh.read(MAX_FILE_BYTES + 1 - len(head))
    if len(raw) > MAX_FILE_BYTES:   # grew since fstat
        raise error(f"file over MAX_FILE_BYTES = {MAX_FILE_BYTES}", "check that this is the right file")
    if len(raw) < 128:
        raise error(f"not a MAT-file ({len(raw)} bytes, shorter than a MAT-file header)",
                    "the file is damaged, truncated or not a MAT-file; copy it again")
    order = {b"IM": "<", b"MI": ">"}.get(raw[126:128])
    if order is None or struct.unpack_from(order + "H", raw, 124)[0] != 0x0100:
        raise error("not a MATLAB v5/v7 MAT-file (no MAT-file header)",
                    "the file is damaged or not a MAT-file; copy it again or re-save it with save -v7")
    return raw, order


def _elements(raw: bytes, order: str) -> list[tuple[int, memoryview]]:
    """The top-level elements (one per variable) of a MAT v5 file: (kind, payload), as scipy walks them."""
    out, pos, view = [], 128, memoryview(raw)
    while pos < len(raw):
        if len(raw) - pos < 8:
            raise _Damaged(f"truncated: {len(raw) - pos} stray bytes at its end")
        kind, size = struct.unpack_from(order + "II", raw, pos)
        if kind not in (_MI_MATRIX, _MI_COMPRESSED) or size == 0:
            raise _Damaged(f"damaged: the element at byte {pos} is not a MATLAB variable")
        if pos + 8 + size > len(raw):
            raise _Damaged(f"truncated: the variable at byte {pos} declares {size} bytes past the end of the file")
        out.append((kind, view[pos + 8:pos + 8 + size]))
        if len(out) > MAX_VARIABLES:
            raise _Damaged(f"more than MAX_VARIABLES = {MAX_VARIABLES} variables")
        pos += 8 + size
    return out


def _body(kind: int, payload: memoryview, order: str, limit: int) -> tuple[bytes, str]:
    """At most ``limit`` bytes of a variable's array (its miMATRIX content after the tag), inflated if
    compressed, and whether that is all of it: 'complete', 'more' (it holds more) or 'truncated'."""
    if kind == _MI_MATRIX:
        return bytes(payload[:limit]), "complete" if len(payload) <= limit else "more"
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, limit + 9)   # never more than limit + tag + 1 bytes
    except zlib.error as exc:
        raise _Damaged(f"damaged compressed data ({exc})") from None
    if len(data) < 8 or struct.unpack_from(order + "I", data)[0] != _MI_MATRIX:
        raise _Damaged("damaged: a compressed variable that holds no MATLAB array")
    state = "more" if len(data) > limit + 8 else "complete" if inflater.eof else "truncated"
    return data[8:limit + 8], state


def _parts_fit(body: bytes, order: str, parts: int | None = None) -> bool:
    """Whether every tagged part of an array (the first ``parts`` of them, or all) fits in ``body``: scipy
    allocates the byte count a tag declares before reading, so none may declare more than is there."""
    pos, seen = 0, 0
    while pos + 8 <= len(body) and (parts is None or seen < parts):
        word, size = struct.unpack_from(order + "II", body, pos)
        if word >> 16:                       # small data element: up to 4 bytes inside its 8-byte tag
            if word >> 16 > 4:
                return False
            pos += 8
        else:
            if pos + 8 + size > len(body):
                return False
            pos += 8 + -(-size // 8) * 8    # parts are padded to 8 bytes
        seen += 1
    return parts is None or seen == parts


def _tag(order: str, size: int) -> bytes:
    return struct.pack(order + "II", _MI_MATRIX, size)


class _File:
    """One session file checked from its headers: the 24 variables it holds, not yet loaded."""

    def __init__(self, path: Path, modality: str, subject: int, session: int):
        self.path, self.modality, self.subject, self.session = path, modality, subject, session
        self.keys = [MODALITIES[modality][1].format(t) for t in range(1, TRIALS_PER_SESSION + 1)]
        raw, self.order = _read_file(path, subject, session)
        self.header = raw[:128]
        try:
            elements = _elements(raw, self.order)
            heads = []
            for kind, payload in elements:
                head, _ = _body(kind, payload, self.order, HEAD_BYTES)
                if not _parts_fit(head, self.order, 3):   # flags, dimensions, name: what whosmat reads
                    raise _Damaged(f"damaged: a variable header over HEAD_BYTES = {HEAD_BYTES} or running past "
                                   "its end")
                heads.append(head)
        except _Damaged as exc:
            raise self.error(str(exc), "the file is damaged or truncated; copy it again") from None
        probe = self.header + b"".join(_tag(self.order, len(head)) + head for head in heads)
        try:
            listing = scipy.io.whosmat(io.BytesIO(probe))
        except Exception as exc:   # damage takes many forms inside scipy
            raise self.error(f"unreadable MAT-file ({type(exc).__name__}: {exc})",
                             "the file is damaged or truncated; copy it again") from None
        if len(listing) != len(elements):
            raise self.error("unreadable MAT-file (variable list)", "the file is damaged; copy it again")
        self._check_listing(listing, elements)

    def error(self, what: str, fix: str, trial: int | None = None) -> SeedIVFormatError:
        where = None if trial is None else f"{trial} ({self.keys[trial - 1]})"
        return format_error(self.path, self.subject, what, fix, where, self.session)

    def _check_listing(self, listing, elements) -> None:
        """Names, classes and shapes of the 24 variables, from whosmat alone; sets ``variables``."""
        folder, key, template, dimensions = MODALITIES[self.modality]
        by_name = {}
        for (name, shape, cls), (kind, payload) in zip(listing, elements):
            if name in by_name and name in self.keys:
                raise self.error(f"variable {name} stored twice", "the file is damaged; copy it again",
                                 self.keys.index(name) + 1)
            by_name[name] = (tuple(shape), cls, kind, payload)
        prefix = key.format("")
        extra = [n for n in by_name if re.fullmatch(rf"{prefix}\d+", n) and n not in self.keys]
        if extra:
            raise self.error(f"variable {extra[0]} beyond the {TRIALS_PER_SESSION} trials of a session",
                             f"a SEED-IV session has {prefix}1..{prefix}{TRIALS_PER_SESSION}; is this a SEED-IV "
                             "file?")
        expected = "(" + ", ".join("W" if n is None else str(n) for n in template) + ")"
        expected += " (" + " x ".join(dimensions) + ")"
        self.variables, total = [], 0
        for trial, name in enumerate(self.keys, 1):
            if name not in by_name:
                found = ", ".join(sorted(by_name)[:4]) or "none"
                raise self.error(f"variable {name} missing (variables found: {found})",
                                 f"a SEED-IV {folder} file holds {prefix}1..{prefix}{TRIALS_PER_SESSION}; is this "
                                 "the right folder? copy the file again", trial)
            shape, cls, kind, payload = by_name[name]
            if cls not in NUMERIC_CLASSES:
                what = "logical (true/false)" if cls == "logical" else cls
                raise self.error(f"a MATLAB {what} variable, not a numeric array",
                                 f"store a numeric {expected} array (double)", trial)
            if len(shape) != len(template):
                raise self.error(f"shape {shape} has {len(shape)} dimensions, expected {expected}",
                                 "is this the right modality folder? fix or regenerate the file", trial)
            for n, want, dimension in zip(shape, template, dimensions):
                if want is not None and n != want:
                    raise self.error(f"{n} {dimension} (shape {shape}), expected {want}: {expected}",
                                     "is this the right modality folder? fix or regenerate the file", trial)
            if shape[1] == 0:
                raise self.error("empty trial (0 windows)", "fix or regenerate the file", trial)
            if shape[1] > MAX_WINDOWS_PER_TRIAL:
                raise self.error(f"shape {shape} is over the limit of MAX_WINDOWS_PER_TRIAL = "
                                 f"{MAX_WINDOWS_PER_TRIAL} windows", "check that this is the right file", trial)
            total += shape[1]
            self.variables.append((name, shape, kind, payload))
        if total > MAX_WINDOWS_PER_FILE:
            raise self.error(f"{total} windows in its {TRIALS_PER_SESSION} trials, over the limit of "
                             f"MAX_WINDOWS_PER_FILE = {MAX_WINDOWS_PER_FILE}", "check that this is the right file")

    @property
    def windows(self) -> list[int]:
        return [shape[1] for _, shape, _, _ in self.variables]

    def load(self, nan_policy: str) -> list[np.ndarray]:
        """The 24 trials as float32 (W, features) arrays, validated; NaN/Inf refused or imputed."""
        bodies = []
        for trial, (name, shape, kind, payload) in enumerate(self.variables, 1):
            # flags, dimensions and name take < 128 bytes; real and imaginary parts at most 8 bytes a number
            limit = 128 + 2 * (16 + 8 * math.prod(shape))
            try:
                body, state = _body(kind, payload, self.order, limit)
            except _Damaged as exc:
                raise self.error(str(exc), "the file is damaged or truncated; copy it again", trial) from None
            if state == "more":
                raise self.error(f"holds more data than its shape {shape} needs", "the file is damaged or was "
                                 "crafted; copy it again", trial)
            if state == "truncated" or not _parts_fit(body, self.order):
                raise self.error("truncated or damaged: a part of the variable runs past its end",
                                 "the file is damaged or truncated; copy it again", trial)
            bodies.append(_tag(self.order, len(body)) + body)
        try:
            # mat_dtype=False: complex data stays complex (mat_dtype=True would silently drop the imaginary part)
            loaded = scipy.io.loadmat(io.BytesIO(self.header + b"".join(bodies)), variable_names=self.keys,
                                      mat_dtype=False, squeeze_me=False, struct_as_record=True,
                                      verify_compressed_data_integrity=True)
        except Exception as exc:   # damage takes many forms inside scipy
            raise self.error(f"unreadable MAT-file ({type(exc).__name__}: {exc})",
                             "the file is damaged or truncated; copy it again") from None
        return [self._trial(trial, loaded.get(name), shape, nan_policy)
                for trial, (name, shape, _, _) in enumerate(self.variables, 1)]

    def _trial(self, trial: int, value, shape: tuple[int, ...], nan_policy: str) -> np.ndarray:
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iufc":
            kind = getattr(value, "dtype", type(value).__name__)
            raise self.error(f"loads as {kind}, not a numeric array", "fix or regenerate the file", trial)
        if value.dtype.kind == "c":
            raise self.error("complex values", "features are real numbers; fix or regenerate the file", trial)
        if value.shape != shape:
            raise self.error(f"loads with shape {value.shape}, its header says {shape}", "the file is damaged; "
                             "copy it again", trial)
        array = value.astype(np.float64)   # any int or float fits: values are checked against float32 next
        too_large = int((np.abs(np.where(np.isfinite(array), array, 0.0)) > np.finfo(np.float32).max).sum())
        if too_large:
            raise self.error(f"{too_large} values beyond the float32 range (|x| > 3.4e38)",
                             "features are stored as float32; rescale or fix the file", trial)
        w = shape[1]
        # (62, W, 5) -> (W, 62 x 5) channel-major, as SEED-V's 310 columns; (31, W) -> (W, 31)
        array = (array.transpose(1, 0, 2).reshape(w, -1) if self.modality == "eeg" else array.T)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            if nan_policy != "impute":
                bad = int((~np.isfinite(array)).sum())
                raise self.error(f"{bad} NaN/Inf values", "clean the file or set data.nan_policy: impute", trial)
            array = impute_trial(array)
        return array


def _sessions_of(root: Path, subject: int) -> list[int]:
    """The sessions that have an EEG file of ``subject``."""
    return [session for session in range(1, len(SESSION_LABELS) + 1)
            if files_by_subject(root / MODALITIES["eeg"][0] / str(session)).get(subject)]


def read_subject(root: Path | str, subject: int, nan_policy: str = "error", complete: bool = True
                 ) -> SubjectRecording:
    """Read and validate one subject's 6 files (EEG and eye, 3 sessions): 72 trials, session-major.

    ``nan_policy``: ``error`` refuses NaN/Inf; ``impute`` fills them with :func:`impute_trial`.
    ``complete`` False (new recordings, for prediction): the sessions that have an EEG file (each file
    whole: its 24 trials), and no labels (every label is -1).
    """
    root = Path(root)
    if not 1 <= subject <= MAX_SUBJECT:
        raise format_error(root / MODALITIES["eeg"][0], subject, f"subject number outside 1..{MAX_SUBJECT}",
                           "number the subjects from 1")
    sessions = range(1, len(SESSION_LABELS) + 1) if complete else _sessions_of(root, subject) or [1]
    eeg, eye, trials = [], [], []
    for session in sessions:
        trials += range((session - 1) * TRIALS_PER_SESSION, session * TRIALS_PER_SESSION)
        files = {m: _File(_find_file(root, m, subject, session), m, subject, session) for m in MODALITIES}
        for trial, (n_eeg, n_eye) in enumerate(zip(files["eeg"].windows, files["eye"].windows), 1):
            if n_eeg != n_eye:   # from the headers, before either file is loaded
                raise files["eye"].error(f"{n_eye} eye windows but {n_eeg} EEG windows in {files['eeg'].path}",
                                         "both modalities must cover the same windows", trial)
        eeg += files["eeg"].load(nan_policy)
        eye += files["eye"].load(nan_policy)
    if complete:
        return SubjectRecording(subject, eeg, eye, list(SPEC.trial_labels))
    return SubjectRecording(subject, eeg, eye, [-1] * len(eeg), trials)


def read_dataset(root: Path | str, subjects: Iterable[int], nan_policy: str = "error", complete: bool = True
                 ) -> Iterator[SubjectRecording]:
    """Read ``subjects`` one by one with :func:`read_subject`; refuses a session file (either modality)
    whose numbers are identical to an earlier subject's or session's, which would put a test subject's
    data into training under another name (or one session's data under another session's labels)."""
    root = Path(root)
    seen: dict[tuple[str, str], tuple[int, int, Path]] = {}
    for subject in subjects:
        recording = read_subject(root, subject, nan_policy, complete)
        sessions = [SPEC.session_of(t) for t in recording.trials or range(len(recording.eeg))]
        for modality, trials in (("eeg", recording.eeg), ("eye", recording.eye)):
            for session in sorted(set(sessions)):
                digest = hashlib.sha256()
                for trial in (x for x, k in zip(trials, sessions) if k == session):
                    digest.update(np.asarray(trial.shape, dtype=np.int64).tobytes() + trial.tobytes())
                path = _find_file(root, modality, subject, session)
                if (key := (modality, digest.hexdigest())) in seen:
                    first, first_session, first_path = seen[key]
                    raise format_error(path, subject, f"the same recording as subject {first}, session "
                                       f"{first_session} ({first_path})", "each file must be another recording; "
                                       "remove the copy", session=session)
                seen[key] = subject, session, path
        yield recording


# --- writing ----------------------------------------------------------------------------------------


def write_subject(root: Path | str, recording: SubjectRecording) -> None:
    """Write one subject in the exact SEED-IV layout: per session an EEG file with ``de_LDS1..24`` of shape
    (62, W, 5) and an eye file with ``eye_1..24`` of shape (31, W), float64, MATLAB v7 (compressed v5). The
    real EEG files also hold de_movingAve*, psd_movingAve* and psd_LDS*; the reader skips them, so they are
    not written (they would triple the synthetic data for nothing).

    Each file is written to a temporary name in its folder, then renamed, so no half-written file remains.
    """
    from ..files import atomic_path

    n_channels, n_bands = len(seedv.CHANNELS), len(seedv.BANDS)
    if not len(recording.eeg) == len(recording.eye) == SPEC.n_trials:
        raise ValueError(f"a SEED-IV recording has {SPEC.n_trials} trials, got {len(recording.eeg)}")
    for session in range(1, len(SESSION_LABELS) + 1):
        first = (session - 1) * TRIALS_PER_SESSION
        eeg, eye = {}, {}
        for t in range(1, TRIALS_PER_SESSION + 1):
            x = np.asarray(recording.eeg[first + t - 1], dtype=np.float64)
            de = x.reshape(len(x), n_channels, n_bands).transpose(1, 0, 2)   # (W, 310) -> (62, W, 5)
            eeg[f"de_LDS{t}"] = de
            eye[f"eye_{t}"] = np.asarray(recording.eye[first + t - 1], dtype=np.float64).reshape(len(x), N_EYE).T
        for modality, variables in (("eeg", eeg), ("eye", eye)):
            path = subject_file(root, modality, recording.subject, session)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                scipy.io.savemat(fh, variables, format="5", do_compression=True)


def subjects_in(path: Path | str) -> tuple[Path, list[int]]:
    """(SEED-IV root, subjects) for a SEED-IV folder (the subjects of ``eeg_feature_smooth/<session>``) or for one
    subject's file in it (``.../eeg_feature_smooth/2/3_20160102.mat``)."""
    path = Path(path)
    folders = {folder for folder, *_ in MODALITIES.values()}
    if path.is_file():
        match = NAME.fullmatch(path.name)
        if not match or path.parent.name not in {"1", "2", "3"} or path.parent.parent.name not in folders:
            raise UserError(f"{path}: not a SEED-IV subject file — point at a SEED-IV folder or one subject's "
                            "file in it (eeg_feature_smooth/<session>/<subject>_<date>.mat or eye_feature_smooth/...)")
        return path.parent.parent.parent, [int(match.group(1))]
    if not path.is_dir():
        what = "not a regular file or folder" if path.exists() else "no such file or folder"
        raise UserError(f"{path}: {what} — point at a SEED-IV folder or one subject's file in it")
    eeg = path / MODALITIES["eeg"][0] / "1"
    subjects = sorted({s for k in range(1, len(SESSION_LABELS) + 1)
                       for s in files_by_subject(path / MODALITIES["eeg"][0] / str(k))})
    if not subjects:
        raise UserError(f"{path}: no SEED-IV subject files in {eeg} — point at a SEED-IV folder "
                        "(eeg_feature_smooth/<session>/<subject>_<date>.mat) or one file in it")
    return path, subjects
