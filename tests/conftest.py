import os
import shutil
import subprocess
import sys
from pathlib import Path

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
