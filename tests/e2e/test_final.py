"""The final model: trained by `dvc repro`, promoted to an alias, served over HTTP, used on new files."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import predict
from pipeline.datasets.seedv import EMOTIONS
from pipeline.evaluate import log_probability_columns, trial_predictions
from pipeline.tracking import Tracker
from tests.conftest import free_port, wait_for_port

pytestmark = pytest.mark.e2e


def post(port: int, body: str) -> dict:
    """The served model's answer to a JSON request."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def test_final_model_is_registered_served_and_predicts(project, tmp_path, monkeypatch):
    project.make_tiny()
    project.run("dvc", "repro")
    assert (project.path / "data/final_model/model.pt").is_file()
    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    assert client.search_registered_models() == []            # logging registers nothing
    experiment = client.get_experiment_by_name("seedv-cross-modal")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`pipeline.role` = 'parent'")
    promoted = project.run(sys.executable, "-m", "pipeline.promote", parent.info.run_id, "--reason", "e2e test")
    assert "is now @candidate" in promoted.stdout
    version = client.get_model_version_by_alias("seedv-cross-modal", "candidate")
    assert version.tags["parent_run"] == parent.info.run_id and version.tags["reason"] == "e2e test"
    final_run = client.get_run(version.run_id)
    assert final_run.info.run_name == "final" and final_run.info.status == "FINISHED"
    assert final_run.data.tags["pipeline.role"] == "final"

    # Each fold's and the final model's run lasts as long as its training (time/train_seconds; the stages
    # note it in data/timings/); the parent, this `dvc repro`, began before them and ended after.
    trained = client.search_runs([experiment.experiment_id], "tags.`pipeline.role` != 'parent'")
    assert sorted(r.info.run_name for r in trained) == ["final", "fold subject-1", "fold subject-2"]
    for run in trained:
        seconds = run.data.metrics["time/train_seconds"]
        duration = (run.info.end_time - run.info.start_time) / 1000        # ms; seconds shown to 5 digits
        assert seconds > 0 and abs(duration - seconds) < 0.002 + 1e-4 * seconds, (duration, seconds)
        assert parent.info.start_time <= run.info.start_time and run.info.end_time <= parent.info.end_time
        if run.info.run_name != "final":
            assert "are the fold's training" in run.data.tags["mlflow.note.content"]

    # A fold's model served (verified, with this checkout's serving code): subject 2's raw features as
    # ingested (labels and all) in, its fold's trial predictions out, exactly; an input that cannot be
    # right is a 400 with one line.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.env["MLFLOW_TRACKING_URI"])
    (fold_run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'fold subject-2'")
    Tracker("seedv-cross-modal").log_model(fold_run.info.run_id, project.path / fold_run.data.tags["model.path"],
                                           name="fold")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline.serve", f"runs:/{fold_run.info.run_id}/fold",
                               "--port", str(port)], cwd=project.path,
                              env={**project.env, "OMP_NUM_THREADS": "1"},   # the fold's torch threads: same bits
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ingested = pd.read_parquet(project.path / "data/interim/features.parquet")
    recording = ingested[ingested.subject == 2]
    try:
        wait_for_port(port)
        assert server.poll() is None, server.stderr.read()
        served = pd.DataFrame(post(port, predict.request_json(recording))["predictions"])
        fold = trial_predictions(pd.read_parquet(project.path / "data/predictions/subject-2.parquet"))
        assert served[["session", "trial"]].to_numpy().tolist() == fold[["session", "trial"]].to_numpy().tolist()
        assert served["predicted"].tolist() == [EMOTIONS[c] for c in fold["predicted"]]
        log_p = fold[log_probability_columns(len(EMOTIONS))].to_numpy()
        probabilities = np.exp(log_p - log_p.max(1, keepdims=True))
        np.testing.assert_array_equal(served[[f"p_{e}" for e in EMOTIONS]].to_numpy(),
                                      probabilities / probabilities.sum(1, keepdims=True))
        short = recording[(recording.session == 1) & (recording.trial == 0) & (recording.window < 5)]
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(port, predict.request_json(short))
        message = json.loads(refused.value.read())["message"]
        assert refused.value.code == 400 and message.endswith(
            "recording table: subject 2, session 1, trial 0: 5 window(s), fewer than the 12 of one model input "
            "— send the whole trial"), message
    finally:
        server.terminate()
        server.wait(timeout=30)

    # A person with a new recording: pipeline.predict on the raw files, with the registered model.
    out = tmp_path / "new.csv"
    project.run("python", "-m", "pipeline.predict", "data/raw/synthetic/EEG_DE_features/3_123.npz",
                "--model", "models:/seedv-cross-modal@candidate", "--out", str(out))
    table = pd.read_csv(out)
    assert len(table) == 45 and set(table["predicted"]) <= set(EMOTIONS)
