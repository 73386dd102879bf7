"""Rebuild a logged pipeline execution exactly, and compare its metrics with the logged ones.

    python -m pipeline.rebuild <run_id>      (a parent run, or any of its children)

Checks out the run's git commit in a temporary git worktree, restores its exact ``params.yaml`` (logged
as an artifact), reruns every stage (``dvc repro --force``: no cache is reused) with MLflow pointed at a
scratch store, then prints logged vs rebuilt metrics side by side. Exit status 1 if any differs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .evaluate import flat_metrics
from .tracking import ROLE_TAG, repo_root, retry, tracking_uri


class RebuildError(RuntimeError):
    pass


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RebuildError(f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def pipeline_metrics(workdir: Path) -> dict[str, float]:
    """The final metrics of a finished pipeline in ``workdir`` (metrics.json and baselines.json),
    flattened as they are logged to the MLflow parent run."""
    metrics = flat_metrics(json.loads((workdir / "metrics/metrics.json").read_text()))
    baselines = json.loads((workdir / "metrics/baselines.json").read_text())
    for name, summary in baselines.items():
        metrics.update(flat_metrics(summary, f"baseline.{name}."))
    return metrics


def rebuild(run_id: str, root: Path | None = None) -> list[tuple[str, float | None, float | None]]:
    """Rerun the execution of ``run_id``; return (metric, logged, rebuilt) for every logged metric."""
    import mlflow

    root = Path(root or repo_root())
    client = mlflow.MlflowClient(tracking_uri())
    run = retry(client.get_run, run_id)
    if run.data.tags.get(ROLE_TAG) != "parent":
        run = retry(client.get_run, run.data.tags["mlflow.parentRunId"])
    tags, logged = run.data.tags, run.data.metrics
    if tags.get("git.dirty") == "true":
        raise RebuildError(f"run {run.info.run_id} was made from uncommitted code; its code is not in git")
    if not logged:
        raise RebuildError(f"run {run.info.run_id} has no metrics to compare (did evaluate run?)")

    scratch = Path(tempfile.mkdtemp(prefix="rebuild-"))
    source = scratch / "src"
    try:
        _run(["git", "worktree", "add", "--detach", str(source), tags["git.commit"]], cwd=root)
        client.download_artifacts(run.info.run_id, "params.yaml", str(scratch))
        shutil.copy(scratch / "params.yaml", source / "params.yaml")
        env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "PIPELINE_EXECUTION")}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'rebuild.db'}"
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Share the original cache so DVC-tracked inputs (a `dvc add`ed SEED-V) can be checked out.
        _run(["dvc", "config", "--local", "cache.dir", str(root / ".dvc" / "cache")], cwd=source, env=env)
        subprocess.run(["dvc", "checkout", "--quiet"], cwd=source, env=env, capture_output=True)
        _run(["dvc", "repro", "--force"], cwd=source, env=env)
        rebuilt = pipeline_metrics(source)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=root, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return [(key, logged.get(key), rebuilt.get(key)) for key in sorted(set(logged) | set(rebuilt))]


def report(rows) -> tuple[str, bool]:
    width = max(len(key) for key, _, _ in rows)
    lines = [f"{'metric':<{width}}  {'logged':>20}  {'rebuilt':>20}  same"]
    same = True
    for key, logged, rebuilt in rows:
        equal = logged is not None and rebuilt is not None and logged == rebuilt
        same &= equal
        lines.append(f"{key:<{width}}  {logged!s:>20}  {rebuilt!s:>20}  {'yes' if equal else 'NO'}")
    return "\n".join(lines), same


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        rows = rebuild(argv[0])
    except (RebuildError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text, same = report(rows)
    print(text)
    print("rebuilt bit-identically" if same else "MISMATCH: the rebuilt metrics differ from the logged ones")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
