"""The README's Ray cluster recipe, as a person runs it: `ray start --head` (token authentication on, as
Ray 2.59+ does when a token exists), then `RAY_ADDRESS=<head> dvc repro`."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port

pytestmark = pytest.mark.e2e


def test_the_train_stage_runs_through_a_hand_started_head_with_token_auth(project, tmp_path):
    project.make_tiny()
    project.run("dvc", "repro", "normalize")
    ray = str(Path(sys.executable).parent / "ray")
    home = tmp_path / "home"          # the person's ~/.ray/auth_token, not this machine's
    home.mkdir()
    env = {k: v for k, v in project.env.items() if not k.startswith("RAY_")} | {"HOME": str(home)}
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    assert (home / ".ray/auth_token").is_file()
    port = free_port()
    head = subprocess.Popen([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        joined = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        # A wrong token: one line naming the fix, nothing trained.
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 32)
        stage = [sys.executable, "-m", "stages.train", "data/processed/features.parquet", "data/models",
                 "data/predictions", "metrics/folds", "metrics/curves", "metrics/selections"]
        refused = subprocess.run(stage, cwd=project.path, env={**joined, "RAY_AUTH_TOKEN_PATH": str(wrong)},
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0, refused.stderr[-3000:]
        assert "the Ray head refused this driver's authentication token" in refused.stderr
        assert not (project.path / "data/models").exists()
        # The person's own token, from the default file: it trains every fold on the head.
        result = subprocess.run(["dvc", "repro", "--single-item", "train"], cwd=project.path, env=joined,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "(2/2)" in result.stdout and (project.path / "data/models/subject-2/model.pt").is_file()
    finally:
        head.terminate()          # `ray start --block` stops its head's processes on SIGTERM
        head.wait(timeout=60)
