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


def test_killed_run_is_marked_on_next_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # A process that opens a parent and a child run and is SIGKILLed before it can close them.
    code = ("from pipeline import tracking; import time\n"
            "t = tracking.Tracker('t')\n"
            "with t.run('p', 'parent') as p, t.run('fold 1', 'fold', parent=p):\n"
            "    print('started', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "started"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    tracker = tracking.Tracker("t")
    statuses = lambda: {r.info.run_name: r.info.status for r in tracker.client.search_runs([tracker.experiment_id])}  # noqa: E731
    assert statuses() == {"p": "RUNNING", "fold 1": "RUNNING"}
    with tracker.run("next", "parent"):
        pass
    assert statuses() == {"p": "KILLED", "fold 1": "KILLED", "next": "FINISHED"}


def test_sigterm_ends_runs_as_killed_and_an_error_as_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = ("from pipeline import tracking; import time, signal, sys\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
            "t = tracking.Tracker('t')\n"
            "with t.run('p', 'parent') as p, t.run('fold 1', 'fold', parent=p):\n"
            "    print('started', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "started"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    tracker = tracking.Tracker("t")
    with pytest.raises(ValueError), tracker.run("q", "parent"):
        raise ValueError("boom")
    statuses = {r.info.run_name: r.info.status for r in tracker.client.search_runs([tracker.experiment_id])}
    assert statuses == {"p": "KILLED", "fold 1": "KILLED", "q": "FAILED"}


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
    tracker = tracking.Tracker("t")
    model = PackedInput(CrossModalTransformer(dataclasses.replace(SMALL_MODEL, d_model=8, d_ff=8), n_subjects=2).eval())
    example = serving_example(2, 4)
    with tracker.run("p", "parent") as parent, tracker.run("final", "final", parent=parent) as run_id:
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
