"""train@<subject>: one LOSO fold -> data/models/<s>/model.pt, data/predictions/<s>.parquet,
metrics/folds/<s>.json, metrics/curves/<s>.csv; logged as a child run of the execution's MLflow parent."""

import signal
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.evaluate import subject_metrics
from pipeline.features import read_table
from pipeline.model import PackedInput
from pipeline.tracking import Tracker
from pipeline.train import Trials, checkpoint, resolve_device, train_fold
from stages.common import atomic_path, params, write_json

if __name__ == "__main__":
    held_out = int(sys.argv[1])
    p = params()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # lets the MLflow run end as KILLED
    trials = Trials.from_frame(read_table("data/processed/features.parquet"))
    tracker = Tracker(p.mlflow.experiment)
    parent = tracker.parent(p.flat())
    tracker.set_tags(parent, {"device": str(resolve_device(p.train.device))})
    with tracker.stage_run(parent, "fold", f"fold {held_out}", {**p.flat(), "fold": held_out}) as run_id:
        result = train_fold(trials, held_out, p,
                            on_epoch=lambda row: tracker.log_metrics(run_id, row, step=int(row["epoch"])))
        metrics = subject_metrics(result.predictions)
        tracker.log_metrics(run_id, {f"{level}.{k}": v for level, m in metrics.items() for k, v in m.items()})

        example = np.zeros((2, p.cv.crop_windows, 344), dtype=np.float32)   # batch 2: not specialized
        example[..., 343] = 1.0
        tracker.log_model(run_id, PackedInput(result.model.cpu().eval()), example)
        model_path = Path(f"data/models/{held_out}/model.pt")
        with atomic_path(model_path) as tmp:
            torch.save(checkpoint(result, p, held_out), tmp)
        predictions = Path(f"data/predictions/{held_out}.parquet")
        with atomic_path(predictions) as tmp:
            result.predictions.to_parquet(tmp, index=False)
        curves = Path(f"metrics/curves/{held_out}.csv")
        with atomic_path(curves) as tmp:
            result.curves.assign(fold=held_out).to_csv(tmp, index=False)
        write_json(Path(f"metrics/folds/{held_out}.json"), metrics)

    print(f"fold {held_out}: trial accuracy {metrics['trial']['accuracy']:.3f}, "
          f"window accuracy {metrics['window']['accuracy']:.3f}")
