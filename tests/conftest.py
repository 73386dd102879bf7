import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from pipeline.datasets.seedv import SPEC
from pipeline.features import ID_COLUMNS
from pipeline.params import from_dict
from pipeline.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def make_params(**sections):
    """The project's params.yaml with some keys replaced: ``make_params(model={"heads": 2})``."""
    return from_dict({name: {**values, **sections.get(name, {})} for name, values in DEFAULT_PARAMS.items()})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 120) -> None:
    """Return once something accepts connections on 127.0.0.1:``port`` (or ``seconds`` have passed)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(1)


WINDOWS_PER_SUBJECT = sum(SPEC.trial_windows)             # 1823
TABLE_COLUMNS = len(ID_COLUMNS) + len(SPEC.feature_columns)   # 348
SMALL_MODEL = make_params(model=dict(d_model=16, heads=2, layers=1, d_ff=32, dropout=0.1)).model


@pytest.fixture
def dataset(tmp_path):
    """A two-subject synthetic SEED-V folder."""
    root = tmp_path / "SEED-V"
    write_dataset(root, seed=0, n_subjects=2)
    return root


def _project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


@pytest.fixture
def project(tmp_path):
    """A committed copy of the project's files (no data, no caches) in its own git repository.

    ``project.run(*args)`` runs a command there with the test's Python environment on PATH (and
    ``project.env``, MLflow pointing at a SQLite file in the test's folder), raising
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds when one is given;
    ``project.set_params(section, **values)`` edits params.yaml.
    """
    dest = tmp_path / "project"
    for name in _project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_ROOT", None)

    class Project:
        path = dest

        def __init__(self):
            self.env = env

        def run(self, *args, check=True, timeout=None):
            result = subprocess.run(args, cwd=dest, env=self.env, capture_output=True, text=True, timeout=timeout)
            if check and result.returncode != 0:
                raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
            return result

        def set_params(self, section, **values):
            path = dest / "params.yaml"
            params = yaml.safe_load(path.read_text())
            params[section].update(values)
            path.write_text(yaml.safe_dump(params, sort_keys=False))

        def commit(self, message="test"):
            self.run("git", "add", "-A")
            self.run("git", "commit", "-qm", message)

        def make_tiny(self):
            """Three synthetic subjects, two folds, a small model, two epochs: the e2e tests' config."""
            self.set_params("synthetic", subjects=3)
            self.set_params("data", subjects=[1, 2, 3])
            self.set_params("cv", subjects=[1, 2])
            self.set_params("model", d_model=16, heads=2, layers=1, d_ff=32)
            self.set_params("train", epochs=2, crops_per_trial=1, validation=1)
            self.commit("tiny")

    p = Project()
    p.run("git", "init", "-q", "-b", "main")
    p.commit("copy")
    return p


@pytest.fixture(scope="session")
def tiny_frame():
    """Normalized feature table of three synthetic subjects."""
    import pandas as pd

    from pipeline.features import normalize, recording_to_frame
    from pipeline.synthetic import generate_subject

    frame = pd.concat([recording_to_frame(generate_subject(0, s), SPEC) for s in (1, 2, 3)], ignore_index=True)
    return normalize(frame, "subject")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process test that needs it (starting one takes seconds)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on localhost with databases ``mlflow`` and ``mlflow_auth``; yields
    the SQLAlchemy URI of ``mlflow`` (``mlflow_auth``: the same with ``_auth`` appended)."""
    import glob
    import tempfile

    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not initdb[-1]:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs them)")
    bindir = Path(initdb[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run([*as_postgres, bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data, "-l", data / "log", "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        for database in ("mlflow", "mlflow_auth"):
            subprocess.run([bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
                           check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


class TeamServer:
    """The README's team tracking server (``python -m pipeline.team_server``), running; ``admin`` holds
    its admin account."""

    def __init__(self, uri: str, admin_password: str):
        self.uri, self.admin = uri, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": admin_password}

    def user(self, name: str, writer: bool = False) -> dict[str, str]:
        """Create user ``name`` (reading everything, as every new user does; ``writer``: allowed to create and
        edit the project's experiment and model) and return the environment that logs in as them."""
        from mlflow.server.auth.client import AuthServiceClient

        from pipeline.tracking import EXPERIMENT_KIND

        password = f"{name}-{os.urandom(8).hex()}"
        with mock.patch.dict(os.environ, self.admin):
            auth = AuthServiceClient(self.uri)
            auth.create_user(name, password)
            if writer:   # the admin grants a writer EDIT on the project's experiment, as the README says
                import mlflow

                client = mlflow.MlflowClient(self.uri)
                experiment = client.get_experiment_by_name("seedv-cross-modal") or client.get_experiment(
                    client.create_experiment("seedv-cross-modal", tags=EXPERIMENT_KIND))
                auth.grant_user_permission(name, "experiment", experiment.experiment_id, "EDIT")
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.fixture
def team_server(postgres, tmp_path):
    """``python -m pipeline.team_server`` on a free loopback port, against :func:`postgres`, artifacts in
    ``tmp_path / "mlartifacts"``: the command the README gives a team."""
    import time
    import urllib.request

    port, password = free_port(), os.urandom(12).hex()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.team_server", "--store", postgres, "--auth-store", f"{postgres}_auth",
         "--artifacts", str(tmp_path / "mlartifacts"), "--port", str(port), "--workers", "1"], cwd=ROOT,
        env={**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": password}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"team server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(1)
        yield TeamServer(uri, password)
    finally:
        server.terminate()
        server.wait(timeout=30)
