"""The team tracking server (README recipe, `python -m pipeline.team_server`) against a real PostgreSQL:
strangers get nothing, readers cannot write, wrong credentials are one line."""

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from unittest import mock

import mlflow
import pytest

from pipeline import team_server as recipe
from pipeline.errors import UserError
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

PROJECT = "seedv-cross-modal"


def status(uri: str, method: str, path: str, body: dict | None = None, login: dict | None = None) -> int:
    """HTTP status of one REST call, as ``login``'s user (None: no credentials at all)."""
    request = urllib.request.Request(f"{uri}{path}", method=method, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
    if login:
        token = f"{login['MLFLOW_TRACKING_USERNAME']}:{login['MLFLOW_TRACKING_PASSWORD']}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(token).decode()}")
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_strangers_and_readers_cannot_touch_the_project(team_server):
    alice, bob = team_server.user("alice", writer=True), team_server.user("bob")
    with mock.patch.dict(os.environ, alice):                # alice's work: a run, a model version, @candidate
        client = mlflow.MlflowClient(team_server.uri)
        experiment = client.get_experiment_by_name(PROJECT).experiment_id
        run = client.create_run(experiment).info.run_id
        client.create_registered_model(PROJECT)
        client.create_model_version(PROJECT, f"runs:/{run}/final", run)
        client.set_registered_model_alias(PROJECT, "candidate", "1")
    uri = team_server.uri
    writes = {
        "create a run": ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment}),
        "delete a run": ("POST", "/api/2.0/mlflow/runs/delete", {"run_id": run}),
        "tag a run": ("POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": run, "key": "k", "value": "v"}),
        "move the alias": ("POST", "/api/2.0/mlflow/registered-models/alias",
                           {"name": PROJECT, "alias": "candidate", "version": "1"}),
        "register a version": ("POST", "/api/2.0/mlflow/model-versions/create",
                               {"name": PROJECT, "source": f"runs:/{run}/x", "run_id": run}),
        "delete the model": ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": PROJECT}),
    }
    reads = {
        "read a run": ("GET", f"/api/2.0/mlflow/runs/get?run_id={run}", None),
        "list experiments": ("GET", "/api/2.0/mlflow/experiments/search?max_results=10", None),
        "read the alias": ("GET", f"/api/2.0/mlflow/registered-models/alias?name={PROJECT}&alias=candidate", None),
        "list artifacts": ("GET", f"/api/2.0/mlflow/artifacts/list?run_id={run}", None),
    }
    nobody = {what: status(uri, *call) for what, call in {**writes, **reads}.items()}
    assert nobody == {what: 401 for what in nobody}, nobody              # no credentials: nothing at all
    reader = {what: status(uri, *call, login=bob) for what, call in writes.items()}
    assert reader == {what: 403 for what in reader}, reader              # a reader writes nothing
    assert {status(uri, *call, login=bob) for call in reads.values()} == {200}
    assert status(uri, *writes["tag a run"], login=alice) == 200         # the writer can
    with mock.patch.dict(os.environ, alice):
        assert mlflow.MlflowClient(uri).get_model_version_by_alias(PROJECT, "candidate").version == "1"
    assert status(uri, "GET", "/health", login=None) == 200              # health only, for load balancers


def test_wrong_credentials_and_missing_permissions_are_one_line(team_server):
    bob = team_server.user("bob")
    wrong = {**bob, "MLFLOW_TRACKING_PASSWORD": "not-his-password"}
    for login, message in ((wrong, "refused the request: the password of user 'bob' is wrong — set "
                                   "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                           ({**bob, "MLFLOW_TRACKING_USERNAME": ""}, "refused the request: no user given")):
        done = subprocess.run([sys.executable, "-m", "pipeline.rebuild", "0" * 32], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, **login}, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    from pipeline.tracking import Tracker

    team_server.user("alice", writer=True)                     # the project's experiment exists now
    with mock.patch.dict(os.environ, bob):
        tracker = Tracker(PROJECT)                             # reading it is allowed
        with pytest.raises(UserError, match=r"user 'bob' may not call /api/2.0/mlflow/runs/create — ask the "
                                            r"server's admin for EDIT"), tracker.run("p", "parent"):
            pass


def test_the_recipe_refuses_a_weak_admin_password_and_binds_to_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "password1234")      # MLflow's old built-in default
    args = ["--store", "postgresql://db/m", "--auth-store", "postgresql://db/a", "--artifacts", str(tmp_path)]
    assert recipe.main(args) == 1
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD")
    with pytest.raises(UserError, match="no admin password: set MLFLOW_AUTH_ADMIN_PASSWORD"):
        recipe.admin_password(None)
    (tmp_path / "secret").write_text("a long enough secret\n")
    parser_args = mock.Mock(store="postgresql://db/m", auth_store="postgresql://db/a", artifacts=str(tmp_path),
                            port=5000, public_url="https://mlflow.lab.example", admin_password_file=tmp_path / "secret",
                            workers=2)
    argv, env = recipe.command(parser_args)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--app-name") + 1] == "basic-auth"
    assert argv[argv.index("--allowed-hosts") + 1] == "127.0.0.1:5000,localhost:5000,mlflow.lab.example"
    assert "https://mlflow.lab.example" in argv[argv.index("--cors-allowed-origins") + 1]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "a long enough secret" and "secret" not in " ".join(argv)
    config = open(env["MLFLOW_AUTH_CONFIG_PATH"]).read()
    assert "default_permission = READ" in config and "password" not in config
