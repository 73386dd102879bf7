"""final: one model on every subject, for use; the folds remain the estimate of how it does on new data.
Epochs: the median of the folds' chosen epochs; candidate setting (the transformer's train.input_noise ×
train.label_smoothing): the folds' majority (each chosen by its inner validation, never a test part).

    python -m stages.final FEATURES FOLD_METRICS OUT_DIR

Writes OUT_DIR/model.pt and OUT_DIR/final.json (epochs, subjects); the ``track`` stage logs it and registers
it as ``models:/<experiment>@candidate``.
"""

import json
from dataclasses import asdict, fields

import numpy as np
import torch

from pipeline import models
from pipeline.features import read_table
from pipeline.files import atomic_path, write_json
from pipeline.models import resolve_device, save_checkpoint
from pipeline.sequences import Trials
from pipeline.train import majority, train_final
from stages.common import folds, params, paths, spec, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "features", "fold_metrics", "out")
    p = params()
    dataset, every_fold = spec(p), folds(p)
    with user_errors():
        resolve_device(p.train.device)
        trials = Trials.from_frame(read_table(args.features, dataset), dataset)
    selections = [json.loads((args.fold_metrics / f"{f.name}.json").read_text())["selection"] for f in every_fold]
    chosen = [s["chosen_epoch"] for s in selections]
    epochs = max(1, int(round(float(np.median(chosen)))))
    Candidate = models.load(p.model.name).Candidate
    candidate = majority([Candidate(**{f.name: s[f.name] for f in fields(Candidate)}) for s in selections])
    torch.set_num_threads(p.compute.threads_per_fold)
    model, subjects, n_domains = train_final(trials, p, epochs, candidate)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        save_checkpoint(tmp / "model.pt", model, p, dataset, subjects, n_domains, None)
        write_json(tmp / "final.json", {"epochs": epochs, "fold_chosen_epochs": chosen, **asdict(candidate),
                                        "subjects": subjects})
    print(f"final model: {len(subjects)} subjects, {epochs} epochs (median chosen epoch of {len(chosen)} folds), "
          f"{candidate} (the folds' majority)")
