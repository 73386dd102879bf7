"""train: every fold of cv.split for cv.subjects, in parallel on Ray (see pipeline/folds.py).

    python -m stages.train FEATURES MODELS PREDICTIONS FOLD_METRICS CURVES SELECTIONS      (as dvc.yaml runs it)
    python -m stages.train FEATURES MODELS PREDICTIONS FOLD_METRICS CURVES SELECTIONS --fold subject-3   (one fold, no Ray)

Writes, per fold f (``subject-3``, ``subject-3/block-2``, ...: pipeline/splits.py), MODELS/<f>/model.pt,
PREDICTIONS/<f>.parquet, FOLD_METRICS/<f>.json (with the device it ran on), CURVES/<f>.csv and
SELECTIONS/<f>.json (its chosen epoch and candidate: all ``final`` reads, so that ``final`` does not rerun
when only ``train.seeds`` changed). With ``train.seeds`` > 1 each fold is trained once per seed; the files
are those of the ``train.seed`` training, and FOLD_METRICS/<f>.json also holds every seed's metrics under
``seeds``. The five folders are built under temporary names and renamed into place only when every fold has succeeded,
so a failed run leaves none of them behind (``--fold`` replaces just that fold's files). When each fold
trained goes to data/timings/<f>.json, beside the outputs and not one of them (pipeline/timing.py). Nothing here
talks to MLflow: the ``track`` stage logs the folds from these files.

Fold names never appear in dvc.yaml: they come from the validated params here, so a hostile
``cv.subjects`` value cannot reach a shell command or an output path that DVC deletes.
"""

import argparse
import signal
import sys
import time
from pathlib import Path

from pipeline.evaluate import summarize
from pipeline.features import read_table
from pipeline.files import atomic_path, atomic_paths, write_json
from pipeline.folds import FoldFailed, FoldOutput, run_folds, train_one, training_seeds
from pipeline.models import save_checkpoint
from pipeline.sequences import Trials
from pipeline.timing import record as record_timing
from pipeline.train import check_folds
from stages.common import folds, params, paths, spec, user_errors


def write_fold(outputs: list[FoldOutput], p, models: Path, predictions: Path, fold_metrics: Path,
               curves: Path, selections: Path) -> None:
    """One fold's files from its trainings (``train.seed`` first): the first one's model, predictions and
    curves; its metrics, and with several seeds every seed's metrics under ``seeds``."""
    output = outputs[0]
    name, result = output.fold.name, output.result
    with atomic_path(models / name / "model.pt") as tmp:
        save_checkpoint(tmp, result.model, p, spec(p), result.train_subjects, result.n_domains, name)
    with atomic_path(predictions / f"{name}.parquet") as tmp:
        result.predictions.to_parquet(tmp, index=False)
    with atomic_path(curves / f"{name}.csv") as tmp:
        result.curves.assign(fold=name).to_csv(tmp, index=False)
    seeds = {str(o.seed): {**o.metrics, "selection": o.result.selection} for o in outputs}
    write_json(fold_metrics / f"{name}.json", {**output.metrics, "selection": result.selection, "device": result.device,
                                     **({"seeds": seeds} if len(outputs) > 1 else {})})
    write_json(selections / f"{name}.json", result.selection)
    record_timing(name, models / name / "model.pt", output.started, output.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fold", help="train only this fold (e.g. subject-3), in this process")
    args = paths(__doc__, "features", "models", "predictions", "fold_metrics", "curves", "selections",
                 parser=parser)
    p = params()
    every_fold = folds(p)
    with user_errors():
        trials = Trials.from_frame(read_table(args.features, spec(p)), spec(p))
        check_folds(trials, every_fold)
    if args.fold is not None and args.fold not in (names := [f.name for f in every_fold]):
        raise SystemExit(f"error: --fold {args.fold} is not a fold of cv.split {p.cv.split} (its folds: "
                         f"{', '.join(names[:4])}, ...)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # Ray and the temporaries are cleaned up
    outputs = (args.models, args.predictions, args.fold_metrics, args.curves, args.selections)

    seeds = training_seeds(p)
    if args.fold is not None:
        fold = next(f for f in every_fold if f.name == args.fold)
        with user_errors():      # a diverging training: one line, nothing written
            trained = [train_one(trials, fold, p, seed) for seed in seeds]
        write_fold(trained, p, *outputs)
        print(f"fold {args.fold}: trial accuracy {trained[0].metrics['trial']['accuracy']:.3f}")
        return

    start, per_fold, trained = time.monotonic(), {}, {}
    total = len(every_fold) * len(seeds)

    def on_done(output: FoldOutput, done: int) -> None:
        name = output.fold.name
        trained.setdefault(name, {})[output.seed] = output
        if len(trained[name]) == len(seeds):   # the fold's every seed is in: write its files
            done_fold = trained.pop(name)
            write_fold([done_fold[seed] for seed in seeds], p, *temporaries)
        if output.seed == p.train.seed:
            per_fold[name] = output.metrics
        elapsed = time.monotonic() - start
        what = name if len(seeds) == 1 else f"{name}, seed {output.seed}"
        print(f"fold {what} done in {output.seconds:.0f} s ({done}/{total}): trial accuracy "
              f"{output.metrics['trial']['accuracy']:.3f}, window {output.metrics['window']['accuracy']:.3f}"
              f" | elapsed {elapsed:.0f} s, ETA {elapsed / done * (total - done):.0f} s", flush=True)

    print(f"training {len(every_fold)} folds ({p.cv.split}) × {len(seeds)} seed(s) on Ray ({p.compute.threads_per_fold} thread(s) each,"
          f" train.device {p.train.device})", flush=True)
    with user_errors(), atomic_paths(*outputs) as temporaries:   # user_errors: an orphaned writer, one line
        try:
            run_folds(trials, p, every_fold, on_done)
        except FoldFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    summary = summarize(dict(sorted(per_fold.items())))
    print(f"trial accuracy {summary['trial']['accuracy_mean']:.4f} ± {summary['trial']['accuracy_std']:.4f} "
          f"over {summary['n_folds']} folds (per-subject numbers: the evaluate stage)", flush=True)


if __name__ == "__main__":
    main()
