"""Serve a model over REST, verified first, with this checkout's serving code.

    python -m pipeline.serve MODEL [--port 5001]

MODEL is a ``model.pt`` checkpoint or an MLflow model URI (``models:/seedv-cross-modal@candidate``,
``runs:/<id>/final``). An MLflow model is verified as :func:`pipeline.predict.checkpoint_of` does (its
source run is a pipeline run that recorded the checkpoint's SHA-256, and the downloaded ``model.pt`` has
it) before anything of it is loaded; then the checkpoint is wrapped in a local MLflow model made from
*this checkout's* ``pipeline/serving.py`` — not the code stored with the model, which ``mlflow models
serve -m models:/...`` would import and run — and served with ``mlflow models serve`` on 127.0.0.1 (a
reverse proxy in front for other machines). Same input and output as the logged model (docs/serving.md).
A model that fails the checks is refused with one line, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import UserError


def local_model(model: str, folder: Path) -> Path:
    """A local MLflow model of ``model``'s verified checkpoint and this checkout's serving code."""
    import mlflow

    from .predict import checkpoint_of
    from .tracking import pyfunc_arguments

    path = folder / "model"   # pyfunc_arguments loads the weights: a bad checkpoint is one line
    mlflow.pyfunc.save_model(path, **pyfunc_arguments(checkpoint_of(model)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("model", help="a model.pt checkpoint or an MLflow model URI")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="serve-"))
    try:
        path = local_model(args.model, folder)
    except UserError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(path), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(args.port)]
    os.execv(command[0], command)   # the server is this process: signals reach it


if __name__ == "__main__":
    raise SystemExit(main())
