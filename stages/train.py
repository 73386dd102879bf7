"""train: every LOSO fold of cv.subjects, in parallel on Ray (see pipeline/folds.py).

    python -m stages.train FEATURES MODELS PREDICTIONS FOLD_METRICS CURVES      (as dvc.yaml runs it)
    python -m stages.train FEATURES MODELS PREDICTIONS FOLD_METRICS CURVES --fold 3   (one fold, no Ray)

Writes, per held-out subject s, MODELS/<s>/model.pt, PREDICTIONS/<s>.parquet, FOLD_METRICS/<s>.json and
CURVES/<s>.csv. With ``train.seeds`` > 1 each fold is trained once per seed; the files are those of the
``train.seed`` training, and FOLD_METRICS/<s>.json also holds every seed's metrics under ``seeds``. The
four folders are built under temporary names and renamed into place only when every fold has succeeded,
so a failed run leaves none of them behind (``--fold`` replaces just that fold's files). Nothing here
talks to MLflow: the ``track`` stage logs the folds from these files.

Subject ids never appear in dvc.yaml: they come from the validated params here, so a hostile
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
from pipeline.model import save_checkpoint
from pipeline.sequences import Trials
from pipeline.train import resolve_device
from stages.common import params, paths, user_errors


def write_fold(outputs: list[FoldOutput], p, device, models: Path, predictions: Path, folds: Path,
               curves: Path) -> None:
    """One fold's files from its trainings (``train.seed`` first): the first one's model, predictions and
    curves; its metrics, and with several seeds every seed's metrics under ``seeds``."""
    output = outputs[0]
    s, result = output.held_out, output.result
    with atomic_path(models / str(s) / "model.pt") as tmp:
        save_checkpoint(tmp, result.model, p, result.train_subjects, s)
    with atomic_path(predictions / f"{s}.parquet") as tmp:
        result.predictions.to_parquet(tmp, index=False)
    with atomic_path(curves / f"{s}.csv") as tmp:
        result.curves.assign(fold=s).to_csv(tmp, index=False)
    seeds = {str(o.seed): {**o.metrics, "selection": o.result.selection} for o in outputs}
    write_json(folds / f"{s}.json", {**output.metrics, "selection": result.selection, "device": device.type,
                                     **({"seeds": seeds} if len(outputs) > 1 else {})})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fold", type=int, help="train only this held-out subject, in this process")
    args = paths(__doc__, "features", "models", "predictions", "fold_metrics", "curves", parser=parser)
    p = params()
    with user_errors():
        device = resolve_device(p.train.device)
        if args.fold is not None and args.fold not in p.data.subjects:
            raise SystemExit(f"error: --fold {args.fold} is not one of data.subjects {p.data.subjects}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # Ray and the temporaries are cleaned up
    trials = Trials.from_frame(read_table(args.features))
    outputs = (args.models, args.predictions, args.fold_metrics, args.curves)

    seeds = training_seeds(p)
    if args.fold is not None:
        with user_errors():      # a diverging training: one line, nothing written
            trained = [train_one(trials, args.fold, p, seed) for seed in seeds]
        write_fold(trained, p, device, *outputs)
        print(f"fold {args.fold}: trial accuracy {trained[0].metrics['trial']['accuracy']:.3f}")
        return

    folds, start, per_subject, trained = p.cv.subjects, time.monotonic(), {}, {}
    total = len(folds) * len(seeds)

    def on_done(output: FoldOutput, done: int) -> None:
        trained.setdefault(output.held_out, {})[output.seed] = output
        if len(trained[output.held_out]) == len(seeds):   # the fold's every seed is in: write its files
            done_fold = trained.pop(output.held_out)
            write_fold([done_fold[seed] for seed in seeds], p, device, *temporaries)
        if output.seed == p.train.seed:
            per_subject[output.held_out] = output.metrics
        elapsed = time.monotonic() - start
        what = ("fold", f"subject {output.held_out}") if len(seeds) == 1 else (
            "training", f"subject {output.held_out}, seed {output.seed}")
        print(f"{what[0]} {done}/{total} ({what[1]}) done in {output.seconds:.0f} s: trial accuracy "
              f"{output.metrics['trial']['accuracy']:.3f}, window {output.metrics['window']['accuracy']:.3f}"
              f" | elapsed {elapsed:.0f} s, ETA {elapsed / done * (total - done):.0f} s", flush=True)

    print(f"training {len(folds)} folds × {len(seeds)} seed(s) on Ray ({p.compute.threads_per_fold} thread(s) each,"
          f" {device})", flush=True)
    with user_errors(), atomic_paths(*outputs) as temporaries:   # user_errors: an orphaned writer, one line
        try:
            run_folds(trials, p, folds, on_done)
        except FoldFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    summary = summarize(dict(sorted(per_subject.items())))
    print(f"trial accuracy {summary['trial']['accuracy_mean']:.4f} ± {summary['trial']['accuracy_std']:.4f} "
          f"over {summary['n_folds']} held-out subjects", flush=True)


if __name__ == "__main__":
    main()
