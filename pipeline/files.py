"""Writing outputs so that nothing half-written is ever left behind: temporary name, then rename."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path (file or folder) beside ``path``; it replaces ``path`` only if the block
    succeeds, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def atomic_paths(*paths: Path | str):
    """:func:`atomic_path` for several outputs at once: all are renamed into place after the block
    succeeds, none if it fails."""
    paths = [Path(p) for p in paths]
    temporaries = [_temporary(p) for p in paths]
    for path, tmp in zip(paths, temporaries):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
    try:
        yield temporaries
        for path, tmp in zip(paths, temporaries):
            if tmp.is_dir():
                _remove(path)
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path | str, data) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
