"""When each training ran: the wall-clock facts MLflow shows as a run's start and duration.

A time is a fact of one execution, not a result, so it is kept beside the outputs in ``data/timings/``
and deliberately not DVC-tracked: a rerun (``dvc repro --force``, ``stages.train --fold``) stays
bit-identical and ``dvc status`` clean. Each note names the md5 of the weights it timed, so a note whose
model was since replaced, or whose model DVC restored from its cache or run-cache, is ignored rather than
attached to the wrong training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .files import write_json

TIMINGS = Path("data/timings")


def md5(path: Path) -> str:
    """The file's md5 (also its name in DVC's cache: ``.dvc/cache/files/md5/<2 hex>/<30 hex>``)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def record(name: str, model: Path, started: float, seconds: float, root: Path = TIMINGS) -> None:
    """Note that the training that wrote ``model`` started at ``started`` (Unix time) and took ``seconds``."""
    write_json(root / f"{name}.json", {"model_md5": md5(model), "started": started, "seconds": seconds})


def timing_of(name: str, model: Path, root: Path = TIMINGS) -> dict | None:
    """``{"started", "seconds"}`` of the training that wrote ``model`` as it is now; None when no note
    matches its weights (trained elsewhere, restored from DVC's cache, or the note is unreadable)."""
    try:
        note = json.loads((root / f"{name}.json").read_text())
        if note["model_md5"] == md5(model):
            return {"started": float(note["started"]), "seconds": float(note["seconds"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
