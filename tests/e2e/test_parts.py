"""Datasets, splits and models chosen with `dvc exp run -S ...`: the whole pipeline, one MLflow child per
fold named by fold, and the fold files the split prescribes."""

import json

import mlflow
import pytest

pytestmark = pytest.mark.e2e


def children_of_last_parent(project) -> dict[str, str]:
    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("seedv-cross-modal")
    runs = client.search_runs([experiment.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("pipeline.role") == "parent")
    assert parent.info.status == "FINISHED"
    return {r.info.run_name: r.info.status for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


def fold_files(project) -> list[str]:
    root = project.path / "metrics/folds"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.json"))


@pytest.mark.parametrize("settings,folds", [
    (["cv.split=subject-dependent", "model.name=svm"],
     [f"subject-{s}/block-{b}" for s in (1, 2) for b in (1, 2, 3)]),
    (["data.dataset=seed-iv", "cv.split=cross-session", "model.name=dcca"],
     [f"subject-{s}/session-{k}" for s in (1, 2) for k in (1, 2, 3)]),
])
def test_an_experiment_on_other_parts_runs_end_to_end(project, settings, folds):
    project.make_tiny()
    project.run("dvc", "exp", "run", *[arg for s in settings for arg in ("-S", s)])
    assert fold_files(project) == folds
    children = children_of_last_parent(project)
    assert children == {**{f"fold {f}": "FINISHED" for f in folds}, "final": "FINISHED"}
    metrics = json.loads((project.path / "metrics/metrics.json").read_text())
    per_subject = json.loads((project.path / "metrics/per_subject.json").read_text())
    assert metrics["n_folds"] == 2 and set(per_subject) == {"1", "2"}          # a subject's folds pooled
    assert per_subject["1"]["trial"]["n"] == (45 if "seed-iv" not in settings[0] else 72)
    baselines = json.loads((project.path / "metrics/baselines.json").read_text())
    assert {"length-only", "position-only", "chance"} <= set(baselines)       # the audits on the same folds
    assert "up to date" in project.run("dvc", "status").stdout
