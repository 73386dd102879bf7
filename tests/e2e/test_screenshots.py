"""What a researcher sees, in a real headless Chromium (skipped without Playwright or a Chromium):
benchmarks/screenshots.py on a repro'd project, whose checks are this test's; and the MLflow runs' times."""

import importlib.util
import json
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from screenshots import browser_path  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("playwright") is None or browser_path() is None,
                                reason="needs Playwright and a Chromium (Debian: apt-get install chromium)")


def test_screenshots_show_the_training_view_the_chosen_epoch_and_one_confusion_orientation(project, tmp_path):
    project.make_tiny()
    project.run("dvc", "repro")
    shots = tmp_path / "shots"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/screenshots.py"), str(shots), "--project",
                             str(project.path)], env=project.env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model-training view" in result.stdout and "one confusion orientation" in result.stdout
    assert json.loads(result.stdout.splitlines()[-1]) == ["dvc-plots.png", "mlflow-experiment.png",
                                                          "mlflow-fold-overview.png", "mlflow-fold.png"]
    assert all((shots / name).stat().st_size > 20_000 for name in json.loads(result.stdout.splitlines()[-1]))

    # Each fold's and the final model's run lasts as long as its training; the parent spans them all.
    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("seedv-cross-modal").experiment_id])
    parent, = [r for r in runs if r.data.tags["pipeline.role"] == "parent"]
    trained = [r for r in runs if r.data.tags["pipeline.role"] in ("fold", "final")]
    assert len(trained) == 3
    for run in trained:
        seconds = run.data.metrics["time/train_seconds"]
        assert seconds > 0.5
        assert abs((run.info.end_time - run.info.start_time) / 1000 - seconds) < 0.01 * seconds + 0.01
        assert parent.info.start_time <= run.info.start_time and run.info.end_time <= parent.info.end_time
