"""final: one model on every subject, for use; the LOSO folds remain the estimate of how it does on a
new person. Epochs: the median of the folds' chosen epochs; candidate setting (train.input_noise ×
train.label_smoothing): the folds' majority (each chosen by its inner validation, never the held-out subject).

    python -m stages.final FEATURES FOLD_METRICS OUT_DIR

Writes OUT_DIR/model.pt and OUT_DIR/final.json (epochs, subjects); the ``track`` stage logs it and registers
it as ``models:/<experiment>@candidate``.
"""

import json
from dataclasses import asdict

import numpy as np
import torch

from pipeline.features import read_table
from pipeline.files import atomic_path, write_json
from pipeline.model import save_checkpoint
from pipeline.sequences import Trials
from pipeline.train import Candidate, majority, resolve_device, train_final
from stages.common import params, paths, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "features", "fold_metrics", "out")
    p = params()
    with user_errors():
        resolve_device(p.train.device)
    selections = [json.loads((args.fold_metrics / f"{s}.json").read_text())["selection"] for s in p.cv.subjects]
    chosen = [s["chosen_epoch"] for s in selections]
    epochs = max(1, int(round(float(np.median(chosen)))))
    candidate = majority([Candidate(s["input_noise"], s["label_smoothing"]) for s in selections])
    torch.set_num_threads(p.compute.threads_per_fold)
    trials = Trials.from_frame(read_table(args.features))
    model, subjects = train_final(trials, p, epochs, candidate)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        save_checkpoint(tmp / "model.pt", model, p, subjects, None)
        write_json(tmp / "final.json", {"epochs": epochs, "fold_chosen_epochs": chosen, **asdict(candidate),
                                        "subjects": subjects})
    print(f"final model: {len(subjects)} subjects, {epochs} epochs (median chosen epoch of {len(chosen)} folds), "
          f"{candidate} (the folds' majority)")
