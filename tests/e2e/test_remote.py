"""The team loop through a DVC remote: one clone runs and pushes, a colleague's fresh clone pulls and has
every result without recomputing anything (README "Sharing results: a DVC remote")."""

import subprocess

import pytest

pytestmark = pytest.mark.e2e


def test_a_fresh_clone_pulls_every_result_and_reruns_nothing(project, tmp_path):
    remote, colleague = tmp_path / "remote", tmp_path / "colleague"
    project.make_tiny()
    project.run("dvc", "repro")
    project.run("dvc", "remote", "add", "-d", "shared", str(remote))    # an NFS share; s3://… the same way
    project.commit("results and the team's remote")
    project.run("dvc", "push")
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
