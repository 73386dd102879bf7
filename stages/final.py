"""final: one model on every subject, for use; the folds remain the estimate of how it does on new data.
Epochs: the median of the folds' chosen epochs; candidate setting (the transformer's train.input_noise ×
train.label_smoothing): the folds' majority (each chosen by its inner validation, never a test part).

    python -m stages.final FEATURES SELECTIONS OUT_DIR

Trained as one Ray task, placed like a fold (on a GPU worker when ``train.device`` and the cluster allow).
Writes OUT_DIR/model.pt and OUT_DIR/final.json (epochs, subjects, the device it ran on); the ``track``
stage logs it. When it trained goes to data/timings/final.json (pipeline/timing.py: not an output).
"""

import json
from dataclasses import asdict, fields

import numpy as np

from pipeline import models
from pipeline.features import read_table
from pipeline.files import atomic_path, write_json
from pipeline.folds import FoldFailed, run_final
from pipeline.models import save_checkpoint
from pipeline.sequences import Trials
from pipeline.timing import record as record_timing
from pipeline.train import majority
from stages.common import folds, params, paths, spec, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "features", "selections", "out")
    p = params()
    dataset, every_fold = spec(p), folds(p)
    with user_errors():
        trials = Trials.from_frame(read_table(args.features, dataset), dataset)
    selections = [json.loads((args.selections / f"{f.name}.json").read_text()) for f in every_fold]
    chosen = [s["chosen_epoch"] for s in selections]
    epochs = max(1, int(round(float(np.median(chosen)))))
    Candidate = models.load(p.model.name).Candidate
    candidate = majority([Candidate(**{f.name: s[f.name] for f in fields(Candidate)}) for s in selections])
    try:
        final = run_final(trials, p, epochs, candidate)
    except FoldFailed as exc:
        raise SystemExit(f"error: {exc}") from None
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        save_checkpoint(tmp / "model.pt", final.model, p, dataset, final.subjects, final.n_domains, None)
        write_json(tmp / "final.json", {"epochs": epochs, "fold_chosen_epochs": chosen, **asdict(candidate),
                                        "subjects": final.subjects, "device": final.device})
        record_timing("final", tmp / "model.pt", final.started, final.seconds)
    print(f"final model: {len(final.subjects)} subjects, {epochs} epochs (median chosen epoch of {len(chosen)} "
          f"folds), {candidate} (the folds' majority), on {final.device['name']}")
