"""MLflow as the lab notebook, end to end: run structure of real executions, and their exact rebuild."""

import hashlib
import re
import sys

import mlflow
import pytest

from pipeline import tracking

pytestmark = pytest.mark.e2e


def runs(uri, experiment="seedv-cross-modal"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


def test_parents_children_and_rebuild(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project.make_tiny()
    project.run("dvc", "repro")
    project.commit("results")
    project.run("dvc", "exp", "run", "-S", "model.heads=4", "-S", "train.seeds=2")   # 2 trainings per fold

    table = runs(uri)
    parents = table[table["tags.pipeline.role"] == "parent"]
    assert len(parents) == 2
    first = parents[parents["tags.dvc.experiment"].isna()].iloc[0].run_id
    for _, parent in parents.iterrows():
        children = table[table["tags.mlflow.parentRunId"] == parent.run_id]
        # Each parent is complete, whatever DVC reran (baselines do not depend on model params).
        assert set(children["tags.mlflow.runName"]) == {"fold subject-1", "fold subject-2", "final"}
        assert (children["status"] == "FINISHED").all() and parent.status == "FINISHED"
        for key in ("git.commit", "git.dirty", "data.raw_md5", "data.processed_md5", "version.torch",
                    "version.python", "version.numpy", "version.dvc", "version.mlflow", "device.names"):
            assert isinstance(parent[f"tags.{key}"], str) and parent[f"tags.{key}"], key
        assert parent["params.model.d_model"] == "16"
        assert 0 <= parent["metrics.trial/accuracy_mean"] <= 1
        assert "metrics.baseline/length-only/trial/accuracy_mean" in parent.index
        assert 0 <= parent["metrics.audit/position_probe/accuracy_mean"] <= 1
    experiment_parent = parents[parents["tags.dvc.experiment"].notna()].iloc[0]
    assert experiment_parent["params.model.heads"] == "4"
    assert experiment_parent["metrics.seeds/n"] == 2 and experiment_parent["metrics.seeds/trial_accuracy_std"] >= 0
    # Names and keys as the UI shows them: parents after the commit (or the DVC experiment), one metric
    # namespace, no `epoch` metric (it is the step), bookkeeping tags under `pipeline.`.
    plain_parent = parents[parents["tags.dvc.experiment"].isna()].iloc[0]
    assert re.fullmatch(r"[0-9a-f]{6}", plain_parent["tags.mlflow.runName"])
    assert experiment_parent["tags.mlflow.runName"] == experiment_parent["tags.dvc.experiment"]
    metric_keys = {c[len("metrics."):] for c in table.columns if c.startswith("metrics.")}
    assert {"trial/accuracy", "trial/accuracy_mean", "window/accuracy_mean", "baseline/both-logreg/trial/accuracy_mean",
            "inner/loss", "inner/val_f1", "selection/chosen_epoch", "final/epochs"} <= metric_keys
    assert "epoch" not in metric_keys and not {"loss", "val_f1"} & metric_keys   # the inner training is named
    tags = {c[len("tags."):] for c in table.columns if c.startswith("tags.")}
    assert all(t.split(".")[0] in ("mlflow", "git", "data", "version", "dvc", "pipeline", "device", "model")
               for t in tags), sorted(tags)
    assert not set(tracking.BOOKKEEPING_TAGS) & tags   # process/request ids are dropped when a run ends
    folds = table[(table["tags.pipeline.role"] == "fold")]
    assert folds["metrics.inner/train_accuracy"].notna().all() and folds["tags.git.commit"].notna().all()
    assert folds["tags.mlflow.note.content"].str.contains("the refit model").all()   # the page says which is which
    assert (folds["tags.mlflow.source.name"] == "stages/track.py").all() and folds["tags.mlflow.user"].notna().all()
    history = mlflow.MlflowClient(uri).get_metric_history(folds.iloc[0].run_id, "inner/loss")
    assert [m.step for m in history] == [1, 2]                     # the epoch is the step (tiny: 2 epochs)
    model_ids = mlflow.search_logged_models(experiment_ids=[parents.iloc[0].experiment_id], output_format="list")
    # Fold weights live in DVC's cache alone: their runs name the file (path and md5), only final is logged.
    assert sorted(m.name for m in model_ids) == ["final", "final"]
    latest = folds[folds["tags.mlflow.parentRunId"] == experiment_parent.run_id]   # its files are in the workspace
    assert len(latest) == 2
    for _, run in latest.iterrows():
        weights = (project.path / run["tags.model.path"]).read_bytes()
        assert hashlib.md5(weights).hexdigest() == run["tags.model.md5"]
    assert (folds["tags.device.type"] == "cpu").all() and (parents["tags.device.names"] == "cpu").all()

    # Rebuild the first execution exactly.
    ok = project.run(sys.executable, "-m", "pipeline.rebuild", first, "--retrain", check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "rebuilt bit-identically" in ok.stdout and "trial/accuracy_mean" in ok.stdout
    assert re.search(r"^retrained: synthesize, ingest, .*train.*; restored .*: none$", ok.stdout, re.M), ok.stdout
    # ... down to each held-out subject's metrics and each fold's window probabilities.
    assert re.search(r"^subject 2/trial/accuracy .* yes$", ok.stdout, re.M), ok.stdout
    assert re.search(r"^predictions/subject-1 max \|Δ probability\| +0\.0 +0\.0 +yes$", ok.stdout, re.M), ok.stdout

    # Tampering with a logged metric makes it fail loudly.
    client = mlflow.MlflowClient(uri)
    client.log_metric(first, "trial/accuracy_mean", 0.123456)
    bad = project.run(sys.executable, "-m", "pipeline.rebuild", first, check=False)
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout
    assert any("trial/accuracy_mean" in line and line.endswith("NO") for line in bad.stdout.splitlines())

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
