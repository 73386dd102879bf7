"""Hostile and broken SEED-V files: refused with one line, in bounded memory, with nothing executed.

Each case builds its file in a temporary dataset, then reads it in a child process whose address space
is capped at 1 GiB above what it holds after imports, so an unbounded read fails the test (MemoryError,
or a signal) instead of the machine.
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pipeline.datasets import seedv
from pipeline.datasets.seedv import subject_file
from tests.conftest import ROOT

READ_CAPPED = """
import resource, sys
from pipeline.datasets.seedv import SeedVFormatError, read_subject
vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
try:
    read_subject(sys.argv[1], int(sys.argv[2]))
except SeedVFormatError as exc:
    print(exc)
    raise SystemExit(1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"read fine, peak rss {peak} KiB")
"""


def read_capped(dataset, subject=1, timeout=60):
    """Read ``subject`` in a memory-capped child; return (exit code, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-c", READ_CAPPED, str(dataset), str(subject)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return result.returncode, result.stdout.strip(), result.stderr.strip()


def assert_refused(dataset, pattern, subject=1):
    import re

    code, out, err = read_capped(dataset, subject)
    assert code == 1, (code, out, err)          # not a signal death (negative), not a traceback (also 1)
    assert err == "" and len(out.splitlines()) == 1, (out, err)
    assert re.search(pattern, out), out
    assert f"subject {subject}" in out and " — " in out


def dicts(path):
    z = np.load(path)
    return pickle.loads(z["data"]), pickle.loads(z["label"])


def store(path, data: bytes | None = None, label: bytes | None = None):
    """Rewrite one npz with raw pickle payloads as SEED-V stores them (bytes scalars)."""
    old = np.load(path)
    np.savez(path, data=np.bytes_(data) if data is not None else old["data"],
             label=np.bytes_(label) if label is not None else old["label"])


class Reduce:
    """Pickles as ``func(*args)``: how an attacker makes a pickle call something."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def with_trial(path, value, key=0):
    data, _ = dicts(path)
    data[key] = value
    return pickle.dumps(data, protocol=4)


def test_object_dtype_from_raw_bytes_is_refused(dataset):
    """``np.ndarray((), 'O', buffer)`` builds an object array whose element is a pointer from the file."""
    path = subject_file(dataset, "eeg", 1)
    store(path, data=with_trial(path, Reduce(np.ndarray, ((), np.dtype("O"), b"A" * 8))))
    assert_refused(dataset, r"forbidden pickle content in 'data'.*nothing was executed")


def test_object_array_state_is_refused(dataset):
    """numpy's own object-array pickle path with attacker-chosen elements (more than one, or nested)."""
    from numpy._core.multiarray import _reconstruct

    path = subject_file(dataset, "eeg", 1)
    state = (1, (2,), np.dtype("O"), False, [1.0, 2.0])
    store(path, data=with_trial(path, Reduce(_reconstruct, (np.ndarray, (0,), b"b"), state)))
    assert_refused(dataset, r"forbidden pickle content in 'data' \(object array\)")


def test_structured_dtype_state_is_refused(dataset):
    path = subject_file(dataset, "eeg", 1)
    evil = Reduce(np.dtype, ("f8", False, True), (3, "<", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
    store(path, data=with_trial(path, evil))
    assert_refused(dataset, r"forbidden pickle content in 'data' \(dtype state\)")


@pytest.mark.parametrize("func", [os.system, getattr, np.frombuffer, np.full])
def test_other_callables_are_refused(dataset, func):
    path = subject_file(dataset, "eye", 1)
    store(path, label=pickle.dumps({0: Reduce(func, (1,))}))
    assert_refused(dataset, r"Eye_movement_features/1_123.npz: subject 1: forbidden pickle content in 'label'")


def test_member_declaring_a_huge_size_is_refused_before_inflating(dataset):
    """A bz2 member whose header says 1 GiB: refused from the header, nothing inflated."""
    path = subject_file(dataset, "eeg", 1)
    members = dict(np.load(path))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as zf:
        for key, value in members.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, value)
            zf.writestr(f"{key}.npy", buffer.getvalue())
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")               # first central-directory entry: data.npy
    struct.pack_into("<I", raw, central + 24, 2**30)   # its uncompressed size
    path.write_bytes(bytes(raw))
    assert_refused(dataset, r"'data': member 'data' declares 1073741824 bytes uncompressed, over "
                            r"MAX_MEMBER_BYTES")


def test_pickle_declaring_a_huge_byte_string_is_bounded(dataset):
    """BINBYTES8 announcing 1 GiB with 8 bytes behind it: no 1 GiB allocation, one line."""
    path = subject_file(dataset, "eeg", 1)
    payload = b"\x80\x04\x8e" + struct.pack("<Q", 2**30) + b"A" * 8 + b"."
    store(path, data=payload)
    code, out, err = read_capped(dataset)
    assert code == 1 and err == "" and "subject 1" in out and "\n" not in out, (code, out, err)


def test_shared_nested_lists_are_refused_quickly(dataset):
    """6 KB of pickle, 10^9 x 310 numbers if expanded: refused from its shape, not by building it."""
    path = subject_file(dataset, "eeg", 1)
    row = [0.5] * seedv.N_EEG
    store(path, data=with_trial(path, [[[row] * 1000] * 1000] * 1000))
    assert_refused(dataset, r"'data': containers nested deeper")
    store(path, data=with_trial(path, [row] * 100_000))
    assert_refused(dataset, r"subject 1, trial 0: data of shape \(100000, 310\) is over the limit of "
                            r"MAX_WINDOWS_PER_TRIAL")


def test_windows_are_bounded_per_file_before_any_trial_is_converted(dataset):
    """45 trials of 9 000 shared rows each (20 KB of pickle, 1 GB as float64 if converted): every
    trial is under MAX_WINDOWS_PER_TRIAL, the file is not; refused from the shapes alone."""
    for modality, width in (("eeg", seedv.N_EEG), ("eye", seedv.N_EYE)):
        path = subject_file(dataset, modality, 1)
        trials = dict.fromkeys(range(seedv.N_TRIALS), [[0.5] * width] * 9_000)   # one list, 45 keys
        store(path, data=pickle.dumps(trials, protocol=4), label=pickle.dumps(dict.fromkeys(range(45), 1)))
    assert path.stat().st_size < 30_000
    assert_refused(dataset, r"EEG_DE_features/1_123.npz: subject 1: 405000 windows in its 45 trials, over "
                            r"the limit of MAX_WINDOWS_PER_FILE = 20000")


def test_a_pickle_of_repeated_references_is_bounded_by_its_opcodes(dataset):
    """A list of 30 M memo references (2 bytes each, 60 MB inflated from a small deflated member): the
    unpickler stops at MAX_PICKLE_OPCODES instead of stacking up references for a minute."""
    path = subject_file(dataset, "eeg", 1)
    payload = b"\x80\x04]\x94(" + b"h\x00" * 30_000_000 + b"e."   # [], memoized, then 30 M x memo[0]
    old = dict(np.load(path))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in (("data", np.bytes_(payload)), ("label", old["label"])):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, value)
            zf.writestr(f"{key}.npy", buffer.getvalue())
    assert path.stat().st_size < 200_000
    assert_refused(dataset, r"subject 1: 'data': a pickle of more than MAX_PICKLE_OPCODES = 12400000 opcodes")


@pytest.mark.parametrize("payload, pattern", [
    (lambda path: with_trial(path, [[2**70] * 310] * 18), r"'data': an integer of 71 bits, over MAX_INT_BITS = 64"),
    (lambda path: b"(dp0\nL" + b"7" * 5000 + b"L\nI1\ns.",        # a key of 5000 digits, protocol 0
     r"'data' is not a readable pickle \(ValueError\)"),
], ids=["71-bit int", "5000-digit int"])
def test_big_integers_are_refused_in_one_line(dataset, payload, pattern):
    path = subject_file(dataset, "eeg", 1)
    store(path, data=payload(path))
    assert_refused(dataset, pattern)


def test_lists_are_read_and_ragged_lists_refused(dataset):
    path = subject_file(dataset, "eeg", 1)
    data, _ = dicts(path)
    store(path, data=with_trial(path, data[0].tolist()))
    code, out, _ = read_capped(dataset)
    assert code == 0 and out.startswith("read fine"), out
    ragged = data[0].tolist()
    ragged[3] = ragged[3][:-1]
    store(path, data=with_trial(path, ragged))
    assert_refused(dataset, r"subject 1, trial 0: data is a list that is not a rectangular array of numbers")


def test_file_over_the_size_limit_is_refused(dataset, monkeypatch):
    monkeypatch.setattr(seedv, "MAX_FILE_BYTES", 1000)
    with pytest.raises(seedv.SeedVFormatError, match=r"subject 1: file of \d+ bytes is over MAX_FILE_BYTES"):
        seedv.read_subject(dataset, 1)


def test_values_beyond_float32_are_named_as_such(dataset):
    path = subject_file(dataset, "eeg", 1)
    data, _ = dicts(path)
    value = data[4].copy()
    value[1, 2] = 1e39
    store(path, data=with_trial(path, value, key=4))
    assert_refused(dataset, r"subject 1, trial 4: 1 values beyond the float32 range")


def test_non_integer_trial_keys_are_refused(dataset):
    path = subject_file(dataset, "eeg", 1)
    data, _ = dicts(path)
    store(path, data=pickle.dumps({k + 0.9: v for k, v in data.items()}))
    assert_refused(dataset, r"'data' has a trial key 0.9 that is not an integer")


def test_nan_label_is_named_as_such(dataset):
    path = subject_file(dataset, "eeg", 1)
    _, label = dicts(path)
    label[6] = np.full_like(label[6], np.nan)
    store(path, label=pickle.dumps(label))
    assert_refused(dataset, r"subject 1, trial 6: label is NaN or infinite")


def test_empty_array_in_protocol_2_is_an_empty_trial(dataset):
    path = subject_file(dataset, "eeg", 1)
    data, label = dicts(path)
    data[11], label[11] = np.zeros((0, seedv.N_EEG)), np.zeros(0)
    store(path, data=pickle.dumps(data, protocol=2), label=pickle.dumps(label, protocol=2))
    assert_refused(dataset, r"subject 1, trial 11: empty trial \(0 windows\)")


def test_newlines_in_hostile_names_stay_on_one_line(dataset):
    path = subject_file(dataset, "eeg", 1)
    payload = b"\x80\x04\x8c\x03os\n\x8c\x07system\n\x93."   # STACK_GLOBAL with newlines in the names
    store(path, data=payload)
    assert_refused(dataset, r"forbidden pickle content in 'data' \(os \.system \)")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_every_pickle_protocol_of_plain_arrays_reads(dataset, protocol):
    path = subject_file(dataset, "eye", 2)
    data, label = dicts(path)
    store(path, data=pickle.dumps(data, protocol=protocol), label=pickle.dumps(label, protocol=protocol))
    rec = seedv.read_subject(dataset, 2)
    np.testing.assert_array_equal(rec.eye[7], data[7].astype(np.float32))
