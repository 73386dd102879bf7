"""Everything MLflow: where the store is, one parent run per pipeline execution, child runs per stage.

- Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db`` where ``<repo>`` is
  ``DVC_ROOT`` (set by DVC, and pointing at the real repository even when ``dvc exp run`` works in a
  temporary copy) or the current directory.
- Parent run: every stage is its own process, so the parent is found (or created) by the tag
  ``pipeline.execution``. Its value identifies the DVC process running the stages (pid, start time and
  boot id of the nearest ``dvc`` ancestor process), so one ``dvc repro`` or one ``dvc exp run`` (queued
  or not) is one parent, and a rerun is a new one. ``PIPELINE_EXECUTION`` overrides it.
- Writers are several processes when experiments run in parallel; SQLite then answers "database is
  locked" now and then, so every write goes through :func:`retry` with exponential backoff.

Nothing here is written into DVC-tracked outputs (run ids would break DVC's caching).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import random
import sqlite3
import subprocess
import time
from contextlib import closing, contextmanager
from pathlib import Path

from .errors import UserError

EXECUTION_TAG = "pipeline.execution"
ROLE_TAG = "pipeline.role"  # parent | fold | baselines | evaluate | plots
CODE_PATHS = ("pipeline", "stages", "dvc.yaml", "requirements.txt")


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


class TrackingStoreError(UserError, RuntimeError):
    """The MLflow store cannot be used as it is; the message is one line naming it and what to do."""


SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(uri: str) -> None:
    """Refuse a damaged SQLite store before MLflow touches it: MLflow would answer a 0-byte file by
    silently creating a new empty store, and garbage or a damaged page with long tracebacks (or not
    at all). A missing file is fine: the first run creates it."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if not path.exists():
        return
    fix = (f"restore {path} from a backup, or move it away to start a new, empty store "
           "(the runs it held are then gone from the UI)")
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingStoreError(f"{path}: cannot read the MLflow store ({exc.strerror}) — {fix}") from None
    if not header:
        raise TrackingStoreError(f"{path}: the MLflow store is empty (0 bytes; truncated?) — {fix}")
    if header != SQLITE_HEADER:
        raise TrackingStoreError(f"{path}: the MLflow store is not an SQLite database (overwritten?) — {fix}")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise TrackingStoreError(f"{path}: the MLflow store is damaged ({' '.join(verdict.split())[:120]}) — {fix}")


def retry(call, *args, attempts: int = 8, **kwargs):
    """Run an MLflow call, retrying with backoff when the store is momentarily locked or unreachable."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # MlflowException wraps sqlite/http errors; only retry transient ones
            transient = any(s in str(exc).lower() for s in ("locked", "busy", "timed out", "connection"))
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0) * (1 + random.random()))


@contextmanager
def _store_lock(uri: str):
    """Serialize first contact with a SQLite store across processes: MLflow creates its tables on first
    use, and two processes doing so at the same instant corrupt the migration."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(f"{uri[len('sqlite:///'):]}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dvc_process() -> str | None:
    """``pid:start_time:boot_id`` of the nearest ancestor process that is DVC, if any (Linux /proc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid = os.getppid()
        while pid > 1:
            args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if any(os.path.basename(a) == "dvc" for a in args[:2]) or args[1:3] == ["-m", "dvc"]:
                return f"{pid}:{fields[19]}:{boot}"
            pid = int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def execution_id() -> str:
    raw = os.environ.get("PIPELINE_EXECUTION") or _dvc_process() or f"process:{os.getpid()}:{time.time()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def git_state(root: Path) -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    # Dirty means uncommitted *code*, untracked files included: an untracked module under the code paths
    # or a stray ./<name>.py at the root (it shadows an installed package) runs as much as tracked code.
    # params.yaml is logged as an artifact, and outputs change during a run.
    code = git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS, ":(glob)*.py")
    return {"git.commit": git("rev-parse", "HEAD") or "none", "git.dirty": str(bool(code)).lower()}


def data_hashes(lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """Content hashes (md5, from dvc.lock) of the raw data read by ingest and of the processed table."""
    import yaml

    try:
        stages = yaml.safe_load(lock_path.read_text())["stages"]
    except (OSError, KeyError, TypeError):
        return {}
    out = {}
    for dep in stages.get("ingest", {}).get("deps", []):
        if not dep["path"].endswith(".py"):
            out["data.raw_md5"] = dep.get("md5", "")
    for item in stages.get("normalize", {}).get("outs", []):
        out["data.processed_md5"] = item.get("md5", "")
    return out


def _alive(tags: dict[str, str]) -> bool:
    """Whether the process that opened a run (tags written by :meth:`Tracker.stage_run`) still runs."""
    if tags.get("pipeline.host") != platform.node():
        return True   # another machine's run: cannot tell, leave it alone
    try:
        if tags.get("pipeline.boot") != Path("/proc/sys/kernel/random/boot_id").read_text().strip():
            return False
    except OSError:
        pass
    try:
        os.kill(int(tags.get("pipeline.pid", "0")), 0)
    except (OSError, ValueError):
        return False
    return True


def _process_tags() -> dict[str, str]:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return {"pipeline.host": platform.node(), "pipeline.pid": str(os.getpid()), "pipeline.boot": boot}


def environment_tags() -> dict[str, str]:
    import dvc
    import mlflow
    import numpy
    import torch

    return {"version.python": platform.python_version(), "version.torch": torch.__version__,
            "version.numpy": numpy.__version__, "version.dvc": dvc.__version__,
            "version.mlflow": mlflow.__version__}


class Tracker:
    """One stage's view of the MLflow store: its execution's parent run and its own child run."""

    def __init__(self, experiment: str):
        import mlflow

        self.mlflow = mlflow
        uri = tracking_uri()
        mlflow.set_tracking_uri(uri)
        with _store_lock(uri):
            check_store(uri)
            self.client = mlflow.MlflowClient(uri)
            self.experiment_id = self._experiment(experiment)
        self.execution = execution_id()

    def _experiment(self, name: str) -> str:
        found = retry(self.client.get_experiment_by_name, name)
        if found:
            return found.experiment_id
        try:
            return retry(self.client.create_experiment, name)
        except Exception:  # another process (on a shared server) created it first
            return retry(self.client.get_experiment_by_name, name).experiment_id

    def parent(self, params_flat: dict, tags: dict[str, str] | None = None) -> str:
        """The run id of this execution's parent run, created (with params and tags) if missing."""
        query = f"tags.`{EXECUTION_TAG}` = '{self.execution}' and tags.`{ROLE_TAG}` = 'parent'"
        runs = retry(self.client.search_runs, [self.experiment_id], query, max_results=1)
        if runs:
            return runs[0].info.run_id
        exp_name = os.environ.get("DVC_EXP_NAME", "")
        run_tags = {EXECUTION_TAG: self.execution, ROLE_TAG: "parent", **git_state(Path.cwd()),
                    **data_hashes(), **environment_tags(), **({"dvc.experiment": exp_name} if exp_name else {}),
                    **(tags or {})}
        name = f"pipeline {exp_name}".strip() if exp_name else "pipeline"
        run = retry(self.client.create_run, self.experiment_id, run_name=name, tags=run_tags)
        try:
            self.log_params(run.info.run_id, params_flat)
            if Path("params.yaml").is_file():   # the exact file, for pipeline.rebuild
                retry(self.client.log_artifact, run.info.run_id, "params.yaml")
        finally:   # a parent is RUNNING only while one of its stages runs (see stage_run)
            retry(self.client.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id

    def log_params(self, run_id: str, params_flat: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params_flat.items()]
        for start in range(0, len(items), 100):
            retry(self.client.log_batch, run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        retry(self.client.log_batch, run_id, metrics=batch)

    def close_stale(self) -> None:
        """Mark as KILLED every RUNNING stage run whose process is gone (a SIGKILLed process leaves its
        run RUNNING), and FAILED the parents left RUNNING by it."""
        query = f"attributes.status = 'RUNNING' and tags.`{ROLE_TAG}` != 'parent'"
        for run in retry(self.client.search_runs, [self.experiment_id], query):
            if not _alive(run.data.tags):
                retry(self.client.set_terminated, run.info.run_id, "KILLED")
                parent = run.data.tags.get("mlflow.parentRunId")
                if parent:
                    retry(self.client.set_terminated, parent, "FAILED")

    @contextmanager
    def stage_run(self, parent_id: str, role: str, name: str, params_flat: dict | None = None):
        """A child run for one stage. It ends FINISHED, FAILED on an error, or KILLED on Ctrl-C/SIGTERM;
        the parent's status follows the last stage that ran (FINISHED, or FAILED if that stage failed)."""
        self.close_stale()
        retry(self.client.update_run, parent_id, status="RUNNING")
        run = retry(self.client.create_run, self.experiment_id, run_name=name,
                    tags={"mlflow.parentRunId": parent_id, EXECUTION_TAG: self.execution, ROLE_TAG: role,
                          **_process_tags()})
        run_id = run.info.run_id
        if params_flat:
            self.log_params(run_id, params_flat)
        try:
            yield run_id
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 143)
            retry(self.client.set_terminated, run_id, "KILLED" if interrupted else "FAILED")
            retry(self.client.set_terminated, parent_id, "FAILED")
            raise
        retry(self.client.set_terminated, run_id, "FINISHED")
        retry(self.client.set_terminated, parent_id, "FINISHED")

    def log_model(self, run_id: str, model, example) -> None:
        """Log a torch module with its signature (inferred from a numpy example batch)."""
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        with self.mlflow.start_run(run_id=run_id, nested=True):
            retry(self.mlflow.pytorch.log_model, model, name="model", signature=signature,
                  input_example=example, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            retry(self.client.set_tag, run_id, key, value)

    def register_best_fold(self, parent_id: str, name: str):
        """Register the model of this execution's fold with the best held-out trial accuracy."""
        query = f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{ROLE_TAG}` = 'fold'"
        runs = retry(self.client.search_runs, [self.experiment_id], query,
                     order_by=["metrics.`trial.accuracy` DESC"], max_results=1)
        if not runs:
            return None
        return retry(self.mlflow.register_model, f"runs:/{runs[0].info.run_id}/model", name)

    def log_artifacts(self, run_id: str, paths) -> None:
        for path in paths:
            retry(self.client.log_artifact, run_id, str(path))
