"""Time the full default pipeline at a baseline commit and at this checkout, in one run on one machine.

    python benchmarks/pipeline.py                       # baseline: the commit before the parallel folds
    python benchmarks/pipeline.py --baseline <commit> --set train.epochs=2 --set 'cv.subjects=[1,2]'

Each side runs ``dvc repro`` from scratch in its own temporary git worktree (nothing cached, MLflow
pointed at a scratch store), one after the other, and the script prints both wall times, the ratio and
each side's trial accuracy. Only ratios measured in one run mean anything: the same command took 6:48
and 14:36 on two machines of the same kind. Run on demand; not part of the tests' timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEFORE_PARALLEL_FOLDS = "8d78abe"   # the last commit with one DVC stage per fold (train@<s>)


def apply(params_file: Path, overrides: list[str]) -> None:
    params = yaml.safe_load(params_file.read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        params[section][name] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def prepare(commit: str | None, overrides: list[str], scratch: Path) -> Path:
    """A fresh tree at ``commit`` (None: this checkout's files, committed or not) with the overrides."""
    tree = scratch / (commit or "head")
    if commit:
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    else:   # this checkout as it is, committed or not
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for f in files:
            if (ROOT / f).is_file():
                (tree / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, tree / f)
        subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
        subprocess.run(["git", "add", "-A"], cwd=tree, check=True)
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], cwd=tree,
                       check=True)
    apply(tree / "params.yaml", overrides)
    return tree


def timed_repro(tree: Path) -> tuple[float, float]:
    """(wall seconds of ``dvc repro --force``, trial accuracy) in ``tree``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tree.parent / (tree.name + '.db')}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DVC_ROOT", None)
    start = time.perf_counter()
    result = subprocess.run(["dvc", "repro", "--force"], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"dvc repro failed in {tree}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    metrics = json.loads((tree / "metrics/metrics.json").read_text())
    return seconds, metrics["trial"]["accuracy_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BEFORE_PARALLEL_FOLDS, help="commit to compare against")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="param override applied to both sides (YAML value)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        trees = [prepare(args.baseline, args.set, scratch), prepare(None, args.set, scratch)]
        (base_s, base_acc), (head_s, head_acc) = [timed_repro(tree) for tree in trees]
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(scratch / args.baseline)], cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {os.cpu_count()} CPUs; overrides: {args.set or 'none'}")
    print(f"{'':24s} {'dvc repro':>10s} {'trial acc.':>10s}")
    print(f"{'baseline ' + args.baseline:24s} {base_s:9.1f}s {base_acc:10.4f}")
    print(f"{'this checkout':24s} {head_s:9.1f}s {head_acc:10.4f}")
    print(f"speed-up: {base_s / head_s:.2f}x")


if __name__ == "__main__":
    main()
