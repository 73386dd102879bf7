"""What every stage shares: validated params and one-line user errors."""

from __future__ import annotations

import sys
from contextlib import contextmanager

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


def params():
    """``params.yaml``, validated completely before the stage does any work."""
    with user_errors():
        return load("params.yaml")
