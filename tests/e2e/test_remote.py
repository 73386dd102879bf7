"""The team loop through a DVC remote: one clone runs and pushes, a colleague's fresh clone pulls and has
every result without recomputing anything (README "Sharing results: a DVC remote")."""

import re
import shutil
import subprocess
import sys

import mlflow
import pytest

pytestmark = pytest.mark.e2e


def test_a_fresh_clone_pulls_every_result_and_reruns_nothing(project, tmp_path):
    remote, colleague = tmp_path / "remote", tmp_path / "colleague"
    project.make_tiny()
    project.run("dvc", "repro")
    project.run("dvc", "remote", "add", "-d", "shared", str(remote))    # an NFS share; s3://… the same way
    project.commit("results and the team's remote")
    project.run("dvc", "push", "--run-cache")                           # outputs and what made them
    assert any(remote.rglob("*")), "nothing was pushed"

    def there(*args):
        result = subprocess.run(args, cwd=colleague, env=project.env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    subprocess.run(["git", "clone", "-q", str(project.path), str(colleague)], check=True, env=project.env)
    there("dvc", "pull")
    assert (colleague / "data/final_model/model.pt").read_bytes() == \
        (project.path / "data/final_model/model.pt").read_bytes()
    assert "Data and pipelines are up to date." in there("dvc", "status")
    rerun = there("dvc", "repro")
    assert "Running stage" not in rerun, rerun

    # The colleague rebuilds the logged execution: everything comes from the remote, nothing is retrained.
    client = mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    (parent,) = client.search_runs([client.get_experiment_by_name("seedv-cross-modal").experiment_id],
                                   "tags.`pipeline.role` = 'parent'")
    shutil.rmtree(colleague / ".dvc/cache")                           # only the remote has the results now
    rebuilt = there(sys.executable, "-m", "pipeline.rebuild", parent.info.run_id)
    assert re.search(r"^retrained: none; restored from DVC's cache and the remote 'shared', not retrained: "
                     r"synthesize, ingest, normalize, .*train.*final", rebuilt, re.M), rebuilt
    assert "rebuilt bit-identically" in rebuilt
