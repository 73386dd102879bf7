"""The final model: trained by `dvc repro`, promoted to an alias, served over HTTP, used on new files."""

import json
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.datasets.seedv import EMOTIONS, SPEC
from pipeline.models import serving_example
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def test_final_model_is_registered_served_and_predicts(project, tmp_path):
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

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                               "models:/seedv-cross-modal@candidate", "--env-manager", "local", "-p", str(port),
                               "-h", "127.0.0.1"], cwd=project.path, env=project.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        request = serving_example(1, 12, SPEC)
        request[0, :, :-1] = np.random.default_rng(0).normal(size=request.shape[2] - 1)  # one SEED-V crop
        body = json.dumps({"inputs": request.tolist()}).encode()
        deadline, answer = time.monotonic() + 120, None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                post = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                              headers={"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(post, timeout=10).read())
            except OSError:
                time.sleep(1)
        assert answer is not None, server.stderr.read() if server.poll() is not None else "server did not answer"
        probabilities = np.asarray(answer["predictions"])
        assert probabilities.shape == (1, len(EMOTIONS)) and abs(probabilities.sum() - 1) < 1e-5
    finally:
        server.terminate()
        server.wait(timeout=30)

    # A person with a new recording: pipeline.predict on the raw files, with the registered model.
    out = tmp_path / "new.csv"
    project.run("python", "-m", "pipeline.predict", "data/raw/synthetic/EEG_DE_features/3_123.npz",
                "--model", "models:/seedv-cross-modal@candidate", "--out", str(out))
    table = pd.read_csv(out)
    assert len(table) == 45 and set(table["predicted"]) <= set(EMOTIONS)
