"""MLflow as the lab notebook: run structure, exact rebuild, stale runs."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from pipeline import tracking
from tests.test_e2e import make_tiny


def runs(uri, experiment="seedv-cross-modal"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


@pytest.mark.e2e
def test_parents_children_and_rebuild(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_tiny(project)
    project.run("dvc", "repro")
    project.commit("results")
    project.run("dvc", "exp", "run", "-S", "model.heads=4")

    table = runs(uri)
    parents = table[table["tags.pipeline.role"] == "parent"]
    assert len(parents) == 2
    first = parents[parents["tags.dvc.experiment"].isna()].iloc[0].run_id
    for _, parent in parents.iterrows():
        children = table[table["tags.mlflow.parentRunId"] == parent.run_id]
        # baselines do not depend on model params: DVC reruns them only in the first execution.
        expected = {"evaluate", "fold 1", "fold 2", "plots"} | ({"baselines"} if parent.run_id == first else set())
        assert set(children["tags.mlflow.runName"]) == expected
        assert (children["status"] == "FINISHED").all() and parent.status == "FINISHED"
        for key in ("git.commit", "git.dirty", "data.raw_md5", "data.processed_md5", "version.torch",
                    "version.python", "version.numpy", "version.dvc", "version.mlflow", "device"):
            assert isinstance(parent[f"tags.{key}"], str) and parent[f"tags.{key}"], key
        assert parent["params.model.d_model"] == "16"
        assert 0 <= parent["metrics.trial.accuracy_mean"] <= 1
        assert "metrics.baseline.length-only.trial.accuracy_mean" in parent.index
    experiment_parent = parents[parents["tags.dvc.experiment"].notna()].iloc[0]
    assert experiment_parent["params.model.heads"] == "4"
    folds = table[(table["tags.pipeline.role"] == "fold")]
    assert folds["metrics.train_accuracy"].notna().all()
    model_ids = mlflow.search_logged_models(experiment_ids=[parents.iloc[0].experiment_id], output_format="list")
    assert len(model_ids) == 4

    # Rebuild the first execution exactly.
    ok = project.run(sys.executable, "-m", "pipeline.rebuild", first, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "rebuilt bit-identically" in ok.stdout and "trial.accuracy_mean" in ok.stdout

    # Tampering with a logged metric makes it fail loudly.
    client = mlflow.MlflowClient(uri)
    client.log_metric(first, "trial.accuracy_mean", 0.123456)
    bad = project.run(sys.executable, "-m", "pipeline.rebuild", first, check=False)
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout
    assert any("trial.accuracy_mean" in line and line.endswith("NO") for line in bad.stdout.splitlines())

    # Could not rebuild: exit 2 and one line. A bogus id; a params.yaml artifact edited after the run.
    bogus = project.run(sys.executable, "-m", "pipeline.rebuild", "0" * 32, check=False)
    assert bogus.returncode == 2 and bogus.stderr.strip().splitlines()[-1].startswith("error: run 0000")
    edited = tmp_path / "edited" / "params.yaml"
    edited.parent.mkdir()
    edited.write_text(re.sub(r"heads: \d+", "heads: 8", (project.path / "params.yaml").read_text()))
    client.log_artifact(first, str(edited))
    tampered = project.run(sys.executable, "-m", "pipeline.rebuild", first, check=False)
    assert tampered.returncode == 2, tampered.stdout + tampered.stderr
    assert tampered.stderr.strip().count("\n") == 0, tampered.stderr
    assert "disagrees with the params the run logged (model.heads: artifact 8, logged 2)" in tampered.stderr


def test_killed_stage_run_is_marked_on_next_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PIPELINE_EXECUTION", "killed-test")
    tracker = tracking.Tracker("t")
    parent = tracker.parent({"a": 1})
    # A process that opens a stage run and is SIGKILLed before it can close it.
    code = ("from pipeline import tracking; import time\n"
            "t = tracking.Tracker('t'); p = t.parent({'a': 1})\n"
            "with t.stage_run(p, 'fold', 'fold 1'):\n    print('started', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "started"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    query = f"tags.`mlflow.parentRunId` = '{parent}'"
    assert tracker.client.search_runs([tracker.experiment_id], query)[0].info.status == "RUNNING"
    with tracker.stage_run(parent, "fold", "fold 1"):
        pass
    statuses = sorted(r.info.status for r in tracker.client.search_runs([tracker.experiment_id], query))
    assert statuses == ["FINISHED", "KILLED"]


def test_sigterm_ends_run_as_killed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PIPELINE_EXECUTION", "sigterm-test")
    code = ("from pipeline import tracking; import time, signal, sys\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
            "t = tracking.Tracker('t'); p = t.parent({'a': 1})\n"
            "with t.stage_run(p, 'fold', 'fold 1'):\n    print('started', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "started"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    tracker = tracking.Tracker("t")
    statuses = {r.data.tags[tracking.ROLE_TAG]: r.info.status
                for r in tracker.client.search_runs([tracker.experiment_id], "")}
    assert statuses == {"fold": "KILLED", "parent": "FAILED"}


def test_retry_backs_off_on_locked_store():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        tracking.retry(lambda: (_ for _ in ()).throw(ValueError("not transient")))


def test_register_best_fold(tmp_path, monkeypatch):
    import numpy as np

    from pipeline.model import CrossModalTransformer, PackedInput
    from tests.conftest import SMALL_MODEL

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PIPELINE_EXECUTION", "register-test")
    tracker = tracking.Tracker("t")
    parent = tracker.parent({"a": 1})
    model = PackedInput(CrossModalTransformer(dataclasses.replace(SMALL_MODEL, d_model=8, d_ff=8), n_subjects=2).eval())
    example = np.zeros((2, 4, 344), dtype=np.float32)
    example[..., 343] = 1
    fold_runs = {}
    for name, accuracy in (("fold 1", 0.5), ("fold 2", 0.8), ("fold 3", 0.6)):
        with tracker.stage_run(parent, "fold", name) as run_id:
            tracker.log_metrics(run_id, {"trial.accuracy": accuracy})
            tracker.log_model(run_id, model, example)
            fold_runs[name] = run_id
    version = tracker.register_best_fold(parent, "t-model")
    assert version.name == "t-model" and version.run_id == fold_runs["fold 2"]
    loaded = mlflow.pyfunc.load_model(f"models:/t-model/{version.version}")
    assert loaded.predict(example).shape == (2, 5)
