"""SEED-IV files: read exactly as distributed, written in the same layout, and refused with one line when
they cannot be used (before scipy is handed anything it would trust blindly).

Files are built here with ``scipy.io.savemat`` directly (or byte by byte), not with the module's writer, so
the reader is checked against the real layout rather than against itself. Trials have 2-3 windows: fast.
"""

import contextlib
import os
import shutil
import signal
import struct
import zlib

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from pipeline.datasets import SubjectRecording, seediv, seedv
from pipeline.datasets.seediv import SeedIVFormatError, read_dataset, read_subject
from pipeline.errors import UserError

# As published (SEED-IV ReadMe), typed in again rather than taken from the module under test.
PUBLISHED_LABELS = [
    [1, 2, 3, 0, 2, 0, 0, 1, 0, 1, 2, 1, 1, 1, 2, 3, 2, 2, 3, 3, 0, 3, 0, 3],
    [2, 1, 3, 0, 0, 2, 0, 2, 3, 3, 2, 3, 2, 0, 1, 1, 2, 1, 0, 3, 0, 1, 3, 1],
    [1, 2, 2, 1, 3, 3, 3, 1, 1, 2, 1, 0, 2, 3, 3, 0, 2, 3, 0, 0, 2, 0, 1, 0],
]
SESSIONS = (1, 2, 3)


def windows(session, trial):
    """Windows of trial 1..24 in a session: 2 or 3 (sessions 1 and 3 alike, session 2 the other way)."""
    return 2 + (session + trial) % 2


def date(subject, session):
    """A real-looking recording date, different per subject and session: 1_20160518.mat."""
    return f"2016{session + 4:02d}{subject + 10 * (session - 1) + 8:02d}"


def make_truth(subject, seed=None):
    """Per session, the 24 EEG (62, W, 5) and eye (31, W) arrays as the lab stores them."""
    rng = np.random.default_rng(subject if seed is None else seed)
    return {s: {"eeg": [rng.normal(10, 3, (62, windows(s, t), 5)) for t in range(1, 25)],
                "eye": [rng.normal(2, 1, (31, windows(s, t))) for t in range(1, 25)]} for s in SESSIONS}


def path_of(root, modality, subject, session):
    folder = {"eeg": "eeg_feature_smooth", "eye": "eye_feature_smooth"}[modality]
    return root / folder / str(session) / f"{subject}_{date(subject, session)}.mat"


def write_real(root, subject, truth):
    """One subject as distributed: de_LDS among the other feature kinds; session 2 uncompressed (v6-style),
    the others compressed (MATLAB's default v7)."""
    for session in SESSIONS:
        eeg = {}
        for t, de in enumerate(truth[session]["eeg"], 1):
            eeg.update({f"de_movingAve{t}": de + 0.5, f"psd_movingAve{t}": 2 * de, f"de_LDS{t}": de,
                        f"psd_LDS{t}": 3 * de})
        eye = {f"eye_{t}": x for t, x in enumerate(truth[session]["eye"], 1)}
        for modality, variables in (("eeg", eeg), ("eye", eye)):
            path = path_of(root, modality, subject, session)
            path.parent.mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(path, variables, do_compression=session != 2)


@pytest.fixture
def real(tmp_path):
    """A two-subject SEED-IV folder written with savemat: (root, {subject: truth})."""
    root = tmp_path / "SEED_IV"
    truths = {s: make_truth(s) for s in (1, 2)}
    for subject, truth in truths.items():
        write_real(root, subject, truth)
    return root, truths


def resave(path, change, compress=True):
    variables = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    change(variables)
    scipy.io.savemat(path, variables, do_compression=compress)


def where(root, modality="eeg", session=1, trial=None, subject=1):
    """What a message must name: the file (relative to the root) and 'subject s, session k[, trial t (key)]'."""
    key = {"eeg": "de_LDS", "eye": "eye_"}[modality]
    at = f"subject {subject}, session {session}" + (f", trial {trial} ({key}{trial})" if trial else "")
    return str(path_of(root, modality, subject, session).relative_to(root.parent)), at


def refused(call, *parts, error=SeedIVFormatError):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and " — " in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


class Handed(BaseException):
    """Raised by a scipy function a refusal must come before (a BaseException: no ``except Exception``
    in the reader can turn it into a refusal)."""


def forbid(monkeypatch, *names):
    def handed(*args, **kwargs):
        raise Handed("scipy was handed the file")
    for name in names:
        monkeypatch.setattr(scipy.io, name, handed)


@contextlib.contextmanager
def no_hang(seconds=10):
    """A read that blocks (opening a FIFO) fails the test instead of hanging it."""
    def alarm(*_):
        raise TimeoutError("the reader blocked")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- MAT v5 built byte by byte (for what savemat cannot write: big-endian, lying sizes) ------------------


def part(mdtype, payload, order="<", declared=None):
    size = len(payload) if declared is None else declared
    return struct.pack(order + "II", mdtype, size) + payload + bytes(-len(payload) % 8)


def array_body(name, values=None, dims=None, order="<", mclass=6, declared=None):
    """An miMATRIX body: flags (class 6 = double), dimensions, name, real part (miDOUBLE = 9)."""
    dims = np.shape(values) if dims is None else dims
    data = b"" if values is None else np.asarray(values, dtype=order + "f8").tobytes(order="F")
    return (part(6, struct.pack(order + "II", mclass, 0), order) + part(5, struct.pack(f"{order}{len(dims)}i", *dims), order)
            + part(1, name.encode(), order) + part(9, data, order, declared))


def element(body, compress=False, order="<"):
    matrix = struct.pack(order + "II", 14, len(body)) + body
    if not compress:
        return matrix
    packed = zlib.compress(matrix)
    return struct.pack(order + "II", 15, len(packed)) + packed


def mat_header(order="<"):
    return (b"MATLAB 5.0 MAT-file, hand-built".ljust(116, b" ") + bytes(8) + struct.pack(order + "H", 0x0100)
            + (b"IM" if order == "<" else b"MI"))


def replace_variable(path, name, new_element):
    """Drop ``name`` from a file (re-saved uncompressed) and append a hand-built element in its place."""
    resave(path, lambda v: v.pop(name), compress=False)
    with open(path, "ab") as fh:
        fh.write(new_element)


# --- reading the real layout ------------------------------------------------------------------------


def test_files_as_distributed_are_read_exactly(real):
    root, truths = real
    for subject, truth in truths.items():
        rec = read_subject(root, subject)
        assert rec.subject == subject and len(rec.eeg) == len(rec.eye) == len(rec.labels) == 72
        assert rec.labels == [label for session in PUBLISHED_LABELS for label in session]
        for i in range(72):                    # session-major: trial i is session i // 24 + 1, trial i % 24 + 1
            de, eye = truth[i // 24 + 1]["eeg"][i % 24], truth[i // 24 + 1]["eye"][i % 24]
            w = de.shape[1]
            assert rec.eeg[i].dtype == np.float32 and rec.eeg[i].shape == (w, 310) and rec.eeg[i].flags.c_contiguous
            assert rec.eye[i].dtype == np.float32 and rec.eye[i].shape == (w, 31)
            np.testing.assert_array_equal(rec.eeg[i], de.transpose(1, 0, 2).reshape(w, 310).astype(np.float32))
            np.testing.assert_array_equal(rec.eye[i], eye.T.astype(np.float32))
        # channel-major columns: column c * 5 + b is channel c, band b
        de = truth[2]["eeg"][4]                # session 2, trial 5 (de_LDS5): index 24 + 4
        assert rec.eeg[28][1, 61 * 5 + 4] == np.float32(de[61, 1, 4])   # O2... CB2, gamma, window 1
        assert rec.eeg[28][0, 1 * 5 + 0] == np.float32(de[1, 0, 0])     # FPZ, delta
        assert rec.eye[28][1, 30] == np.float32(truth[2]["eye"][4][30, 1])


def test_single_and_integer_classes_and_big_endian_files_are_read(real):
    root, truths = real
    truth = truths[1]
    eeg = path_of(root, "eeg", 1, 1)
    resave(eeg, lambda v: v.update(de_LDS3=v["de_LDS3"].astype(np.float32), de_LDS4=np.arange(62 * 3 * 5, dtype=np.int16)
                                   .reshape(62, 3, 5)))
    # a big-endian file, built by hand (savemat writes native order only), half of it compressed
    eye = path_of(root, "eye", 1, 3)
    eye.write_bytes(mat_header(">") + b"".join(element(array_body(f"eye_{t}", x, order=">"), t % 2 == 0, ">")
                                               for t, x in enumerate(truth[3]["eye"], 1)))
    rec = read_subject(root, 1)
    np.testing.assert_array_equal(rec.eeg[2], truth[1]["eeg"][2].astype(np.float32).transpose(1, 0, 2).reshape(-1, 310))
    assert rec.eeg[3][2, 7] == np.arange(930).reshape(62, 3, 5)[1, 2, 2]
    for t in range(24):
        np.testing.assert_array_equal(rec.eye[48 + t], truth[3]["eye"][t].T.astype(np.float32))


def test_read_dataset_reads_one_subject_at_a_time(real):
    root, _ = real
    path_of(root, "eye", 2, 3).write_bytes(b"damaged")
    subjects = read_dataset(root, [1, 2])
    assert next(subjects).subject == 1                     # subject 2's damage is not read yet
    refused(lambda: next(subjects), where(root, "eye", 3, subject=2)[0], "subject 2, session 3")


# --- writing ----------------------------------------------------------------------------------------


def recording(subject, seed):
    rng = np.random.default_rng(seed)
    n = [windows(1 + i // 24, 1 + i % 24) for i in range(72)]
    return SubjectRecording(subject, [rng.normal(size=(w, 310)).astype(np.float32) for w in n],
                            [rng.normal(size=(w, 31)).astype(np.float32) for w in n], list(seediv.SPEC.trial_labels))


def test_write_subject_then_read_dataset_is_exact(tmp_path):
    recs = [recording(1, 0), recording(3, 1)]
    for rec in recs:
        seediv.write_subject(tmp_path, rec)
    back = list(read_dataset(tmp_path, [1, 3]))
    for rec, got in zip(recs, back):
        assert got.subject == rec.subject and got.labels == rec.labels
        for a, b in zip(rec.eeg + rec.eye, got.eeg + got.eye):
            assert b.dtype == np.float32
            np.testing.assert_array_equal(a, b)
    # the exact layout, readable by any MATLAB-style reader: (62, W, 5) and (31, W) doubles
    path = seediv.subject_file(tmp_path, "eeg", 3, 2)
    assert path == tmp_path / "eeg_feature_smooth" / "2" / "3_20160102.mat"
    assert ("de_LDS24", (62, 2, 5), "double") in scipy.io.whosmat(path)
    mat = scipy.io.loadmat(path)
    assert mat["de_LDS5"].dtype == np.float64 and mat["de_LDS5"].shape == (62, 3, 5)
    assert mat["de_LDS5"][61, 1, 4] == recs[1].eeg[24 + 4][1, 309]       # channel-major back to (62, W, 5)
    eye = scipy.io.loadmat(seediv.subject_file(tmp_path, "eye", 3, 2))["eye_5"]
    assert eye.shape == (31, 3) and eye[30, 1] == recs[1].eye[28][1, 30]
    assert not list(tmp_path.rglob(".*"))                                 # no temporary file left behind


def test_synthetic_generator_writes_readable_seediv(tmp_path):
    from pipeline.synthetic import generate_subject

    rec = generate_subject(0, 2, dataset=seediv)
    assert [len(x) for x in rec.eeg] == list(seediv.SPEC.trial_windows)
    seediv.write_subject(tmp_path, rec)
    got = read_subject(tmp_path, 2)
    for a, b in zip(rec.eeg + rec.eye, got.eeg + got.eye):
        np.testing.assert_array_equal(np.asarray(a, dtype=np.float32), b)


def test_spec():
    spec = seediv.SPEC
    assert spec.name == "seed-iv" and spec.classes == ("neutral", "sad", "fear", "happy") and spec.subjects == 15
    assert [list(s) for s in spec.session_labels] == PUBLISHED_LABELS and spec.n_trials == 72
    assert all(len(s) == 24 and min(s) >= 13 and max(s) <= 64 for s in spec.session_windows)
    assert spec.channels == tuple(seedv.CHANNELS) and spec.bands == seedv.BANDS and spec.widths == {"eeg": 310, "eye": 31}
    assert spec.blocks == 3 and spec.subject_dependent == "last-block" and spec.window_seconds == 4.0
    assert [g[0] for g in seediv.EYE_GROUPS] == [g[0] for g in seedv.EYE_GROUPS]
    assert [g[1] for g in seediv.EYE_GROUPS] == [6, 6, 4, 2, 2, 4, 7] and sum(g[1] for g in seediv.EYE_GROUPS) == 31
    assert type(spec).from_facts(spec.facts()) == spec
    assert issubclass(SeedIVFormatError, UserError)


# --- refusals ---------------------------------------------------------------------------------------


HDF5 = b"\x89HDF\r\n\x1a\n" + bytes(300)   # an HDF5 superblock's signature: a bare HDF5 file
V73 = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed May 18 10:00:00 2016 HDF5 schema 1.00 ."
       .ljust(116, b" ") + bytes(8) + b"\x00\x02IM").ljust(512, b"\0") + HDF5   # as MATLAB's save -v7.3 starts


def damage(root, kind, monkeypatch):
    """Damage subject 1 one way; return what the message must contain."""
    eeg1, eye1 = path_of(root, "eeg", 1, 1), path_of(root, "eye", 1, 1)
    eeg2, eye2 = path_of(root, "eeg", 1, 2), path_of(root, "eye", 1, 2)
    if kind == "session folder missing":
        shutil.rmtree(eye2.parent)
        return str(eye2.parent), "subject 1, session 2: session folder missing"
    if kind == "files not in session folders":
        for session in SESSIONS:
            shutil.rmtree(path_of(root, "eeg", 1, session).parent)
        (root / "eeg_feature_smooth" / "1_20160518.mat").write_bytes(b"")
        return "eeg_feature_smooth/1: subject 1, session 1: session folder missing (its .mat files lie directly in it)",
    if kind == "file missing":
        path_of(root, "eeg", 1, 3).unlink()
        return "eeg_feature_smooth/3/1_<date>.mat: subject 1, session 3: file missing — check data.raw_dir",
    if kind == "misnamed file":
        eye2.rename(eye2.with_name("sub1_20160601.mat"))
        return ("eye_feature_smooth/2/1_<date>.mat: subject 1, session 2: file missing, but sub1_20160601.mat is "
                "there — rename it 1_<date>.mat"),
    if kind == "two files":
        shutil.copy(eeg2, eeg2.with_name("01_20160301.mat"))
        return ("eeg_feature_smooth/2: subject 1, session 2: two files name this subject: 01_20160301.mat and "
                f"{eeg2.name}"),
    if kind in ("directory", "pipe", "device", "broken link"):
        eye2.unlink()
        {"directory": eye2.mkdir, "pipe": lambda: os.mkfifo(eye2), "device": lambda: eye2.symlink_to("/dev/zero"),
         "broken link": lambda: eye2.symlink_to(eye2.parent / "nowhere.mat")}[kind]()
        what = "file missing (a broken symbolic link)" if kind == "broken link" else "not a regular file"
        return *where(root, "eye", 2), what
    if kind == "too big":
        monkeypatch.setattr(seediv, "MAX_FILE_BYTES", 1000)
        return *where(root), "is over MAX_FILE_BYTES = 1000"
    if kind in ("v7.3", "hdf5"):
        eeg2.write_bytes(V73 if kind == "v7.3" else HDF5)
        return *where(root, session=2), "MATLAB v7.3 (HDF5)", "-v7"
    if kind == "empty file":
        eye1.write_bytes(b"")
        return *where(root, "eye"), "not a MAT-file (0 bytes"
    if kind == "garbage":
        eeg1.write_bytes(b"this is not a MAT-file at all " * 10)
        return *where(root), "not a MATLAB v5/v7 MAT-file"
    if kind in ("truncated compressed", "truncated uncompressed"):
        path = eeg1 if kind == "truncated compressed" else eeg2
        raw = path.read_bytes()
        path.write_bytes(raw[:len(raw) // 2])
        return *where(root, session=1 if path == eeg1 else 2), "truncated"
    if kind == "corrupt compressed data":
        raw = bytearray(eye1.read_bytes())
        raw[600:640] = bytes(40)
        eye1.write_bytes(bytes(raw))
        return where(root, "eye")
    if kind == "missing key":
        resave(eeg2, lambda v: v.pop("de_LDS7"))
        return *where(root, session=2, trial=7), "variable de_LDS7 missing"
    if kind == "eye file in the EEG folder":
        shutil.copy(eye1, eeg1)
        return *where(root, trial=1), "variable de_LDS1 missing (variables found: eye_1, eye_10"
    if kind == "extra trial":
        resave(eeg1, lambda v: v.update(de_LDS25=v["de_LDS1"]))
        return *where(root), "variable de_LDS25 beyond the 24 trials"
    if kind in ("cell", "struct", "char", "logical", "sparse"):
        value = {"cell": np.array([[1.0, 2.0]], dtype=object), "struct": {"x": 1.0}, "char": "features",
                 "logical": np.ones((62, 2, 5), bool), "sparse": scipy.sparse.csc_matrix(np.eye(3))}[kind]
        resave(eeg1, lambda v: v.update(de_LDS5=value))
        return *where(root, trial=5), f"a MATLAB {'logical (true/false)' if kind == 'logical' else kind} variable"
    if kind == "eeg 2-D":
        resave(eeg1, lambda v: v.update(de_LDS2=v["de_LDS2"][:, :, 0]))
        return *where(root, trial=2), "shape (62, 3) has 2 dimensions, expected (62, W, 5)"
    if kind == "61 channels":
        resave(eeg1, lambda v: v.update(de_LDS3=v["de_LDS3"][:61]))
        return *where(root, trial=3), "61 channels (shape (61, 2, 5)), expected 62"
    if kind == "4 bands":
        resave(eeg1, lambda v: v.update(de_LDS4=v["de_LDS4"][:, :, :4]))
        return *where(root, trial=4), "4 bands (shape (62, 3, 4)), expected 5"
    if kind == "30 eye features":
        resave(eye2, lambda v: v.update(eye_6=v["eye_6"][:30]))
        return *where(root, "eye", 2, 6), "30 eye features (shape (30, 2)), expected 31"
    if kind == "eye 3-D":
        resave(eye2, lambda v: v.update(eye_6=v["eye_6"][:, :, None].repeat(2, axis=2)))
        return *where(root, "eye", 2, 6), "has 3 dimensions, expected (31, W)"
    if kind == "empty trial":
        resave(eeg1, lambda v: v.update(de_LDS8=np.zeros((62, 0, 5))))
        return *where(root, trial=8), "empty trial (0 windows)"
    if kind == "too many windows in a trial":    # declared in the header only: refused before any loading
        replace_variable(eeg1, "de_LDS3", element(array_body("de_LDS3", dims=(62, 10**6, 5)), compress=True))
        forbid(monkeypatch, "loadmat")
        return *where(root, trial=3), "shape (62, 1000000, 5) is over the limit of MAX_WINDOWS_PER_TRIAL = 10000"
    if kind == "too many windows in a file":
        monkeypatch.setattr(seediv, "MAX_WINDOWS_PER_FILE", 50)
        forbid(monkeypatch, "loadmat")
        return *where(root), "60 windows in its 24 trials, over the limit of MAX_WINDOWS_PER_FILE = 50"
    if kind == "too many variables":
        monkeypatch.setattr(seediv, "MAX_VARIABLES", 50)              # an EEG file has 96
        return *where(root), "more than MAX_VARIABLES = 50 variables"
    if kind == "variable twice":
        with open(eeg1, "ab") as fh:
            fh.write(element(array_body("de_LDS9", np.zeros((62, 2, 5)))))
        return *where(root, trial=9), "variable de_LDS9 stored twice"
    if kind == "compression bomb":               # 60 KB on disk, 64 MB inflated, declared (62, 2, 5)
        head = (part(6, struct.pack("<II", 6, 0)) + part(5, struct.pack("<3i", 62, 2, 5)) + part(1, b"de_LDS1")
                + struct.pack("<II", 9, 64 * 2**20))
        packer = zlib.compressobj(9)
        packed = packer.compress(struct.pack("<II", 14, len(head) + 64 * 2**20) + head)
        for _ in range(64):
            packed += packer.compress(bytes(2**20))
        packed += packer.flush()
        assert len(packed) < 100_000
        replace_variable(eeg1, "de_LDS1", struct.pack("<II", 15, len(packed)) + packed)
        forbid(monkeypatch, "loadmat")
        return *where(root, trial=1), "holds more data than its shape (62, 2, 5) needs"
    if kind == "data size lie":                  # a 2 GB data part declared in a few bytes: scipy would allocate it
        replace_variable(eeg1, "de_LDS2", element(array_body("de_LDS2", dims=(62, 3, 5), declared=2**31)))
        forbid(monkeypatch, "loadmat")
        return *where(root, trial=2), "a part of the variable runs past its end"
    if kind == "name size lie":                  # in a variable we do not even need: whosmat would allocate it
        forbid(monkeypatch, "whosmat", "loadmat")   # the file is only appended to
        body = part(6, struct.pack("<II", 6, 0)) + part(5, struct.pack("<2i", 1, 1)) + struct.pack("<II", 1, 2**31)
        with open(eeg1, "ab") as fh:
            fh.write(element(body + b"psd_LDS99"))
        return *where(root), "a variable header over HEAD_BYTES"
    if kind == "complex":
        resave(eeg2, lambda v: v.update(de_LDS4=v["de_LDS4"] * (1 + 1j)))
        return *where(root, session=2, trial=4), "complex values"
    if kind == "beyond float32":
        resave(eye1, lambda v: v["eye_10"].__setitem__((3, 1), 1e39))
        return *where(root, "eye", 1, 10), "1 values beyond the float32 range"
    if kind == "nan":
        def poke(v):
            v["de_LDS11"][2, 0, 3] = np.nan
            v["de_LDS11"][5, 1, 0] = -np.inf
        resave(eeg1, poke)
        return *where(root, trial=11), "2 NaN/Inf values — clean the file or set data.nan_policy: impute"
    if kind == "window counts differ":
        resave(eye2, lambda v: v.update(eye_5=np.concatenate([v["eye_5"], v["eye_5"][:, :1]], axis=1)))
        return *where(root, "eye", 2, 5), f"4 eye windows but 3 EEG windows in {eeg2}"
    raise AssertionError(kind)


KINDS = ["session folder missing", "files not in session folders", "file missing", "misnamed file", "two files",
         "directory", "pipe", "device", "broken link", "too big", "v7.3", "hdf5", "empty file", "garbage",
         "truncated compressed", "truncated uncompressed", "corrupt compressed data", "missing key",
         "eye file in the EEG folder", "extra trial", "cell", "struct", "char", "logical", "sparse", "eeg 2-D",
         "61 channels", "4 bands", "30 eye features", "eye 3-D", "empty trial", "too many windows in a trial",
         "too many windows in a file", "too many variables", "variable twice", "compression bomb", "data size lie",
         "name size lie", "complex", "beyond float32", "nan", "window counts differ"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_gives_one_line_error(real, kind, monkeypatch):
    root, _ = real
    expected = damage(root, kind, monkeypatch)
    with no_hang():
        refused(lambda: read_subject(root, 1), *expected)


@pytest.mark.parametrize("kind", ["v7.3", "hdf5", "pipe", "directory", "device", "too big"])
def test_refused_before_scipy_sees_the_file(real, kind, monkeypatch):
    root, _ = real
    eeg = path_of(root, "eeg", 1, 1)             # the first file read
    eeg.unlink()
    if kind in ("v7.3", "hdf5"):
        eeg.write_bytes(V73 if kind == "v7.3" else HDF5)
    elif kind == "too big":
        eeg.write_bytes(mat_header().ljust(5000, b"\0"))
        monkeypatch.setattr(seediv, "MAX_FILE_BYTES", 4096)
    else:
        {"pipe": lambda: os.mkfifo(eeg), "directory": eeg.mkdir, "device": lambda: eeg.symlink_to("/dev/zero")}[kind]()
    forbid(monkeypatch, "whosmat", "loadmat")
    expected = {"v7.3": "MATLAB v7.3 (HDF5) MAT-file", "hdf5": "MATLAB v7.3 (HDF5) MAT-file",
                "too big": "file of 5000 bytes is over MAX_FILE_BYTES = 4096"}.get(kind, "not a regular file")
    with no_hang():
        refused(lambda: read_subject(root, 1), *where(root), expected)


def test_pipe_is_never_opened(real, monkeypatch):
    """Even if the stat check were gone, opening must not block: nothing may open the pipe."""
    root, _ = real
    damage(root, "pipe", monkeypatch)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    with no_hang():
        refused(lambda: read_subject(root, 1), "not a regular file")
    assert not any(p.endswith(f"2/1_{date(1, 2)}.mat") and "eye" in p for p in opened)


def test_subject_numbers_and_data_folder(real, tmp_path):
    root, _ = real
    for subject in (0, 128):
        refused(lambda: read_subject(root, subject), "eeg_feature_smooth", f"subject {subject}: subject number "
                "outside 1..127")
    refused(lambda: read_subject(tmp_path / "nowhere", 1), "nowhere: subject 1, session 1: data folder missing — "
            "check data.raw_dir")
    refused(lambda: list(read_dataset(root, [1, 3])), "eeg_feature_smooth/1/3_<date>.mat: subject 3, session 1: "
            "file missing")


def test_nan_impute_policy(real):
    root, truths = real
    de = truths[1][1]["eeg"][5].copy()         # session 1, trial 6: 3 windows

    def poke(v):
        v["de_LDS6"][0, 1, 0] = np.nan           # interior window: interpolated
        v["de_LDS6"][0, 0, 1] = np.inf           # first window: nearest valid value
        v["de_LDS6"][1, :, 2] = np.nan           # a feature missing in the whole trial: 0
    resave(path_of(root, "eeg", 1, 1), poke)
    refused(lambda: read_subject(root, 1), "trial 6 (de_LDS6): 5 NaN/Inf values")
    x = read_subject(root, 1, nan_policy="impute").eeg[5]
    assert np.isfinite(x).all()
    assert x[1, 0] == pytest.approx((de[0, 0, 0] + de[0, 2, 0]) / 2, rel=1e-6)
    assert x[0, 1] == pytest.approx(de[0, 1, 1], rel=1e-6)
    assert np.all(x[:, 1 * 5 + 2] == 0)


def test_a_recording_under_two_subject_ids_is_refused_naming_both(real):
    """Subject 2's files replaced by subject 1's, re-saved (other bytes, same numbers): as training data it
    would put held-out subject 1 into its own training set."""
    root, _ = real
    for modality in ("eeg", "eye"):
        for session in SESSIONS:
            target = path_of(root, modality, 2, session)
            shutil.copy(path_of(root, modality, 1, session), target)
            resave(target, lambda v: None, compress=session == 2)   # compression flipped: other bytes
    assert path_of(root, "eeg", 1, 1).read_bytes() != path_of(root, "eeg", 2, 1).read_bytes()
    refused(lambda: list(read_dataset(root, [1, 2])), "eeg_feature_smooth/1/2_", "subject 2, session 1: the same "
            f"recording as subject 1, session 1 ({path_of(root, 'eeg', 1, 1)})")
    assert [r.subject for r in read_dataset(root, [2])] == [2]


def test_one_copied_session_file_is_refused(real):
    """One session's eye file copied from another subject, and a session copied within a subject."""
    root, truths = real
    shutil.copy(path_of(root, "eye", 1, 2), path_of(root, "eye", 2, 2))
    refused(lambda: list(read_dataset(root, [1, 2])), *where(root, "eye", 2, subject=2),
            "the same recording as subject 1, session 2")
    write_real(root, 2, truths[2])
    for modality in ("eeg", "eye"):              # session 3 of subject 1 := its session 1 (same trial lengths)
        shutil.copy(path_of(root, modality, 1, 1), path_of(root, modality, 1, 3))
    assert read_subject(root, 1).labels          # each file alone is fine
    refused(lambda: list(read_dataset(root, [1, 2])), *where(root, "eeg", 3),
            "the same recording as subject 1, session 1")


def test_hand_built_files_read(real):
    """The byte-level builder the hostile cases use makes valid files when it does not lie."""
    root, truths = real
    eeg = path_of(root, "eeg", 1, 1)
    for t in (1, 2):
        de = truths[1][1]["eeg"][t - 1]
        replace_variable(eeg, f"de_LDS{t}", element(array_body(f"de_LDS{t}", de), compress=t == 1))
    rec = read_subject(root, 1)
    for t in (0, 1):
        np.testing.assert_array_equal(rec.eeg[t], truths[1][1]["eeg"][t].transpose(1, 0, 2).reshape(-1, 310)
                                      .astype(np.float32))


# --- subjects_in ------------------------------------------------------------------------------------


def test_subjects_in(real, tmp_path):
    root, _ = real
    assert seediv.subjects_in(root) == (root, [1, 2])
    assert seediv.subjects_in(path_of(root, "eye", 2, 3)) == (root, [2])
    assert seediv.subjects_in(str(path_of(root, "eeg", 1, 1))) == (root, [1])
    other = tmp_path / "notes.mat"
    other.write_bytes(b"")
    refused(lambda: seediv.subjects_in(other), f"{other}: not a SEED-IV subject file", error=UserError)
    misplaced = root / "eeg_feature_smooth" / "7_20160101.mat"
    misplaced.write_bytes(b"")
    refused(lambda: seediv.subjects_in(misplaced), "not a SEED-IV subject file", error=UserError)
    refused(lambda: seediv.subjects_in(tmp_path / "nowhere"), "nowhere: no such file or folder", error=UserError)
    (tmp_path / "empty").mkdir()
    refused(lambda: seediv.subjects_in(tmp_path / "empty"), "no SEED-IV subject files in", error=UserError)
    os.mkfifo(tmp_path / "pipe")
    with no_hang():
        refused(lambda: seediv.subjects_in(tmp_path / "pipe"), "not a regular file or folder", error=UserError)


def test_a_new_recording_may_lack_sessions(real):
    """For prediction (complete=False): the sessions whose files are there, unlabelled; training still
    needs all three."""
    root, truths = real
    for modality in ("eeg", "eye"):
        path_of(root, modality, 2, 1).unlink()
    assert seediv.subjects_in(root) == (root, [1, 2])
    (rec,) = read_dataset(root, [2], complete=False)
    assert rec.trials == list(range(24, 72)) and rec.labels == [-1] * 48
    np.testing.assert_array_equal(rec.eye[0], truths[2][2]["eye"][0].T.astype(np.float32))
    refused(lambda: read_subject(root, 2), "session 1: file missing")
