"""Hostile and broken params and tracking stores: refused in one line before any stage does work."""

import sqlite3

import pytest

from pipeline import mlflow_store, params, provenance, tracking
from pipeline.params import ParamsError, parse
from tests.conftest import DEFAULT_PARAMS, ROOT, make_params


def refused(match, **sections):
    with pytest.raises(ParamsError, match=match) as info:
        make_params(**sections)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    return str(info.value)


@pytest.mark.parametrize("key", ["lr", "weight_decay", "domain_weight", "grad_clip", "label_smoothing", "input_noise"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(key, value):
    refused(rf"train.{key}: .* is not a finite number", train={key: value})


@pytest.mark.parametrize("section, key, value, match", [
    ("train", "seed", -1, r"train.seed: -1 is outside \[0, 4294967295\]"),
    ("synthetic", "seed", 2**40, r"synthetic.seed: .* is outside"),
    ("model", "d_model", 65536, r"model.d_model: 65536 is outside \[2, 4096\]"),
    ("model", "dropout", 1.0, r"model.dropout: 1.0 is outside"),
    ("train", "epochs", 0, r"train.epochs: 0 is outside"),
    ("train", "seeds", 0, r"train.seeds: 0 is outside \[1, 100\]"),
    ("train", "label_smoothing", 1.0, r"train.label_smoothing: 1.0 is outside"),
    ("train", "input_noise", -0.1, r"train.input_noise: -0.1 is outside"),
    ("train", "lr", 0, r"train.lr: 0.0 is outside"),
    ("cv", "crop_windows", 10**9, r"cv.crop_windows: .* is outside"),
    ("model", "heads", True, r"model.heads: True should be int"),
    ("train", "epochs", 2.0, r"train.epochs: 2.0 should be int"),
    ("model", "positional_encoding", 1, r"model.positional_encoding: 1 should be bool"),
    ("train", "device", "tpu", r"train.device: 'tpu' must be one of auto, cpu, cuda"),
    ("cv", "subjects", [1, 1], r"cv.subjects: \[1, 1\] lists a value twice"),
    ("cv", "subjects", ["1; touch /tmp/x", 2], r"cv.subjects: .* should be a list of int"),
    ("cv", "subjects", ["../../../victim"], r"cv.subjects: .* should be a list of int"),
    ("cv", "subjects", [17], r"cv.subjects: test subjects must be among data.subjects"),
    ("data", "subjects", [0, 1], r"data.subjects: at least 2 distinct subjects from 1..16"),
    ("data", "raw_dir", "x\n; rm -rf /", r"data.raw_dir: use a plain path"),
    ("data", "raw_dir", "$(touch /tmp/x)", r"data.raw_dir: use a plain path"),
    ("mlflow", "experiment", "", r"mlflow.experiment: a name of letters"),
    ("mlflow", "experiment", "x" * 500, r"mlflow.experiment: a name of letters"),
    ("model", "heads", 3, r"model.d_model \(64\) must be a multiple of model.heads \(3\)"),
    ("model", "modalities", [], r"model.modalities: a non-empty subset"),
])
def test_bad_values_are_refused(section, key, value, match):
    refused(match, **{section: {key: value}})


@pytest.mark.parametrize("raw, match", [
    (None, r"should be a mapping of sections"),
    ({**DEFAULT_PARAMS, "model": False}, r"model: missing, or not a mapping of keys"),
    ({**DEFAULT_PARAMS, "model": None}, r"model: missing, or not a mapping of keys"),
    ({k: v for k, v in DEFAULT_PARAMS.items() if k != "train"}, r"train: missing"),
    ({**DEFAULT_PARAMS, "train": {k: v for k, v in DEFAULT_PARAMS["train"].items() if k != "lr"}},
     r"train.lr: missing"),
    ({**DEFAULT_PARAMS, "trian": {}}, r"'trian': unknown section"),
    ({**DEFAULT_PARAMS, "model": {**DEFAULT_PARAMS["model"], "hedas": 4}},
     r"model.hedas: unknown key \(model has: .*heads"),
    ({**DEFAULT_PARAMS, "compute": {**DEFAULT_PARAMS["compute"], "device": "cpu"}},
     r"compute.device: unknown key \(it belongs in train\)"),
    ({**DEFAULT_PARAMS, "model": {**DEFAULT_PARAMS["model"], "a\nb": 4}}, r"model.'a\\nb': unknown key"),
])
def test_incomplete_or_misshapen_params_are_refused(raw, match):
    with pytest.raises(ParamsError, match=match):
        params.from_dict(raw)


@pytest.mark.parametrize("sections, gib", [
    (dict(cv={"crop_windows": 10_000}), 1152),
    (dict(model={"d_model": 4096, "heads": 64, "layers": 48, "d_ff": 65536}), 901),
    (dict(train={"batch_size": 65_536}, model={"d_model": 1024, "d_ff": 4096}), 341),
], ids=["crop 10000", "model at the range maximum", "batch 65536 wide model"])
def test_params_that_cannot_be_allocated_are_refused_with_the_number(sections, gib):
    """Each value is within its own range; together they need more than one machine: refused from the
    params, before anything is allocated, naming the estimate (benchmarks/memory.py measures its error)."""
    refused(rf"one training step needs about {gib} GiB, over MAX_TRAINING_BYTES = 64 GiB", **sections)


def test_the_original_size_fits_the_memory_budget():
    original = make_params(model={"d_model": 512, "heads": 8, "layers": 4, "d_ff": 2048})
    assert params.training_bytes(original) < 2**30


def test_yaml_problems_are_one_line():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20))
    for text, match in ((bomb, r"anchors and aliases are not allowed"),
                        ("train:\n  lr: 1\n  lr: 2\n", r"line 3.*duplicate key .lr."),
                        ("train: [unclosed\n", r"not valid YAML \(line \d+, column \d+\)")):
        with pytest.raises(ParamsError, match=match) as info:
            parse(text)
        assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("value", ["1e-3", "2.5E-4", "on", "yes", "NO", "017", "0o17", "0x1f", "1_000", "1:30",
                                   ".inf", "~", "2026-01-01", "[1, 1e-3]"])
def test_params_mean_to_the_stages_what_they_mean_to_dvc(value):
    """One file, one reading: PyYAML (YAML 1.1) read `lr: 1e-3` as the string '1e-3' and `on` as True,
    where DVC's ruamel.yaml (YAML 1.2) reads 0.001 and 'on', so `dvc params diff` and the stages disagreed."""
    from dvc.utils.serialize._yaml import parse_yaml

    text = f"train:\n  lr: {value}\n"
    assert repr(parse(text)) == repr(parse_yaml(text, "params.yaml"))


def test_a_float_in_e_notation_is_a_float():
    raw = parse((ROOT / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3"))
    assert params.from_dict(raw).train.lr == 0.001


def test_the_shipped_params_are_valid_and_complete():
    params.load(ROOT / "params.yaml")


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(b""), r"the MLflow store is empty \(0 bytes"),
    (lambda p: p.write_bytes(b"garbage" * 100), r"the MLflow store is not an SQLite database"),
    ("page", r"the MLflow store is damaged"),
])
def test_damaged_tracking_store_is_refused(tmp_path, monkeypatch, damage, match):
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with tracking.Tracker("t").run("p", "parent"):
        pass
    if damage == "page":
        raw = bytearray(store.read_bytes())
        for page in range(2, len(raw) // 4096):
            raw[page * 4096 + 8: page * 4096 + 200] = b"\xff" * 192
        store.write_bytes(bytes(raw))
    else:
        damage(store)
    size = store.stat().st_size
    with pytest.raises(mlflow_store.TrackingStoreError, match=match) as info:
        tracking.Tracker("t")
    assert "\n" not in str(info.value) and str(store) in str(info.value)
    assert store.stat().st_size == size     # never silently replaced by a new empty store


def test_a_healthy_store_passes_the_check(tmp_path):
    store = tmp_path / "ok.db"
    sqlite3.connect(store).execute("create table t (x)").connection.commit()
    mlflow_store.check_store(f"sqlite:///{store}")
    mlflow_store.check_store(f"sqlite:///{tmp_path / 'missing.db'}")   # the first run creates it


def test_a_store_locked_by_a_writer_is_not_called_damaged(tmp_path, monkeypatch):
    store = tmp_path / "busy.db"
    writer = sqlite3.connect(store, isolation_level=None)
    writer.execute("create table t (x)")
    writer.execute("begin exclusive")          # a parallel experiment committing, for longer than the wait
    monkeypatch.setattr(mlflow_store, "LOCK_WAIT", 0.1)
    try:
        mlflow_store.check_store(f"sqlite:///{store}")
    finally:
        writer.close()


def test_untracked_importable_files_make_the_code_dirty(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})

    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline/a.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "a")
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"
    (tmp_path / "notes.txt").write_text("not code\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/x.py").write_text("# not on the import path\n")
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"
    (tmp_path / "tqdm.py").write_text("raise SystemExit\n")          # shadows an installed package
    assert provenance.git_state(tmp_path)["git.dirty"] == "true"
    (tmp_path / "tqdm.py").unlink()
    (tmp_path / "pipeline/b.py").write_text("y = 2\n")
    assert provenance.git_state(tmp_path)["git.dirty"] == "true"
    (tmp_path / "pipeline/b.py").unlink()


def test_ignored_shadows_and_planted_bytecode_make_the_code_dirty(tmp_path):
    """Ignored by git but run by Python: a root .pyc / extension / package that shadows an installed one,
    and a pipeline/__pycache__ file whose header matches the source while its code does not."""
    import importlib.util
    import py_compile
    import shutil
    import subprocess
    from pathlib import Path

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})

    (tmp_path / "pipeline").mkdir()
    source = tmp_path / "pipeline/a.py"
    source.write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n*.pyc\n*.so\nbuild/\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "a")
    cache = Path(importlib.util.cache_from_source(str(source)))
    py_compile.compile(str(source), cfile=str(cache))           # what Python itself writes: clean
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"
    # Planted: the bytecode of other code, with the header (mtime, size) of the unchanged source.
    other = tmp_path / "other.py"
    other.write_text("x = 2\n")                                  # same size as a.py
    planted = tmp_path / "planted.pyc"
    py_compile.compile(str(other), cfile=str(planted))
    other.unlink()
    cache.write_bytes(cache.read_bytes()[:16] + planted.read_bytes()[16:])
    planted.unlink()
    assert provenance.git_state(tmp_path)["git.dirty"] == "true"
    cache.unlink()
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"
    for shadow in ("tqdm.pyc", "numpy.so", "build/__init__.py"):      # build/ is git-ignored too
        path = tmp_path / shadow
        path.parent.mkdir(exist_ok=True)
        path.write_text("")
        assert provenance.git_state(tmp_path)["git.dirty"] == "true", shadow
        path.unlink()
    shutil.rmtree(tmp_path / "build")
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"


@pytest.mark.parametrize("split", ["loso", "subject-dependent"])   # the chance stream: seed + subject, or a SeedSequence
def test_the_largest_seed_runs_every_baseline(tiny_frame, split):
    from pipeline.baselines import BASELINES, fold_baselines
    from pipeline.datasets.seedv import SPEC
    from pipeline.splits import make_folds

    fold = make_folds(SPEC, make_params(data={"subjects": [1, 2, 3]}, cv={"split": split, "subjects": [1]}))[0]
    out = fold_baselines(tiny_frame, fold, "crop", 12, params.SEED_MAX, SPEC)
    assert list(out) == list(BASELINES)
    for name in BASELINES:
        predictions = out[name]
        assert len(predictions) and set(predictions["subject"]) == {1}
