"""Rebuild a logged pipeline execution exactly, and compare its metrics with the logged ones (its exact
metrics files; MLflow's metrics, rounded for reading, must agree with those files too).

    python -m pipeline.rebuild <run_id> [--retrain]     (a parent run, or any of its children)

Checks out the run's git commit in a temporary git worktree, restores its exact ``params.yaml`` (logged
as an artifact, and first checked against the run's logged params), then ``dvc repro`` with MLflow
pointed at a scratch store. What DVC has already (the repository's cache, and the project's DVC remote
when one is configured: ``dvc pull --run-cache``) is restored, not retrained; ``--retrain`` reruns every
stage (``dvc repro --force``: nothing is reused), the check that the results can be made again. It then
prints which stages were restored and which ran, logged vs rebuilt side by side — the summary metrics,
every held-out subject's metrics (``metrics/per_subject.json``) and every fold's predictions (largest
difference of any window's class probability) — and one verdict: identical, within tolerance
(max |Δ| ≤ TOLERANCE), or different.

Exit status: 0 identical; 1 rebuilt but not identical (within tolerance or different); 2 could not
rebuild (unknown run, missing artifact, uncommitted code, a stage failed), with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import params
from .errors import UserError
from .mlflow_store import TrackingStoreError, check_store, repo_root, retry, tracking_uri
from .tracking import ROLE_TAG, pipeline_metrics, shown


# A guess, not a measurement: half a point of accuracy/F1. Only one CPU type has been available, on which
# every rebuild was bit-identical; how far another CPU type or a GPU moves a result is unmeasured.
TOLERANCE = 0.005


class RebuildError(RuntimeError):
    """The execution could not be rebuilt; the message is one line."""


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise RebuildError(f"{' '.join(map(str, args))} failed: {last}")
    return result.stdout


def _parent_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        run = retry(client.get_run, run_id)
        if run.data.tags.get(ROLE_TAG) != "parent":
            parent = run.data.tags.get("mlflow.parentRunId")
            if not parent:
                raise RebuildError(f"run {run_id} is not a pipeline run (no parent run tag)")
            run = retry(client.get_run, parent)
    except MlflowException as exc:
        raise RebuildError(f"run {run_id} not found in {tracking_uri()} ({exc.error_code}) — check the id "
                           "and MLFLOW_TRACKING_URI") from None
    return run


def _logged_params_file(client, run, scratch: Path) -> Path:
    """The run's params.yaml artifact, after checking that it says what the run's logged params say."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # keep errors one line
    try:
        path = Path(client.download_artifacts(run_id, "params.yaml", str(scratch)))
    except (MlflowException, OSError) as exc:
        raise RebuildError(f"run {run_id} has no readable params.yaml artifact ({type(exc).__name__}) — "
                           "it cannot be rebuilt exactly") from None
    try:
        artifact = params.load(path).flat()
    except params.ParamsError as exc:
        raise RebuildError(f"the params.yaml artifact of run {run_id} is not valid: {exc}") from None
    logged = run.data.params
    for key, value in artifact.items():
        if key in logged and logged[key] != str(value):
            raise RebuildError(f"the params.yaml artifact of run {run_id} disagrees with the params the run "
                               f"logged ({key}: artifact {value}, logged {logged[key]}) — it was changed "
                               "after the run")
    return path


def per_subject_values(path: Path) -> dict[str, float]:
    """``metrics/per_subject.json`` flattened: ``{"subject 3/trial/accuracy": 0.8, ...}``."""
    return {f"subject {s}/{level}/{key}": value for s, levels in json.loads(path.read_text()).items()
            for level, values in levels.items() for key, value in values.items()}


def prediction_differences(logged: Path, rebuilt: Path) -> dict[str, float]:
    """Per fold, the largest |difference| of any window's class probability between two predictions
    folders (inf when a fold is missing or its rows differ)."""
    import numpy as np
    import pandas as pd

    out = {}
    for path in sorted(logged.rglob("*.parquet")):
        fold = path.relative_to(logged).with_suffix("")
        key = f"predictions/{fold} max |Δ probability|"
        other = rebuilt / path.relative_to(logged)
        a, b = pd.read_parquet(path), (pd.read_parquet(other) if other.is_file() else None)
        ids = ["subject", "session", "trial", "window", "label"]
        if b is None or a.shape != b.shape or not a[ids].equals(b[ids]):
            out[key] = float("inf")
            continue
        columns = [c for c in a.columns if c.startswith("p_")]
        out[key] = float(np.abs(a[columns].to_numpy(np.float64) - b[columns].to_numpy(np.float64)).max())
    return out


def _download(client, run_id: str, path: str, scratch: Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, path, str(scratch)))
    except (MlflowException, OSError) as exc:
        raise RebuildError(f"run {run_id} has no readable {path} artifact ({type(exc).__name__}) — it was "
                           "logged by an older pipeline or removed; it cannot be compared") from None


def _checkout_added_data(source: Path, env: dict) -> None:
    """``dvc checkout`` of the ``dvc add``-ed inputs (a real SEED-V): they are not rebuilt by any stage, so
    a cache that lacks them is an error; stage outputs are all rebuilt by ``repro --force``."""
    added = [f for f in _run(["git", "ls-files", "*.dvc"], cwd=source).split() if f]
    if added:
        _run(["dvc", "checkout", "--quiet", *added], cwd=source, env=env)


def _stages(output: str) -> dict[str, str]:
    """What ``dvc repro`` did with each stage, from its output: ``ran`` or ``restored`` (from the run-cache,
    or unchanged with its outputs in the cache)."""
    done = {}
    for line in output.splitlines():
        for pattern, what in ((r"Running stage '([^']+)'", "ran"), (r"Stage '([^']+)' is cached", "restored"),
                              (r"Stage '([^']+)' didn't change", "restored")):
            if match := re.search(pattern, line):
                done.setdefault(match.group(1), what)
    return done


def _reuse(root: Path, source: Path, env: dict) -> str | None:
    """Let the worktree reuse the results the repository has: its ``dvc.lock`` and the outputs DVC does
    not cache (metrics, kept in git), reused only for stages whose code, params, inputs and outputs DVC
    finds to match that lock; and, from its default DVC remote, the cached outputs and the run history
    (``--run-cache``) fetched into the cache. What is in neither is rebuilt. The remotes are the
    repository's as configured now (a remote added after the run's commit counts), given to the worktree
    as its local config. The remote's name, or None."""
    from dvc.config import Config
    from dvc.repo import Repo

    if (root / "dvc.lock").is_file():
        shutil.copy(root / "dvc.lock", source / "dvc.lock")
        with Repo(str(root)) as repo:
            uncached = [out.def_path for stage in repo.index.stages for out in stage.outs if not out.use_cache]
        for path in uncached:
            if (root / path).is_dir():
                shutil.rmtree(source / path, ignore_errors=True)
                shutil.copytree(root / path, source / path)
            elif (root / path).is_file():
                (source / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / path, source / path)
    configured = Config(dvc_dir=str(root / ".dvc"))
    remotes, remote = configured["remote"], configured["core"].get("remote")
    if not remotes:
        return None
    remote = remote or next(iter(remotes))
    with Config(dvc_dir=str(source / ".dvc")).edit("local") as worktree:
        worktree["remote"].update(remotes)
    _run(["dvc", "pull", "--remote", remote, "--run-cache", "--allow-missing", "--quiet"], cwd=source, env=env)
    return remote


def rebuild(run_id: str, root: Path | None = None, retrain: bool = False
            ) -> tuple[list[tuple[str, float | None, float | None]], dict[str, str], str | None]:
    """Rebuild the execution of ``run_id`` (``retrain``: every stage rerun, nothing reused); return (rows,
    stages, remote): (metric, logged, rebuilt) for every logged metric, every held-out subject's metric, and
    per fold (predictions, 0 (the logged ones), largest probability difference); what ``dvc repro`` did with
    each stage (ran / restored); the DVC remote pulled from (None: none)."""
    import mlflow

    root = Path(root or repo_root())
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise RebuildError(f"no MLflow store at {uri} — set MLFLOW_TRACKING_URI to the store that holds the run")
    try:
        check_store(uri)
    except TrackingStoreError as exc:
        raise RebuildError(str(exc)) from None
    client = mlflow.MlflowClient(uri)
    run = _parent_run(client, run_id)
    tags = run.data.tags
    if tags.get("git.dirty") != "false" or "git.commit" not in tags:
        raise RebuildError(f"run {run.info.run_id} was made from uncommitted code; its code is not in git")
    if not run.data.metrics:
        raise RebuildError(f"run {run.info.run_id} has no metrics to compare")

    scratch = Path(tempfile.mkdtemp(prefix="rebuild-"))
    source = scratch / "src"
    try:
        params_file = _logged_params_file(client, run, scratch)
        # The exact numbers: the logged metrics files (MLflow's metrics are rounded for reading).
        logged_metrics = _download(client, run.info.run_id, "metrics", scratch / "logged")
        logged = pipeline_metrics(logged_metrics)
        logged_subjects = per_subject_values(logged_metrics / "per_subject.json")
        logged_predictions = _download(client, run.info.run_id, "predictions", scratch / "logged")
        _run(["git", "worktree", "add", "--detach", str(source), tags["git.commit"]], cwd=root)
        shutil.copy(params_file, source / "params.yaml")
        env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'rebuild.db'}"
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Share the original cache so DVC-tracked inputs (a `dvc add`ed SEED-V) can be checked out.
        _run(["dvc", "config", "--local", "cache.dir", str(root / ".dvc" / "cache")], cwd=source, env=env)
        _checkout_added_data(source, env)
        remote = None if retrain else _reuse(root, source, env)
        stages = _stages(_run(["dvc", "repro", *(["--force"] if retrain else [])], cwd=source, env=env))
        rebuilt = pipeline_metrics(source / "metrics")
        rebuilt_subjects = per_subject_values(source / "metrics" / "per_subject.json")
        predictions = prediction_differences(logged_predictions, source / "data" / "predictions")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=root, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [(key, logged.get(key), rebuilt.get(key)) for key in sorted(set(logged) | set(rebuilt))]
    # MLflow's metrics are the logged files' numbers (rounded for reading since SHOWN_DIGITS; exact before):
    # one that is neither (edited after the run) is a row of its own, MLflow's value beside the file's.
    rows += [(f"{key} (MLflow vs its logged file)", value, logged[key])
             for key, value in sorted(run.data.metrics.items())
             if key in logged and _difference(value, logged[key]) and _difference(value, shown(logged[key]))]
    rows += [(key, logged_subjects.get(key), rebuilt_subjects.get(key))
             for key in sorted(set(logged_subjects) | set(rebuilt_subjects))]
    return rows + [(key, 0.0, delta) for key, delta in predictions.items()], stages, remote


def _difference(a: float | None, b: float | None) -> float:
    """|a − b|; 0 for two NaNs (a std over one subject is NaN both times), inf when one is missing or NaN."""
    if a is None or b is None:
        return float("inf")
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else float("inf")
    return abs(a - b)


def report(rows, stages: dict[str, str] | None = None, remote: str | None = None) -> tuple[str, str]:
    """What was rerun, the side-by-side table and the verdict: ``identical``, ``within tolerance`` or
    ``different``."""
    width = max(len(key) for key, _, _ in rows)
    lines = []
    if stages is not None:
        ran = [s for s, what in stages.items() if what == "ran"] or ["none"]
        restored = [s for s, what in stages.items() if what == "restored"] or ["none"]
        source = f"DVC's cache and the remote '{remote}'" if remote else "DVC's cache (no DVC remote configured)"
        lines.append(f"retrained: {', '.join(ran)}; restored from {source}, not retrained: {', '.join(restored)}")
    lines.append(f"{'metric':<{width}}  {'logged':>20}  {'rebuilt':>20}  same")
    deltas = []
    for key, logged, rebuilt in rows:
        delta = _difference(logged, rebuilt)
        deltas.append(delta)
        lines.append(f"{key:<{width}}  {logged!s:>20}  {rebuilt!s:>20}  {'yes' if delta == 0 else 'NO'}")
    worst = max(deltas)
    verdict = ("identical" if worst == 0 else "within tolerance" if worst <= TOLERANCE else "different")
    lines.append({"identical": "rebuilt bit-identically",
                  "within tolerance": f"rebuilt within tolerance: max |Δ| = {worst:.3g} ≤ {TOLERANCE} (not "
                                      "bit-identical: another CPU type, thread count or device?)",
                  "different": f"MISMATCH: the rebuilt metrics differ from the logged ones (max |Δ| = {worst:.3g})"
                  }[verdict])
    return "\n".join(lines), verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.rebuild", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("run_id", help="an MLflow run id of a pipeline execution (parent or child)")
    parser.add_argument("--retrain", action="store_true", help="rerun every stage, reusing nothing from DVC's "
                                                                "cache or remote")
    args = parser.parse_args(argv)
    try:
        rows, stages, remote = rebuild(args.run_id, retrain=args.retrain)
    except (RebuildError, UserError) as exc:   # UserError: the tracking server refused the credentials
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text, verdict = report(rows, stages, remote)
    print(text)
    return 0 if verdict == "identical" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
