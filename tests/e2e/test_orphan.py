"""A `kill -9` of dvc mid-train leaves its stage running; that orphan must not overwrite the next run's
outputs (it would leave data/models and the predictions out of step with dvc.lock)."""

import signal
import subprocess
import time

import mlflow
import psutil
import pytest

pytestmark = pytest.mark.e2e


def command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:     # exited meanwhile
        return ""


def start_training(project, log, *command) -> subprocess.Popen:
    """Start ``command`` in the project, its output in ``log``; return once its train stage is training."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=project.path, env=project.env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "training 2 folds" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return process


def test_a_stage_orphaned_by_kill_9_of_dvc_writes_nothing(project, tmp_path):
    project.make_tiny()
    project.run("dvc", "repro", "normalize")
    project.set_params("train", epochs=60)          # the orphan: long enough to outlive the rerun
    log = tmp_path / "orphan.log"
    dvc = start_training(project, log, "dvc", "repro", "train")
    stage = [p for p in psutil.Process(dvc.pid).children(recursive=True) if "stages.train" in command(p)]
    assert stage, "no train stage under dvc"
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()

    project.set_params("train", epochs=2)           # the rerun, with other params, finishes first
    project.run("dvc", "repro", "train", timeout=600)
    assert any(p.is_running() for p in stage), "the orphan finished before the rerun: it could not overwrite"
    psutil.wait_procs(stage, timeout=600)
    assert "not written — the process that started this stage" in log.read_text(), log.read_text()
    status = project.run("dvc", "status", "train").stdout
    assert "up to date" in status, status
    assert not list((project.path / "data").glob(".*.tmp*")), "temporaries left behind"


def test_a_second_pipeline_in_a_busy_workspace_logs_nothing_false(project, tmp_path):
    project.make_tiny()
    project.run("dvc", "repro", "normalize")
    project.set_params("train", epochs=60)
    log = tmp_path / "first.log"
    first = start_training(project, log, "dvc", "exp", "run")
    second = project.run("dvc", "exp", "run", "-S", "train.epochs=2", check=False, timeout=300)
    first.wait(timeout=600)
    # DVC's own lock refuses the second pipeline at its first stage that needs an output the first holds,
    # but DVC has already written its -S into the shared params.yaml; the first's track sees that its models
    # were trained with other params and logs nothing rather than params that did not make them.
    assert second.returncode != 0 and "is busy, it is being blocked by" in second.stdout + second.stderr
    assert "was trained with train.epochs = 60, params.yaml now says 2" in log.read_text(), log.read_text()
    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
