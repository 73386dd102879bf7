"""MLflow bookkeeping in-process: stale and killed runs, retries, model registration."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from pipeline import mlflow_store, tracking


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

    assert mlflow_store.retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        mlflow_store.retry(lambda: (_ for _ in ()).throw(ValueError("not transient")))


def test_register_gives_the_model_an_alias_it_loads_by(tmp_path, monkeypatch):
    from pipeline.model import CrossModalTransformer, PackedInput, serving_example
    from tests.conftest import SMALL_MODEL

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PIPELINE_EXECUTION", "register-test")
    tracker = tracking.Tracker("t")
    parent = tracker.parent({"a": 1})
    model = PackedInput(CrossModalTransformer(dataclasses.replace(SMALL_MODEL, d_model=8, d_ff=8), n_subjects=2).eval())
    example = serving_example(2, 4)
    with tracker.stage_run(parent, "final", "final") as run_id:
        tracker.log_model(run_id, model, example, name="final")
        version = tracker.register(run_id, "t-model", "candidate")
    assert version.name == "t-model" and version.run_id == run_id
    loaded = mlflow.pyfunc.load_model("models:/t-model@candidate")
    assert loaded.predict(example).shape == (2, 5)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_retried_create_run_leaves_no_duplicate(tmp_path):
    """The first attempt creates the run but its answer is lost ("database is locked"): the retry finds
    that run by its request tag instead of creating a second one."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("t")

    class LosesFirstAnswer:
        calls = 0

        def create_run(self, *args, **kwargs):
            self.calls += 1
            run = client.create_run(*args, **kwargs)
            if self.calls == 1:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return run

        def search_runs(self, *args, **kwargs):
            return client.search_runs(*args, **kwargs)

    run = mlflow_store.create_run_once(LosesFirstAnswer(), experiment, "r", {"a": "b"})
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run.info.run_id]
