"""What every stage shares: params, one-line user errors, atomic writes."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, data) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
