"""The SEED-V on-disk format: constants, a safe reader with validation, and a writer.

Layout of a SEED-V folder (as distributed by its lab)::

    EEG_DE_features/<subject>_123.npz       keys data, label
    Eye_movement_features/<subject>_123.npz keys data, label

Each value is a *pickled dict* (stored as a bytes scalar) mapping trial 0..44 to an array: EEG
(n_windows, 310) = 62 channels x 5 bands, channel-major; eye (n_windows, 33); label (n_windows,).
Trial t belongs to session t // 15 + 1.

Pickles can execute code on load, so they are read with :class:`RestrictedUnpickler`, which admits only
the globals a dict of numpy arrays needs (numpy 1.x and 2.x module paths), maps each to a constructor of
ours that checks its arguments, builds only numeric arrays (never object dtype: its elements would be
pointers read from the file) and refuses everything else before anything runs. Sizes are bounded before
anything is inflated or allocated (``MAX_*`` below). Every problem a user's files can have is raised as
:class:`SeedVFormatError` with one line: ``<file>: subject <s>, trial <t>: <what is wrong> — <what to do>``.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from . import MAX_SUBJECT, DataFormatError, Spec, SubjectRecording, impute_trial
from . import format_error as _format_error

EMOTIONS = ("disgust", "fear", "sad", "neutral", "happy")  # label 0..4
N_CLASSES = len(EMOTIONS)
BANDS = ("delta", "theta", "alpha", "beta", "gamma")
CHANNELS = (
    "FP1 FPZ FP2 AF3 AF4 F7 F5 F3 F1 FZ F2 F4 F6 F8 FT7 FC5 FC3 FC1 FCZ FC2 FC4 FC6 FT8 T7 C5 C3 C1 CZ "
    "C2 C4 C6 T8 TP7 CP5 CP3 CP1 CPZ CP2 CP4 CP6 TP8 P7 P5 P3 P1 PZ P2 P4 P6 P8 PO7 PO5 PO3 POZ PO4 PO6 "
    "PO8 CB1 O1 OZ O2 CB2"
).split()
N_EEG = len(CHANNELS) * len(BANDS)  # 310
N_EYE = 33
N_SUBJECTS = 16
N_SESSIONS = 3
TRIALS_PER_SESSION = 15
N_TRIALS = N_SESSIONS * TRIALS_PER_SESSION  # 45

# Trial labels per session (the same clips, in the same order, for every subject).
SESSION_LABELS = (
    (4, 1, 3, 2, 0, 4, 1, 3, 2, 0, 4, 1, 3, 2, 0),
    (2, 1, 3, 0, 4, 4, 0, 3, 2, 1, 3, 4, 1, 2, 0),
    (2, 1, 3, 0, 4, 4, 0, 3, 2, 1, 3, 4, 1, 2, 0),
)
# Windows (4 s each) per trial: fixed by the film clip, hence identical for every subject.
SESSION_WINDOWS = (
    (18, 24, 59, 46, 36, 64, 74, 17, 66, 35, 43, 43, 58, 60, 38),
    (59, 47, 16, 31, 32, 14, 60, 57, 30, 24, 46, 29, 23, 54, 19),
    (72, 16, 41, 22, 13, 59, 21, 18, 57, 71, 55, 29, 51, 32, 44),
)
TRIAL_LABELS = tuple(label for session in SESSION_LABELS for label in session)
TRIAL_WINDOWS = tuple(n for session in SESSION_WINDOWS for n in session)

MODALITIES = {"eeg": ("EEG_DE_features", N_EEG), "eye": ("Eye_movement_features", N_EYE)}

SPEC = Spec(
    name="seed-v", classes=EMOTIONS, subjects=N_SUBJECTS, session_labels=SESSION_LABELS,
    session_windows=SESSION_WINDOWS, channels=tuple(CHANNELS), bands=BANDS, eye_features=N_EYE, window_seconds=4.0,
    block_trials=5, subject_dependent="blocks",
    source="SEED-V ReadMe (labels per session, 4-s DE windows, 62-channel order, 33 eye features) and the "
           "reproduced work's loader (the npz layout: pickled dicts of trials 0..44)")
# Eye feature groups in file order (33 features): name, count, typical magnitude (the synthetic generator's).
EYE_GROUPS = (
    ("pupil_x", 6, 3.5), ("pupil_y", 6, 3.5), ("dispersion", 4, 1.5), ("fixation_duration", 2, 2.5),
    ("blink_duration", 2, 1.2), ("saccade", 4, 1.8), ("events", 9, 2.0),
)


class SeedVFormatError(DataFormatError):
    """A SEED-V file that cannot be used; the message is one line naming file, subject and trial."""


def format_error(path, subject, what: str, fix: str, trial: int | None = None) -> SeedVFormatError:
    return _format_error(path, subject, what, fix, trial, error=SeedVFormatError)


def subject_file(root: Path | str, modality: str, subject: int) -> Path:
    return Path(root) / MODALITIES[modality][0] / f"{subject}_123.npz"


def files_by_subject(folder: Path) -> dict[int, list[Path]]:
    """Every ``.npz`` in ``folder`` whose name starts with a subject number (``1_123.npz``, ``01_123.npz``,
    ``1_20180804.npz``), by that number; sorted by name."""
    found: dict[int, list[Path]] = {}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
        if match := re.fullmatch(r"0*(\d{1,6})_.*\.npz", path.name):
            found.setdefault(int(match.group(1)), []).append(path)
    return found


# --- safe unpickling --------------------------------------------------------------------------------
#
# Limits on what one file may make the reader hold, each checked before the memory it bounds is taken.
# Real SEED-V subject files are ~5 MB (1823 windows x 310 float64); the limits leave a tenfold headroom and
# keep any one file under ~0.5 GB however it is built (shared sublists, memo references, compression).
MAX_WINDOWS_PER_TRIAL = 10_000    # 4-s windows: 11 hours; the longest SEED-V trial has 74
MAX_WINDOWS_PER_FILE = 20_000     # all 45 trials together: 22 hours; SEED-V has 1823
MAX_ARRAY_ELEMENTS = MAX_WINDOWS_PER_TRIAL * N_EEG   # any one array or nested list
MAX_MEMBER_BYTES = 64 * 2**20     # one npz member, uncompressed (read from the zip header before inflating):
                                  # a file at MAX_WINDOWS_PER_FILE needs 50 MB of float64 or of pickled floats
MAX_FILE_BYTES = 2 * MAX_MEMBER_BYTES   # one npz on disk: its two members
MAX_PICKLE_OPCODES = 2 * MAX_WINDOWS_PER_FILE * N_EEG   # a trial stored as Python lists takes one opcode
                                  # per number; a pickle of repeated memo references takes one per element
MAX_INT_BITS = 64                 # integers in a pickle: trial keys, labels and int arrays fit in 64 bits
MAX_NESTING = 3                   # list depth of one trial's value: (windows, features) or (windows, 1)
NUMERIC_KINDS = "biuf"            # bool, int, uint, float: what trial data and labels may be
PLAIN_KINDS = NUMERIC_KINDS + "cSU"   # dtypes without pointers: the only arrays the reader builds


class ForbiddenPickleError(pickle.UnpicklingError):
    pass


class LimitError(ValueError):
    """Input over one of the named limits above."""


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` in a pickle: the first argument of ``_reconstruct``, never callable."""


_NDARRAY = _NDArrayClass()


class _DType:
    """A plain (or, only to be unwrapped, object) dtype named by a short string, e.g. ``'<f8'``."""

    def __init__(self, spec, align=False, copy=False):
        if not (isinstance(spec, str) and len(spec) <= 16):
            raise ForbiddenPickleError(f"dtype {type(spec).__name__}")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            raise ForbiddenPickleError(f"dtype {spec!r}") from None
        if dtype.kind not in PLAIN_KINDS + "O" or dtype.fields is not None or dtype.subdtype is not None:
            raise ForbiddenPickleError(f"dtype {spec!r}")
        self.dtype = dtype

    def __setstate__(self, state):
        """numpy's dtype state ``(version, byteorder, subarray, names, fields, elsize, alignment, flags)``:
        only the byte order may be set; anything structured is refused."""
        if not (isinstance(state, tuple) and len(state) >= 8 and state[1] in ("<", ">", "=", "|")
                and state[2] is None and state[3] is None and state[4] is None):
            raise ForbiddenPickleError("dtype state")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _plain_array(raw, dtype: _DType, shape, fortran: bool = False) -> np.ndarray:
    """An array from raw bytes, after checking dtype, shape and size against each other and the limits."""
    if not isinstance(dtype, _DType) or dtype.dtype.kind not in PLAIN_KINDS:
        raise ForbiddenPickleError(f"array of dtype {getattr(dtype, 'dtype', dtype)}")
    if not (isinstance(shape, tuple) and len(shape) <= MAX_NESTING
            and all(type(n) is int and n >= 0 for n in shape)):
        raise ForbiddenPickleError("array shape")
    count = math.prod(shape)
    if count > MAX_ARRAY_ELEMENTS:
        raise LimitError(f"an array of shape {shape} is over MAX_ARRAY_ELEMENTS = {MAX_ARRAY_ELEMENTS}")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != count * dtype.dtype.itemsize:
        raise ForbiddenPickleError("array data of the wrong size")
    return np.frombuffer(raw, dtype=dtype.dtype, count=count).reshape(shape, order="F" if fortran else "C")


class _ArrayState:
    """What numpy's ``_reconstruct(ndarray, (0,), b'b')`` stands for until BUILD gives it its state."""

    value = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise ForbiddenPickleError("array state")
        _, shape, dtype, fortran, raw = state
        if isinstance(dtype, _DType) and dtype.dtype.kind == "O":
            # np.save(allow_pickle=True) of a single object (e.g. the trial dict): unwrap it. No object
            # array is ever built, since its elements would be pointers.
            if shape != () or not (isinstance(raw, list) and len(raw) == 1):
                raise ForbiddenPickleError("object array")
            self.value = raw[0]
        else:
            self.value = _plain_array(raw, dtype, shape, bool(fortran))


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise ForbiddenPickleError("_reconstruct of a non-array")
    return _ArrayState()


def _scalar(dtype, raw):
    return _plain_array(raw, dtype, ())[()]


def _frombuffer(buffer, dtype, shape, order):
    return _plain_array(bytes(buffer), dtype, shape, order == "F")


def _encode(text, encoding="utf-8"):
    """Protocol-2 pickles from Python 3 store bytes as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ForbiddenPickleError("_codecs.encode")
    return text.encode("latin1")


def _empty_bytes(*args):
    """Protocol 2 stores ``b''`` as ``bytes()`` (the empty data of an empty array)."""
    if args:
        raise ForbiddenPickleError("bytes(...)")
    return b""


_CONSTRUCTORS = {_DType, _reconstruct, _scalar, _frombuffer, _encode, _empty_bytes}
_ALLOWED_GLOBALS = {
    **{(module, name): value for prefix in ("numpy._core", "numpy.core")   # numpy 2.x and 1.x paths
       for module, name, value in ((f"{prefix}.multiarray", "_reconstruct", _reconstruct),
                                   (f"{prefix}.multiarray", "scalar", _scalar),
                                   (f"{prefix}.numeric", "_frombuffer", _frombuffer))},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


def _counted(load):
    """The loader of one opcode, counting it first: the pure-Python unpickler's time and the references it
    can stack up grow with the opcodes, not with the bytes (a 2-byte memo reference can repeat a row)."""
    def run(self):
        self.opcodes += 1
        if self.opcodes > MAX_PICKLE_OPCODES:
            raise LimitError(f"a pickle of more than MAX_PICKLE_OPCODES = {MAX_PICKLE_OPCODES} opcodes")
        load(self)
    return run


def _forbidden_opcode(name: str):
    def refuse(self):
        raise ForbiddenPickleError(f"pickle opcode {name}")
    return refuse


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that builds only dicts, lists, numbers, strings and numeric numpy arrays.

    Built on the pure-Python unpickler so that every opcode that calls something is ours: globals resolve
    only to the validating constructors above (never to numpy itself), REDUCE calls only those, BUILD sets
    state only on their placeholders, and the generic object opcodes are refused. No object-dtype array
    is ever created, so no pointer is ever read from the file's bytes.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    for _opcode in ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID",
                    "NEXT_BUFFER", "READONLY_BUFFER"):
        dispatch[getattr(pickle, _opcode)[0]] = _forbidden_opcode(_opcode)

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenPickleError(f"{module}.{name}") from None

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in _CONSTRUCTORS or not isinstance(args, tuple):
            raise ForbiddenPickleError(f"call of {type(func).__name__}")
        self.stack[-1] = func(*args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, (_DType, _ArrayState)):
            raise ForbiddenPickleError(f"state of {type(target).__name__}")
        target.__setstate__(state)
    dispatch[pickle.BUILD[0]] = load_build

    dispatch = {code: _counted(load) for code, load in dispatch.items()}
    opcodes = 0


def _resolve(obj, memo: dict | None = None, depth: int = 0):
    """Replace the placeholders of a loaded pickle by what they stand for. Memoized by identity, so a
    small pickle of shared nested lists costs as little to resolve as it did to load."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if depth > MAX_NESTING + 1:   # the trial dict, then a trial's (windows, features) or (windows, 1)
        raise LimitError(f"containers nested deeper than {MAX_NESTING + 1} levels (MAX_NESTING)")
    if isinstance(obj, _ArrayState):
        out = _resolve(obj.value, memo, depth)
    elif isinstance(obj, _DType):
        raise ForbiddenPickleError("a bare dtype")
    elif isinstance(obj, int) and obj.bit_length() > MAX_INT_BITS:
        raise LimitError(f"an integer of {obj.bit_length()} bits, over MAX_INT_BITS = {MAX_INT_BITS}")
    elif isinstance(obj, dict):
        out = {_resolve(k, memo, depth + 1): _resolve(v, memo, depth + 1) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple)):
        out = [_resolve(v, memo, depth + 1) for v in obj]
    else:
        out = obj
    memo[id(obj)] = out
    return out


def safe_loads(payload: bytes):
    """Unpickle bytes with :class:`RestrictedUnpickler`; raises ForbiddenPickleError on anything but
    plain containers, numbers and numeric arrays, and LimitError over the size limits."""
    if len(payload) > MAX_MEMBER_BYTES:
        raise LimitError(f"a pickle of {len(payload)} bytes is over MAX_MEMBER_BYTES = {MAX_MEMBER_BYTES}")
    return _resolve(RestrictedUnpickler(io.BytesIO(payload)).load())


def _read_npz_member(zf: zipfile.ZipFile, key: str):
    """The member ``key`` of an npz: a bytes scalar (the usual layout), a pickled object, or an array.

    The uncompressed size is taken from the zip header and checked before anything is inflated; zipfile
    never inflates past it (a member whose data disagrees fails its CRC check)."""
    info = zf.getinfo(f"{key}.npy")
    if info.file_size > MAX_MEMBER_BYTES:
        raise LimitError(f"member '{key}' declares {info.file_size} bytes uncompressed, over "
                         f"MAX_MEMBER_BYTES = {MAX_MEMBER_BYTES}")
    with zf.open(info) as fh:
        raw = fh.read(MAX_MEMBER_BYTES + 1)
    fh = io.BytesIO(raw)
    version = np.lib.format.read_magic(fh)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(fh)
    if dtype.hasobject:  # np.save(..., allow_pickle=True) wrote a pickle after the header
        return safe_loads(raw[fh.tell():])
    if dtype.kind == "S" and shape == ():   # the usual SEED-V layout: a pickle stored as a bytes scalar
        body = raw[fh.tell():]
        if len(body) != dtype.itemsize:
            raise ValueError(f"member '{key}' is truncated")
        return body.rstrip(b"\0")
    if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ForbiddenPickleError(f"member '{key}' of dtype {dtype}")
    return _plain_array(raw[fh.tell():], _DType(dtype.str), tuple(shape), fortran_order)


# --- reading and validation -------------------------------------------------------------------------


def _load_trial_dicts(path: Path, subject: int, labelled: bool = True) -> tuple[dict, dict]:
    """The ``data`` and ``label`` dicts of one npz file, safely unpickled within the limits (``labelled``
    False: ``label`` may be absent, and is then an empty dict)."""
    if path.exists() and not path.is_file():     # never opened: a pipe or a device would block or never end
        raise format_error(path, subject, "not a regular file (a directory, pipe or device)",
                           "put the subject's .npz file here")
    if not path.is_file():
        missing = "file missing" + (" (a broken symbolic link)" if path.is_symlink() else "")
        raise format_error(path, subject, missing, "check data.raw_dir and data.subjects")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise format_error(path, subject, f"file of {size} bytes is over MAX_FILE_BYTES = {MAX_FILE_BYTES}",
                           "a SEED-V subject file is a few MB; check that this is the right file")
    members, key = {}, None
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in ("data", "label") if labelled else ("data",):
                if f"{key}.npy" not in names:
                    raise format_error(path, subject, f"key '{key}' missing",
                                       "the npz must hold 'data' and 'label' as in SEED-V")
            for key in [k for k in ("data", "label") if f"{k}.npy" in names]:
                members[key] = _read_npz_member(zf, key)
                if isinstance(members[key], bytes):
                    try:
                        members[key] = safe_loads(members[key])
                    except (ForbiddenPickleError, LimitError):
                        raise
                    except Exception as exc:
                        raise format_error(path, subject, f"'{key}' is not a readable pickle "
                                           f"({type(exc).__name__})", "the file is damaged or truncated; "
                                           "copy it again") from None
    except SeedVFormatError:
        raise
    except ForbiddenPickleError as exc:
        raise format_error(path, subject, f"forbidden pickle content in '{key}' ({exc}); nothing was "
                           "executed", "only dicts of numeric numpy arrays are accepted; replace the file"
                           ) from None
    except LimitError as exc:
        raise format_error(path, subject, f"'{key}': {exc}", "check that this is the right file") from None
    except Exception as exc:  # zip/npy/pickle damage in any of its many forms
        what = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
        member = f"'{key}': " if key else ""
        raise format_error(path, subject, f"unreadable npz ({member}{what})",
                           "the file is damaged or truncated; copy it again") from None
    for key, member in members.items():
        if not isinstance(member, dict):
            raise format_error(path, subject, f"'{key}' is a {type(member).__name__}, not a dict of trials",
                               "store a pickled dict trial -> array as SEED-V does")
    return members["data"], members.get("label", {})


def _trial_number(key) -> int | None:
    """A trial key as an int: ints, numpy ints, integral floats and digit strings; None otherwise."""
    if isinstance(key, (bool, np.bool_)):
        return None
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, (float, np.floating)) and math.isfinite(key) and key == int(key):
        return int(key)
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 4:
        return int(key)
    return None


def _trial_keys(path: Path, subject: int, key: str, trials: dict, complete: bool = True) -> dict[int, object]:
    """``trials`` keyed by int trial numbers: all of 0..44, or (``complete`` False) any of them, at least one."""
    by_int = {}
    for k, value in trials.items():
        number = _trial_number(k)
        if number is None:
            shown = repr(k)[:40] if isinstance(k, (int, float, str, np.number)) else type(k).__name__
            raise format_error(path, subject, f"'{key}' has a trial key {shown} that is not an integer",
                               "trial keys must be the integers 0..44")
        by_int[number] = value
    if not complete and by_int and set(by_int) <= set(range(N_TRIALS)) and len(by_int) == len(trials):
        return dict(sorted(by_int.items()))   # trial order, whatever the file's
    if set(by_int) != set(range(N_TRIALS)) or len(by_int) != len(trials):
        missing = sorted(set(range(N_TRIALS)) - set(by_int))
        extra = sorted(set(by_int) - set(range(N_TRIALS)))[:10]
        duplicated = " (some trials given twice)" if len(by_int) != len(trials) else ""
        if not complete:
            raise format_error(path, subject, f"'{key}' trial set is not a part of 0..44 (extra {extra})"
                               f"{duplicated}", "trial keys are the integers 0..44, at least one")
        raise format_error(path, subject, f"'{key}' trial set is not 0..44 (missing {missing}, extra {extra})"
                           f"{duplicated}", "every subject file must hold all 45 trials")
    return dict(sorted(by_int.items()))   # trial order, whatever the file's


def _nested_shape(value, memo: dict, depth: int = 0) -> tuple[int, ...] | None:
    """Shape of nested lists of numbers (or of arrays), without building anything; None if ragged or not
    numeric. Memoized by identity, so shared sublists are measured once."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, np.ndarray):
        shape = value.shape if value.dtype.kind in NUMERIC_KINDS else None
    elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        shape = ()
    elif isinstance(value, list) and depth < MAX_NESTING:
        shapes = {_nested_shape(v, memo, depth + 1) for v in value}
        shape = (len(value), *shapes.pop()) if len(shapes) == 1 and None not in shapes else (
            (0,) if not value else None)
    else:
        shape = None
    memo[id(value)] = shape
    return shape


def _shape(path, subject, trial, what: str, value, memo: dict) -> tuple[int, ...]:
    """The shape a trial's value would have as an array, checked against the per-trial limits before
    anything is converted (``memo`` shares the measurement of shared sublists across trials)."""
    if isinstance(value, np.ndarray):
        shape = value.shape if value.dtype.kind in NUMERIC_KINDS else None
    else:
        shape = _nested_shape(value, memo)
    if shape is None:
        kind = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
        raise format_error(path, subject, f"{what} is a {kind} that is not a rectangular array of numbers",
                           "store a numeric (n_windows, features) array per trial", trial)
    if math.prod(shape) > MAX_ARRAY_ELEMENTS or (shape and shape[0] > MAX_WINDOWS_PER_TRIAL):
        raise format_error(path, subject, f"{what} of shape {shape} is over the limit of "
                           f"MAX_WINDOWS_PER_TRIAL = {MAX_WINDOWS_PER_TRIAL} windows",
                           "check that this is the right file", trial)
    return shape


def _as_float_matrix(path, subject, trial, value, shape: tuple[int, ...], width: int) -> np.ndarray:
    if len(shape) != 2:
        raise format_error(path, subject, f"data has shape {shape}, expected a numeric (n_windows, {width}) "
                           "array", "fix or regenerate the file", trial)
    if shape[0] == 0:
        raise format_error(path, subject, "empty trial (0 windows)", "fix or regenerate the file", trial)
    if shape[1] != width:
        raise format_error(path, subject, f"data has {shape[1]} features per window, expected {width}",
                           "is this the right modality folder?", trial)
    array = np.asarray(value).astype(np.float64, copy=False)   # ints are <= 64 bits: float64 holds any mix
    too_large = int((np.abs(np.where(np.isfinite(array), array, 0.0)) > np.finfo(np.float32).max).sum())
    if too_large:
        raise format_error(path, subject, f"{too_large} values beyond the float32 range (|x| > 3.4e38)",
                           "features are stored as float32; rescale or fix the file", trial)
    return array.astype(np.float32)


def _trial_label(path, subject, trial, value, n_windows: int, memo: dict) -> int:
    shape = _shape(path, subject, trial, "label", value, memo)
    # one label per window, as (n,) or (n, 1), or one for the whole trial
    if not (shape in ((), (1,), (1, 1)) or shape in ((n_windows,), (n_windows, 1))):
        raise format_error(path, subject, f"label has shape {shape}, expected ({n_windows},) numbers, "
                           "one per window, or a single number", "fix or regenerate the file", trial)
    labels = np.asarray(value).reshape(-1).astype(np.float64)
    if not np.isfinite(labels).all():
        raise format_error(path, subject, "label is NaN or infinite",
                           "labels are 0 disgust, 1 fear, 2 sad, 3 neutral, 4 happy", trial)
    if not np.all(labels == labels[0]):
        shown = sorted(set(labels.tolist()))[:10]
        raise format_error(path, subject, f"labels vary within the trial ({shown})",
                           "a trial has one emotion label", trial)
    label = labels[0].item()
    if not (label == int(label) and 0 <= label < len(EMOTIONS)):
        raise format_error(path, subject, f"label {label!r} is not one of 0..4",
                           "labels are 0 disgust, 1 fear, 2 sad, 3 neutral, 4 happy", trial)
    return int(label)


def read_subject(root: Path | str, subject: int, nan_policy: str = "error", complete: bool = True
                 ) -> SubjectRecording:
    """Read and validate one subject's EEG and eye files.

    ``nan_policy``: ``error`` refuses NaN/Inf; ``impute`` fills them with :func:`impute_trial`.
    ``complete`` False (new recordings, for prediction): any of the 45 trials (the same in both files), and
    labels are neither needed nor read (every label is -1).
    """
    if not 1 <= subject <= MAX_SUBJECT:
        raise format_error(subject_file(root, "eeg", subject), subject, f"subject number outside 1..{MAX_SUBJECT}",
                           "number the subjects from 1")
    modalities = {}
    for modality, (_, width) in MODALITIES.items():
        path = subject_file(root, modality, subject)
        data, label = _load_trial_dicts(path, subject, labelled=complete)
        data = _trial_keys(path, subject, "data", data, complete)
        label = _trial_keys(path, subject, "label", label) if complete else {}
        memo = {}
        shapes = {trial: _shape(path, subject, trial, "data", value, memo) for trial, value in data.items()}
        windows = sum(shape[0] for shape in shapes.values() if shape)
        if windows > MAX_WINDOWS_PER_FILE:   # checked before any trial is converted
            raise format_error(path, subject, f"{windows} windows in its {len(data)} trials, over the limit of "
                               f"MAX_WINDOWS_PER_FILE = {MAX_WINDOWS_PER_FILE}", "check that this is the right file")
        arrays, labels = [], []
        for trial in data:
            array = _as_float_matrix(path, subject, trial, data[trial], shapes[trial], width)
            if not np.isfinite(array).all():
                if nan_policy != "impute":
                    bad = int((~np.isfinite(array)).sum())
                    raise format_error(path, subject, f"{bad} NaN/Inf values",
                                       "clean the file or set data.nan_policy: impute", trial)
                array = impute_trial(array)
            arrays.append(array)
            labels.append(_trial_label(path, subject, trial, label[trial], len(array), memo) if complete else -1)
        modalities[modality] = (path, list(data), arrays, labels)

    (eeg_path, trials, eeg, eeg_labels), (eye_path, eye_trials, eye, eye_labels) = (modalities["eeg"],
                                                                                    modalities["eye"])
    if eye_trials != trials:
        differ = sorted(set(trials) ^ set(eye_trials))[:10]
        raise format_error(eye_path, subject, f"trials {differ} are in one of {eeg_path.name} and this file only",
                           "both modalities must hold the same trials")
    for trial in range(len(trials)):
        if len(eeg[trial]) != len(eye[trial]):
            raise format_error(eye_path, subject, f"{len(eye[trial])} eye windows but {len(eeg[trial])} "
                               f"EEG windows in {eeg_path}", "both modalities must cover the same windows",
                               trials[trial])
        if eeg_labels[trial] != eye_labels[trial]:
            raise format_error(eye_path, subject, f"label {eye_labels[trial]} differs from the EEG label "
                               f"{eeg_labels[trial]} in {eeg_path}", "both modalities must agree", trials[trial])
    return SubjectRecording(subject, eeg, eye, eeg_labels, None if complete else trials)


def read_dataset(root: Path | str, subjects: Iterable[int], nan_policy: str = "error", complete: bool = True
                 ) -> Iterator[SubjectRecording]:
    """Read ``subjects`` one by one with :func:`read_subject`, after checking that each has exactly one
    file per modality; refuses a recording (either modality) identical to an earlier subject's, which
    would put a test subject's data into training under another subject's name."""
    root, subjects = Path(root), list(subjects)
    for modality, (folder, _) in MODALITIES.items():
        found = files_by_subject(root / folder)
        for subject in subjects:
            canonical = subject_file(root, modality, subject)
            others = [path.name for path in found.get(subject, []) if path.name != canonical.name]
            if others and canonical.exists():
                raise format_error(canonical, subject, f"a second file names this subject: {others[0]}",
                                   "keep one file per subject (remove or move the other)")
            if others:
                raise format_error(canonical, subject, f"file missing, but {others[0]} is there",
                                   f"rename it {canonical.name}")
    seen: dict[tuple[str, str], tuple[int, Path]] = {}
    for subject in subjects:
        recording = read_subject(root, subject, nan_policy, complete)
        for modality, trials in (("eeg", recording.eeg), ("eye", recording.eye)):
            digest = hashlib.sha256()
            for trial in trials:
                digest.update(np.asarray(trial.shape, dtype=np.int64).tobytes() + trial.tobytes())
            path = subject_file(root, modality, subject)
            if (key := (modality, digest.hexdigest())) in seen:
                first, first_path = seen[key]
                raise format_error(path, subject, f"the same recording as subject {first} ({first_path})",
                                   "each subject must be another person's recording; remove the copy")
            seen[key] = subject, path
        yield recording


def subjects_in(data: Path) -> tuple[Path, list[int]]:
    """(SEED-V root, subjects) for a folder or one subject's file in it."""
    if data.is_file():
        match = re.fullmatch(r"(\d+)_123\.npz", data.name)
        if not match or data.parent.name not in {folder for folder, _ in MODALITIES.values()}:
            raise DataFormatError(f"{data}: not a SEED-V subject file (<subject>_123.npz in EEG_DE_features/ or "
                                  "Eye_movement_features/)")
        return data.parent.parent, [int(match.group(1))]
    if not data.is_dir():
        raise DataFormatError(f"{data}: no such file or folder — point at a SEED-V folder or one subject's file in "
                              "it")
    eeg = data / MODALITIES["eeg"][0]
    subjects = sorted(files_by_subject(eeg))
    if not subjects:
        raise DataFormatError(f"{data}: no SEED-V subject files in {eeg} — point at a SEED-V folder or file")
    return data, subjects


# --- writing ----------------------------------------------------------------------------------------


def write_subject(root: Path | str, recording: SubjectRecording) -> None:
    """Write one subject in the exact SEED-V layout (pickled dicts stored as bytes in an npz).

    Each file is written to a temporary name in its folder, then renamed, so no half-written file remains.
    """
    from ..files import atomic_path

    per_window_labels = {t: np.full(len(x), recording.labels[t], dtype=np.float64)
                         for t, x in enumerate(recording.eeg)}
    for modality, arrays in (("eeg", recording.eeg), ("eye", recording.eye)):
        data = {t: np.asarray(x, dtype=np.float64) for t, x in enumerate(arrays)}
        with atomic_path(subject_file(root, modality, recording.subject)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, data=pickle.dumps(data), label=pickle.dumps(per_window_labels))
