"""final: one model on every subject, for use; the LOSO folds remain the estimate of how it does on a
new person. Epochs: the median of the folds' chosen epochs (inner validation, never the held-out subject).

    python -m stages.final FEATURES FOLD_METRICS OUT_DIR

Writes OUT_DIR/model.pt, logs the model (named ``final``, with its signature) to a child run of the
execution's MLflow parent and registers it under the experiment's name with the alias ``candidate``.
"""

import json

import numpy as np
import torch

from pipeline.features import read_table
from pipeline.files import atomic_path
from pipeline.model import PackedInput, save_checkpoint, serving_example
from pipeline.sequences import Trials
from pipeline.tracking import Tracker
from pipeline.train import resolve_device, train_final
from stages.common import params, paths, user_errors

ALIAS = "candidate"

if __name__ == "__main__":
    args = paths(__doc__, "features", "fold_metrics", "out")
    p = params()
    with user_errors():
        resolve_device(p.train.device)
        tracker = Tracker(p.mlflow.experiment)
    chosen = [json.loads((args.fold_metrics / f"{s}.json").read_text())["selection"]["chosen_epoch"]
              for s in p.cv.subjects]
    epochs = max(1, int(round(float(np.median(chosen)))))
    torch.set_num_threads(p.compute.threads_per_fold)
    trials = Trials.from_frame(read_table(args.features))
    parent = tracker.parent(p.flat())
    with tracker.stage_run(parent, "final", "final", {**p.flat(), "final.epochs": epochs}) as run_id:
        model, subjects = train_final(trials, p, epochs)
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            save_checkpoint(tmp / "model.pt", model, p, subjects, None)
        tracker.log_metrics(run_id, {"final/epochs": epochs})
        tracker.log_model(run_id, PackedInput(model), serving_example(2, p.cv.crop_windows), name="final")
        version = tracker.register(run_id, p.mlflow.experiment, ALIAS)
    print(f"final model: {len(subjects)} subjects, {epochs} epochs (median chosen epoch of {len(chosen)} folds); "
          f"registered models:/{p.mlflow.experiment}@{ALIAS} (version {version.version})")
