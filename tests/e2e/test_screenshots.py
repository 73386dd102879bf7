"""What a researcher sees, in a real headless Chromium (skipped without Playwright or a Chromium):
benchmarks/screenshots.py on a repro'd project; its page checks are this test's."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks/screenshots.py"
_spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(importlib.util.find_spec("playwright") is None or screenshots.browser_path() is None,
                                 reason="needs Playwright and a Chromium (Debian: apt-get install chromium)")]


def test_screenshots_show_the_training_view_the_chosen_epoch_and_one_confusion_orientation(project, tmp_path):
    project.make_tiny()
    project.run("dvc", "repro")
    shots = tmp_path / "shots"
    result = subprocess.run([sys.executable, str(SCRIPT), str(shots), "--project", str(project.path)],
                            env=project.env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model-training view" in result.stdout and "one confusion orientation" in result.stdout
    names = json.loads(result.stdout.splitlines()[-1])
    assert names == ["dvc-plots.png", "mlflow-experiment.png", "mlflow-fold-overview.png", "mlflow-fold.png"]
    assert all((shots / name).stat().st_size > 20_000 for name in names)   # pages, not blank frames
