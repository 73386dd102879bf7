"""What every stage shares: loading params and turning user-caused errors into one line + exit 1."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from pipeline.params import ParamsError, load
from pipeline.seedv import SeedVFormatError


@contextmanager
def user_errors():
    """Report a bad input or param as one line on stderr and exit 1 (no traceback)."""
    try:
        yield
    except (SeedVFormatError, ParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def params():
    with user_errors():
        return load("params.yaml")
