"""When each training ran: the wall-clock facts MLflow shows as a run's start and duration.

A time is a fact of one execution, not a result, so it is kept beside the outputs in ``data/timings/``
(a fixed path, the one a stage writes that is not a dvc.yaml argument) and deliberately not DVC-tracked:
a rerun (``dvc repro --force``, ``stages.train --fold``) stays bit-identical and ``dvc status`` clean.
Each note names the md5 of the weights it timed, so a note is used only while those very weights are on
disk; weights from elsewhere are logged without a training time rather than with another training's.
The ``train`` and ``final`` stages depend on this file: keep it small (an edit retrains every fold).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .files import write_json

TIMINGS = Path("data/timings")


def md5(path: Path) -> str:
    """The file's md5 (also its name in DVC's cache: ``.dvc/cache/files/md5/<2 hex>/<30 hex>``)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def record(name: str, model: Path, started: float, seconds: float, root: Path = TIMINGS) -> None:
    """Note that the training that wrote ``model`` started at ``started`` (Unix time) and took ``seconds``.
    A note that cannot be written is a warning: it must never fail the training it describes."""
    try:
        write_json(root / f"{name}.json", {"model_md5": md5(model), "started": started, "seconds": seconds})
    except OSError as exc:
        print(f"warning: {root / name}.json not written ({exc}); MLflow will show its logging time instead",
              file=sys.stderr)


def timing_of(name: str, model_md5: str, root: Path = TIMINGS) -> dict | None:
    """``{"started", "seconds"}`` of the training that wrote the weights with md5 ``model_md5``; None when
    no note matches them (trained in another checkout, or the note is missing or unreadable)."""
    try:
        note = json.loads((root / f"{name}.json").read_text())
        if note["model_md5"] == model_md5:
            return {"started": float(note["started"]), "seconds": float(note["seconds"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
