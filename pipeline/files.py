"""Writing outputs so that nothing half-written is ever left behind: temporary name, then rename.

Temporary names are unique per process (``.<name>.<pid>-<random>.tmp<suffix>``), so two writers never
share one; those of processes that no longer run are removed before a new one is made. A process bound to
an owner (:func:`bind_to`: the ``dvc`` that started a stage) renames nothing into place once that owner
has exited: after a ``kill -9`` of ``dvc`` its orphaned stage must not overwrite a later run's outputs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

import psutil

from .errors import UserError

_owner: tuple[int, float] | None = None   # (pid, start time) of the process these outputs belong to


class OrphanedWriter(UserError):
    """The process that started this one has exited; a later run owns the outputs now."""


def bind_to(pid: int) -> None:
    """Rename outputs into place only while process ``pid`` runs (the same process: pid and start time)."""
    global _owner
    _owner = (pid, psutil.Process(pid).create_time())


def _check_owner(path: Path) -> None:
    if _owner is None:
        return
    pid, started = _owner
    try:
        alive = psutil.Process(pid).create_time() == started
    except psutil.NoSuchProcess:
        alive = False
    if not alive:
        raise OrphanedWriter(f"{path}: not written — the process that started this stage (pid {pid}) has "
                             "exited, so a later run owns the outputs; rerun the stage if they are needed")


def _temporary(path: Path) -> Path:
    """A temporary name beside ``path`` that is this process's alone; the leftovers of processes that no
    longer run (killed before they could clean up) are removed first."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[0-9a-f]{{8}}\.tmp{re.escape(path.suffix)}")
    for stale in path.parent.glob(f".{path.name}.*.tmp{path.suffix}"):
        if (match := pattern.fullmatch(stale.name)) and not psutil.pid_exists(int(match.group(1))):
            _remove(stale)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path (file or folder) beside ``path``; it replaces ``path`` only if the block
    succeeds, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        _check_owner(path)
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
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporaries = [_temporary(p) for p in paths]
    try:
        yield temporaries
        _check_owner(paths[0])
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
