"""Queued experiments in parallel on SQLite, and a team tracking server on a real PostgreSQL."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline.datasets.seedv import SPEC
from pipeline.predict import example_table


pytestmark = pytest.mark.e2e


def run_queue(project, jobs: int, timeout: float = 900):
    """Start the experiment queue with ``jobs`` workers and wait until they have run it empty.

    ``dvc queue start`` forks its workers with our stdout, so capturing its output waits until every worker
    has exited, which a worker does once the queue is empty. A hang fails the test after ``timeout`` seconds
    with what the queue was doing, instead of stalling the whole suite.
    """
    try:
        project.run("dvc", "queue", "start", "-j", str(jobs), timeout=timeout)
    except subprocess.TimeoutExpired:
        report = queue_report(project)
        project.run("dvc", "queue", "stop", "--kill", check=False, timeout=60)
        raise AssertionError(f"the queue did not finish in {timeout:.0f} s\n{report}") from None
    status = project.run("dvc", "queue", "status", timeout=60).stdout
    failed = [line.split()[0] for line in status.splitlines() if line.endswith("Failed")]
    assert not failed, status + queue_report(project, failed)
    assert not any(word in status for word in ("Running", "Queued")), status
    return status


def queue_report(project, tasks=None) -> str:
    """The queue's status, the logs of ``tasks`` (default: the running ones) and the workers' own output."""
    def output(*args):
        try:
            return project.run(*args, check=False, timeout=60).stdout
        except subprocess.TimeoutExpired:
            return f"{' '.join(args)}: no answer in 60 s\n"

    status = output("dvc", "queue", "status")
    if tasks is None:
        tasks = [line.split()[0] for line in status.splitlines() if line.endswith("Running")]
    logs = [output("dvc", "queue", "logs", task)[-3000:] for task in tasks]
    workers = [f"{log.name}:\n{log.read_text(errors='replace')[-3000:]}"
               for log in sorted((project.path / ".dvc/tmp/exps/celery").glob("*.out"))]
    return "\n".join([status, *logs, *workers])


def assert_complete(uri, n_parents):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("seedv-cross-modal")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "parent"]
    assert len(parents) == n_parents
    for parent in parents:
        children = {r.info.run_name: r.info.status for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert set(children) == {"fold subject-1", "fold subject-2", "final"}, children
        assert set(children.values()) == {"FINISHED"} and parent.info.status == "FINISHED"
        assert "trial/accuracy_mean" in parent.data.metrics
    return parents


def test_two_queued_experiments_in_parallel(project, tmp_path):
    project.make_tiny()
    project.run("dvc", "exp", "run", "--queue", "-S", "train.epochs=1")
    project.run("dvc", "exp", "run", "--queue", "-S", "train.epochs=3")
    run_queue(project, jobs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents = assert_complete(uri, 2)
    assert sorted(p.data.params["train.epochs"] for p in parents) == ["1", "3"]
    # Each queued experiment ran in a DVC workspace that is gone now: what it logged is not.
    for parent in parents:
        params_yaml = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="params.yaml",
                                                          tracking_uri=uri, dst_path=str(tmp_path / parent.info.run_id))
        assert f"epochs: {parent.data.params['train.epochs']}" in Path(params_yaml).read_text()
    client = mlflow.MlflowClient(uri)
    assert client.search_registered_models() == []            # no queued experiment redeploys
    longer = next(p for p in parents if p.data.params["train.epochs"] == "3")
    project.run(sys.executable, "-m", "pipeline.promote", longer.info.run_id, "--reason", "the 3-epoch one")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/seedv-cross-modal@candidate")
    assert model.predict(example_table(SPEC, 12)).shape == (1, 4 + SPEC.n_classes)   # one trial


def test_queued_experiment_on_the_team_tracking_server(project, team_server, tmp_path, monkeypatch):
    """README's team recipe (authenticated, PostgreSQL, proxied artifacts): a writer's queued experiment
    logs everything; its artifacts land in the server's artifact root."""
    project.make_tiny()
    project.env = {**project.env, **team_server.user("alice", writer=True)}
    project.run("dvc", "exp", "run", "--queue", "-S", "train.epochs=1")
    run_queue(project, jobs=1)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, project.env[key])
    (parent,) = assert_complete(team_server.uri, 1)
    client = mlflow.MlflowClient(team_server.uri)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"params.yaml", "plots", "metrics"} <= artifacts, artifacts
    assert list((tmp_path / "mlartifacts").rglob("tsne.png"))   # stored in the shared artifact root
