"""An ablation table: runs that differ from a reference in one setting, compared paired over subjects.

    python -m pipeline.ablation REFERENCE RUN [RUN ...]

Compares any runs of one dataset and split (refused otherwise): each argument is a git revision or a DVC
experiment name (``dvc exp show``) whose commit holds ``metrics/folds/<fold>.json`` (git-tracked), or an
MLflow parent run of the track stage as ``mlflow:<run id>``; with ``train.seeds`` > 1 each fold holds
every seed's metrics. A subject's folds are pooled (its accuracy over all its test trials). Per revision and level (trial, window) it prints the accuracy averaged over seeds and subjects,
with the sample std over seeds; then **reference minus revision** (what the switched-off component
contributes), paired over the subjects both were tested on, each subject's accuracy averaged over its
seeds: the mean difference with its 95 % BCa interval, the exact sign-flip permutation p, Holm-adjusted
over every revision × level in the table, Cohen's d_z, wins/ties/losses — and, for seed robustness, the
difference per seed (seed k against seed k) with a 95 % t interval over seeds (descriptive: three seeds
are few). The statistics are :mod:`pipeline.comparison`'s, so they read as ``comparison.json`` does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from statsmodels.stats.multitest import multipletests

from .comparison import ALPHA, LEVELS, clean, differences, paired_test, per_seed_metrics, t_interval
from .errors import UserError
from .evaluate import pool_by_subject, seed_summary

Folds = dict[int, dict]   # subject -> that fold's metrics file: ``trial``/``window`` and each seed's in ``seeds``


def with_seeds(folds: Folds) -> Folds:
    """``folds`` as a several-seed run writes them: a one-seed run's metrics become its seed ``0``."""
    return {s: fold if "seeds" in fold else {**fold, "seeds": {"0": fold}} for s, fold in folds.items()}


def ablation(runs: dict[str, Folds], seed: int = 0) -> dict:
    """``runs``: name -> fold metrics (:func:`with_seeds` form), the first name the reference. Returns per
    name its ``accuracy`` per level (:func:`pipeline.evaluate.seed_summary`: mean over seeds of the subject
    mean, sample std over seeds) and, for all but the reference, ``difference`` per level:
    :func:`pipeline.comparison.paired_test` of reference minus run over seed-averaged subjects with
    ``p_holm`` over the table, and ``per_seed`` differences with a t interval over the seeds both have."""
    summaries = {name: seed_summary(folds) for name, folds in runs.items()}
    out = {name: {"n_seeds": summary["n"], "accuracy": {
        level: {"mean": summary[f"{level}_accuracy_mean"], "std_over_seeds": summary[f"{level}_accuracy_std"]}
        for level in LEVELS}} for name, (summary, _) in summaries.items()}
    (reference, ref_folds), *others = runs.items()
    ref_average, ref_seeds = summaries[reference][1], per_seed_metrics(ref_folds)
    for name, folds in others:
        average, per_seed = summaries[name][1], per_seed_metrics(folds)
        common = sorted(set(ref_seeds) & set(per_seed), key=int)
        out[name]["difference"] = {}
        for level in LEVELS:
            test = paired_test(differences(ref_average, average, level), seed)
            by_seed = {k: float(differences(ref_seeds[k], per_seed[k], level).mean()) for k in common}
            low, high = t_interval(list(by_seed.values()))
            out[name]["difference"][level] = {**test, "per_seed": by_seed, "per_seed_t_ci95_low": low,
                                              "per_seed_t_ci95_high": high}
    tests = [(name, level) for name, _ in others for level in LEVELS]
    if tests:
        holm = multipletests([out[n]["difference"][lv]["p_permutation"] for n, lv in tests], alpha=ALPHA,
                             method="holm")[1]
        for (name, level), p in zip(tests, holm):
            out[name]["difference"][level]["p_holm"] = float(p)
    return clean(out)


def markdown(table: dict) -> str:
    """The table as README rows: accuracy ± std over seeds, and reference − run with its statistics."""
    def pts(x):
        return "n/a" if x is None else f"{100 * x:+.1f}"

    def acc(a):
        return f"{100 * a['mean']:.1f}" + ("" if a["std_over_seeds"] is None else f" ± {100 * a['std_over_seeds']:.1f}")

    lines = ["| run | trial acc. (%) | window acc. (%) | reference − run, trial (points) | 95 % BCa | "
             "permutation p | Holm p | d_z | per seed (95 % t over seeds) | window (points, Holm p) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        cells = [name, acc(row["accuracy"]["trial"]), acc(row["accuracy"]["window"])]
        if "difference" not in row:
            cells += ["reference"] + [""] * 6
        else:
            t, w = row["difference"]["trial"], row["difference"]["window"]
            seeds = " / ".join(pts(v) for v in t["per_seed"].values())
            cells += [pts(t["mean_difference"]), f"{pts(t['ci95_low'])} to {pts(t['ci95_high'])}",
                      f"{t['p_permutation']:.3f}", f"{t['p_holm']:.3f}",
                      "n/a" if t["effect_size"] is None else f"{t['effect_size']:+.2f}",
                      f"{seeds} ({pts(t['per_seed_t_ci95_low'])} to {pts(t['per_seed_t_ci95_high'])})",
                      f"{pts(w['mean_difference'])} ({w['p_holm']:.3f})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def subject_of(fold: str) -> int:
    """The test subject of a fold name (``subject-5``, ``subject-5/block-2``)."""
    return int(fold.split("/")[0].removeprefix("subject-"))


def from_files(files: dict[str, str], source: str) -> tuple[Folds, dict]:
    """Fold metrics (:func:`with_seeds` form, a subject's folds pooled: :func:`pipeline.evaluate.pool_by_subject`)
    and params from ``{"<fold name>.json": text, ..., "params.yaml": text}``."""
    from .params import from_dict, parse

    folds = {name.removesuffix(".json"): json.loads(text) for name, text in files.items() if name.endswith(".json")}
    if not folds or "params.yaml" not in files:
        raise UserError(f"{source}: no fold metrics (metrics/folds/<fold>.json) and params.yaml there")
    params = from_dict(parse(files["params.yaml"], f"{source}:params.yaml"), f"{source}:params.yaml")
    pooled = pool_by_subject({name: with_seeds({0: fold})[0] for name, fold in folds.items()},
                             {name: subject_of(name) for name in folds})
    return pooled, {"dataset": params.data.dataset, "split": params.cv.split}


def read_git(rev: str) -> tuple[Folds, dict]:
    """A git revision's or a DVC experiment's (its name resolved to its commit by ``dvc.api.exp_show``)
    git-tracked ``metrics/folds`` and ``params.yaml``, in the current repository."""
    import dvc.api

    sha = next((row["rev"] for row in dvc.api.exp_show() if row.get("Experiment") == rev and row["rev"] != "workspace"),
               rev)
    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", sha, "--", "metrics/folds", "params.yaml"],
                             capture_output=True, text=True)
    if listing.returncode != 0 or "metrics/folds/" not in listing.stdout:
        raise UserError(f"{rev}: no metrics/folds in that revision — give a git revision, a DVC experiment "
                        "name from `dvc exp show` or an MLflow parent run as mlflow:<run id>")
    show = lambda path: subprocess.run(["git", "show", f"{sha}:{path}"], capture_output=True, text=True,  # noqa: E731
                                       check=True).stdout
    return from_files({path.removeprefix("metrics/folds/"): show(path) for path in listing.stdout.split()}, rev)


def read_mlflow(run_id: str) -> tuple[Folds, dict]:
    """An MLflow parent run's ``folds`` and ``params.yaml`` artifacts (logged by the track stage)."""
    import tempfile
    from pathlib import Path

    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as scratch:
        try:
            folds = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="folds", dst_path=scratch))
            params = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="params.yaml",
                                                              dst_path=scratch))
        except (MlflowException, OSError) as exc:
            raise UserError(f"mlflow:{run_id}: its folds or params.yaml cannot be downloaded "
                            f"({type(exc).__name__}) — give a parent run id of this pipeline's track stage "
                            "and check MLFLOW_TRACKING_URI") from None
        files = {str(p.relative_to(folds)): p.read_text() for p in folds.rglob("*.json")}
        return from_files({**files, "params.yaml": params.read_text()}, f"mlflow:{run_id}")


def read_run(name: str) -> tuple[Folds, dict]:
    return read_mlflow(name.removeprefix("mlflow:")) if name.startswith("mlflow:") else read_git(name)


def read_all(names: list[str]) -> dict[str, Folds]:
    """Every run's folds, after checking that all are on the reference's dataset and split (a pairing over
    subjects means nothing across them)."""
    runs = {name: read_run(name) for name in names}
    reference = runs[names[0]][1]
    for name, (_, where) in runs.items():
        if where != reference:
            raise UserError(f"{name}: {where['dataset']} / {where['split']}, but {names[0]} is "
                            f"{reference['dataset']} / {reference['split']} — compare runs of one dataset and split")
    return {name: folds for name, (folds, _) in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ablation", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("reference", help="the run every other is compared with (e.g. main's experiment)")
    parser.add_argument("revs", nargs="+", help="runs that differ from it in one setting")
    parser.add_argument("--json", action="store_true", help="print the table as JSON instead of markdown")
    args = parser.parse_args(argv)
    try:
        table = ablation(read_all([args.reference, *args.revs]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(table, indent=2) if args.json else markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
