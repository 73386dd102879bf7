"""End to end: the real DVC pipeline in a temporary copy of the project, on three synthetic subjects."""

import json
import shlex
import subprocess

import pandas as pd
import pytest

from pipeline.datasets.seedv import SPEC, subject_file
from pipeline.features import read_table, write_table
from tests.conftest import ROOT, TABLE_COLUMNS, WINDOWS_PER_SUBJECT

pytestmark = pytest.mark.e2e


def test_repro_metrics_and_diff(project):
    project.make_tiny()
    project.run("dvc", "repro")
    features = pd.read_parquet(project.path / "data/processed/features.parquet")
    assert features.shape == (3 * WINDOWS_PER_SUBJECT, TABLE_COLUMNS)
    metrics = json.loads((project.path / "metrics/metrics.json").read_text())
    assert metrics["n_folds"] == 2 and 0 <= metrics["trial"]["accuracy_mean"] <= 1
    baselines = json.loads((project.path / "metrics/baselines.json").read_text())
    assert set(baselines) == {"length-only", "position-only", "eeg-logreg", "eye-logreg", "both-logreg",
                              "crop-logreg", "chance"}
    assert baselines["position-only"]["trial"]["accuracy_mean"] == 1.0   # SEED-V's layout: position is the label
    probe = json.loads((project.path / "metrics/audits.json").read_text())["position_probe"]
    assert probe["n_folds"] == 2 and 0 <= probe["accuracy_mean"] <= 1 and probe["chance"] == pytest.approx(1 / 3)
    assert all(b.keys() == metrics.keys() for b in baselines.values())
    comparison = json.loads((project.path / "metrics/comparison.json").read_text())
    assert set(comparison) == set(baselines) and comparison["chance"]["n_subjects"] == 2
    assert {"mean_difference", "ci95_low", "ci95_high", "wilcoxon_p"} <= set(comparison["both-logreg"]["trial"])
    assert "up to date" in project.run("dvc", "status").stdout
    shown = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)[""]["data"]["metrics/summary.json"]
    assert shown["data"]["trial_acc"] == metrics["trial"]["accuracy_mean"]
    assert shown["data"]["length"] == baselines["length-only"]["trial"]["accuracy_mean"]
    # `dvc plots show` needs no network: the project's HTML template carries the Vega libraries.
    project.run("dvc", "plots", "show", "-o", "plots_page")
    page = (project.path / "plots_page/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vega-embed@6.18.2" in page and page.count("vegaEmbed(") >= 3
    assert "Training curves, one line per fold" in page

    # A changed param on a branch: dvc metrics diff main shows the change.
    project.commit("results")
    project.run("git", "checkout", "-qb", "longer")
    project.set_params("train", epochs=3)
    project.run("dvc", "repro")
    project.commit("longer training")
    diff = json.loads(project.run("dvc", "metrics", "diff", "main", "--json").stdout)
    changed = diff["metrics/summary.json"]
    assert any(v["diff"] != 0 for v in changed.values()), changed
    assert not {"logreg", "length", "position", "chance"} & set(changed)   # baselines ignore training params

    # The README's `dvc exp show` line, in a 120-column terminal: headline, length audit, what changed.
    project.run("dvc", "exp", "run", "-S", "model.heads=4")
    (line,) = [x.split("#")[0] for x in (ROOT / "README.md").read_text().splitlines() if x.startswith("dvc exp show")]
    shown = subprocess.run(shlex.split(line), cwd=project.path, env={**project.env, "COLUMNS": "120"},
                           capture_output=True, text=True, check=True).stdout
    assert max(len(x) for x in shown.splitlines()) <= 120, shown
    assert all(column in shown for column in ("trial_acc", "length", "model.heads")), shown

    # Rerunning one fold on its own (the debugging entry point) gives bit-identical predictions and metrics.
    before = (project.path / "metrics/folds/subject-1.json").read_text()
    predictions = pd.read_parquet(project.path / "data/predictions/subject-1.parquet")
    project.run("python", "-m", "stages.train", "data/processed/features.parquet", "data/models",
                "data/predictions", "metrics/folds", "metrics/curves", "metrics/selections", "--fold", "subject-1")
    assert (project.path / "metrics/folds/subject-1.json").read_text() == before
    pd.testing.assert_frame_equal(pd.read_parquet(project.path / "data/predictions/subject-1.parquet"), predictions,
                                  check_exact=True)
    assert "up to date" in project.run("dvc", "status").stdout


def test_bad_input_stops_ingest_with_one_line(project):
    project.make_tiny()
    project.run("dvc", "repro", "synthesize")
    path = subject_file(project.path / "data/raw/synthetic", "eye", 2)
    path.write_bytes(path.read_bytes()[:1000])
    result = project.run("python", "-m", "stages.ingest", "data/interim/features.parquet", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Eye_movement_features/2_123.npz: subject 2: unreadable npz" in lines[0]
    assert not (project.path / "data/interim/features.parquet").exists()
    assert not list((project.path / "data").rglob("*.tmp*"))


def test_hostile_params_stop_before_anything_runs(project, tmp_path):
    """Values DVC would once have put into a shell command or a deleted output path."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious\n")
    marker = tmp_path / "injected"
    for subjects in ([f"1; touch {marker}", 2], ["../../../victim"], [1, 1]):
        project.set_params("cv", subjects=subjects)
        result = project.run("dvc", "repro", check=False)
        assert result.returncode != 0 and "error: params.yaml: cv.subjects" in result.stdout + result.stderr
        assert not marker.exists() and (victim / "keep.txt").read_text() == "precious\n"


def test_stage_errors_are_one_line_and_leave_no_running_run(project):
    import mlflow
    import torch

    project.make_tiny()
    project.run("dvc", "repro", "normalize")
    train = ("python", "-m", "stages.train", "data/processed/features.parquet", "data/models",
             "data/predictions", "metrics/folds", "metrics/curves", "metrics/selections")
    if not torch.cuda.is_available():
        project.set_params("train", device="cuda")
        result = project.run(*train, check=False)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
        assert "train.device: cuda was asked for but torch sees no CUDA device" in result.stderr

    (project.path / "params.yaml").write_text("train: [unclosed\n")
    result = project.run(*train, check=False)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "params.yaml: not valid YAML (line" in result.stderr
    assert not (project.path / "data/models").exists()

    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("seedv-cross-modal")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_a_failing_fold_leaves_no_outputs_and_no_running_run(project):
    import mlflow

    project.make_tiny()
    project.set_params("train", validation=0, input_noise=0.3)   # fold 1 keeps subject 3 to train on
    project.commit("no inner validation")
    project.run("dvc", "repro", "normalize")
    features = project.path / "data/processed/features.parquet"
    table = read_table(features, SPEC)
    write_table(table[table.subject != 2], features, SPEC)              # fold 2 has nothing to test on
    result = project.run("dvc", "repro", "--single-item", "train", check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    # Found before any fold starts (not by whichever fold fails first): fold 2 tests on subject 2, fold 1
    # trains on it.
    assert ("error: data.subjects: subject(s) [2] are not (all) in the feature table — rerun `dvc repro` to "
            "ingest them, or remove them from data.subjects and cv.subjects\n" in result.stderr), result.stderr
    for out in ("data/models", "data/predictions", "metrics/folds", "metrics/curves", "metrics/selections"):
        assert not (project.path / out).exists(), out
    assert not list(project.path.rglob("*.tmp*"))
    # Only `track` logs, from finished outputs: a failed training leaves nothing in MLflow.
    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    assert client.get_experiment_by_name("seedv-cross-modal") is None
