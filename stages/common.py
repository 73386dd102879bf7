"""What every stage shares: validated params and one-line user errors."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError
from pipeline.params import load


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


def params():
    """``params.yaml``, validated completely before the stage does any work."""
    with user_errors():
        return load("params.yaml")
