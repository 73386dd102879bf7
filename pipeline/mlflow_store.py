"""Where the MLflow store is, and talking to it safely.

- URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db`` where ``<repo>`` is
  ``DVC_ROOT`` (set by DVC, and pointing at the real repository even when ``dvc exp run`` works in a
  temporary copy) or the current directory.
- A SQLite store is checked before first use (:func:`check_store`), and first contact is serialized
  across processes (:func:`store_lock`): MLflow creates its tables then, and two processes doing so at
  once corrupt the migration.
- Writers are several processes when experiments run in parallel; SQLite then answers "database is
  locked" now and then, so calls go through :func:`retry` with exponential backoff. Only reads and
  idempotent writes are retried; creating a run is made idempotent by :func:`create_run_once`.
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import sys
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path

from .errors import UserError

REQUEST_TAG = "pipeline.request"   # client-generated id of one create_run call


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: for a SQLite store, ``mlruns/<experiment>`` beside the
    database file, an absolute path fixed at creation. MLflow's own default is ``./mlruns`` of the
    *current* directory, which under a queued ``dvc exp run`` is DVC's temporary workspace, deleted when
    the experiment ends (every artifact of its runs then gone). None for a server: it owns its store."""
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns" / experiment)


def check_artifact_root(location: str, experiment: str) -> None:
    """Refuse an experiment whose artifacts live in a DVC temporary workspace (created by an earlier
    version from a queued experiment): whatever is logged there is deleted with the workspace."""
    if "/.dvc/tmp/" in location:
        raise TrackingStoreError(
            f"MLflow experiment {experiment!r} keeps its artifacts in {location}, a DVC temporary workspace "
            "that DVC deletes after each experiment (its runs' artifacts are gone): rename the experiment in "
            "the MLflow UI, or set mlflow.experiment to a new name, so that a new one is created beside the store")


class TrackingStoreError(UserError, RuntimeError):
    """The MLflow store cannot be used as it is; the message is one line naming it and what to do."""


SQLITE_HEADER = b"SQLite format 3\x00"
LOCK_WAIT = 30        # seconds the check waits for a writer to let go of the store


def check_store(uri: str) -> str | None:
    """Refuse a damaged SQLite store before MLflow touches it: MLflow would answer a 0-byte file by
    silently creating a new empty store, and garbage or a damaged page with long tracebacks (or not
    at all). A missing file is fine: the first run creates it. Then :func:`follow_move`; returns the
    folder the project was moved from (None: not moved)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    if not path.exists():
        return None
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
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if _transient(exc):    # another process held its write lock all along: a working database
            return None
        verdict = str(exc)
    if verdict != "ok":
        raise TrackingStoreError(f"{path}: the MLflow store is damaged ({' '.join(verdict.split())[:120]}) — {fix}")
    return follow_move(path)


# Where a SQLite store keeps artifact paths (MLflow has no API to change them; these are its 3.x tables).
PATH_COLUMNS = {"experiments": ("artifact_location",), "runs": ("artifact_uri",),
                "logged_models": ("artifact_location",), "model_versions": ("source", "storage_location")}


def follow_move(path: Path) -> str | None:
    """Point the store's artifact paths at ``mlruns/`` beside ``path`` when the project was copied or moved.

    A SQLite store records absolute artifact paths (``<project>/mlruns/<experiment>/...``, fixed at
    creation): in a copy they still name the original folder, so the copy would show the original's files,
    or none. When an experiment's location lies in another folder's ``mlruns/`` and the same experiment
    folder exists beside this store, every path under that old ``mlruns/`` is rewritten to this one, in one
    transaction. Returns the old folder (None: nothing moved)."""
    here = str(path.resolve().parent / "mlruns") + "/"
    with closing(sqlite3.connect(path, timeout=LOCK_WAIT)) as db:
        try:
            locations = [row[0] for row in db.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.OperationalError:   # a store MLflow has not created its tables in yet
            return None
        for location in locations:
            local = (location or "").removeprefix("file://")
            if "/mlruns/" not in local or local.startswith(here) or not local.startswith("/"):
                continue
            old = local[:local.rindex("/mlruns/") + len("/mlruns/")]
            if not Path(here, local[len(old):]).is_dir():
                continue           # an artifact root the user chose elsewhere, not a moved project
            with db:               # one transaction: all paths or none
                for table, columns in PATH_COLUMNS.items():
                    for column in columns:
                        for scheme in ("", "file://"):   # plain paths and file:// URIs alike
                            prefix = scheme + old
                            db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                       f"WHERE substr({column}, 1, ?) = ?",
                                       (scheme + here, len(prefix) + 1, len(prefix), prefix))
            return old.removesuffix("/mlruns/")
    return None


def retry(call, *args, attempts: int = 8, **kwargs):
    """Run an MLflow read or idempotent write, retrying with backoff when the store is momentarily
    locked or unreachable. Not for ``create_run`` (see :func:`create_run_once`)."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # MlflowException wraps sqlite/http errors; only retry transient ones
            if refusal := access_refused(exc):
                raise refusal from None
            if not _transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0) * (1 + random.random()))


@contextmanager
def store_lock(uri: str):
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


def access_refused(exc: Exception) -> UserError | None:
    """A tracking server's 401 or 403 as one line saying what to do (None for any other error)."""
    code = getattr(exc, "error_code", None)
    if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return None
    server, user = tracking_uri(), os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED":
        who = f"the password of user {user!r} is wrong" if user else "no user given"
        return UserError(f"MLflow server {server} refused the request: {who} — set MLFLOW_TRACKING_USERNAME and "
                         "MLFLOW_TRACKING_PASSWORD to an account the server's admin created")
    endpoint = next((w for w in str(exc).split() if w.startswith("/api/")), "this request")
    return UserError(f"MLflow server {server}: user {user!r} may not call {endpoint} — ask the server's admin for "
                     "EDIT on the experiment (or MANAGE on the registered model)")


def _transient(exc: Exception) -> bool:
    return any(s in str(exc).lower() for s in ("locked", "busy", "timed out", "connection"))


def create_run_once(client, experiment_id: str, run_name: str, tags: dict[str, str], start_time: int | None = None,
                    attempts: int = 8):
    """``client.create_run`` (started at ``start_time``, Unix ms, default now) that never leaves a duplicate:
    a failed attempt may still have created the run (the answer was lost), so before trying again look the
    run up by a tag generated here."""
    request = uuid.uuid4().hex
    tags = {**tags, REQUEST_TAG: request}
    for attempt in range(attempts):
        try:
            return client.create_run(experiment_id, start_time=start_time, run_name=run_name, tags=tags)
        except Exception as exc:
            if refusal := access_refused(exc):
                raise refusal from None
            if not _transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0) * (1 + random.random()))
            found = retry(client.search_runs, [experiment_id], f"tags.`{REQUEST_TAG}` = '{request}'",
                          max_results=1)
            if found:
                return found[0]


def main() -> int:
    """``python -m pipeline.mlflow_store``: check the store of this project (``MLFLOW_TRACKING_URI``, else
    ``mlflow.db``) and follow a move of the project; run it before ``mlflow ui`` in a copied project (every
    stage and command of the pipeline does it on its own)."""
    uri = tracking_uri()
    try:
        with store_lock(uri):
            moved = check_store(uri)
    except TrackingStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{uri}: ok" + (f"; its artifact paths named {moved}, now the folder beside it" if moved else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
