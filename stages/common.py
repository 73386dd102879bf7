"""What every stage shares: validated params and one-line user errors."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import psutil

from pipeline import datasets
from pipeline.errors import UserError
from pipeline.files import bind_to
from pipeline.params import load
from pipeline.splits import Fold, make_folds


@contextmanager
def user_errors():
    """Report a bad input, param or tracking store as one line on stderr and exit 1 (no traceback)."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def paths(doc: str, *names: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The stage's input and output paths, given by dvc.yaml as positional arguments (``--help`` shows
    the stage's docstring)."""
    parser = parser or argparse.ArgumentParser(description=doc.split("\n")[0])
    for name in names:
        parser.add_argument(name, type=Path)
    return parser.parse_args()


def dvc_process() -> int | None:
    """The ``dvc`` process running this stage: the nearest ancestor without ``DVC_STAGE``, the variable DVC
    sets for a stage's shell and command only; None when the stage was not started by dvc."""
    if "DVC_STAGE" not in os.environ:
        return None
    for ancestor in psutil.Process().parents():
        try:
            if "DVC_STAGE" not in ancestor.environ():
                return ancestor.pid
        except psutil.Error:       # not ours to read: the nearest process we cannot see into
            return ancestor.pid
    return None


def params():
    """``params.yaml``, validated completely before the stage does any work. Under dvc, the stage's
    outputs are bound to the dvc process running it (:func:`pipeline.files.bind_to`)."""
    with user_errors():
        if (pid := dvc_process()) is not None:
            bind_to(pid)
        return load("params.yaml")


def spec(p):
    """The dataset spec ``data.dataset`` names."""
    return datasets.spec(p.data.dataset)


def folds(p) -> list[Fold]:
    """The folds of ``cv.split`` for ``cv.subjects`` (one UserError line when the params leave one empty)."""
    with user_errors():
        return make_folds(spec(p), p)
