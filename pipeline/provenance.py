"""What a run was made from: the code (git), the data (dvc.lock hashes), the machine and the process
that logs it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

CODE_PATHS = ("pipeline", "stages", "dvc.yaml", "requirements.txt")


IMPORTABLE = (":(glob)*.py", ":(glob)*.pyc", ":(glob)*.so", ":(glob)*.pyd", ":(glob)*/__init__.py",
              ":(glob)__pycache__/*")   # at the root, these shadow installed packages


def stale_bytecode(root: Path) -> list[Path]:
    """Bytecode under ``pipeline/`` and ``stages/`` that this interpreter would run instead of its source
    but that is not that source compiled: a planted or stale ``__pycache__`` file (Python trusts a cache
    whose header matches the source's mtime and size, whatever code it holds), or one without a source."""
    import marshal

    bad = []
    tag = f".{sys.implementation.cache_tag}."
    for cache in sorted(p for d in ("pipeline", "stages") for p in (root / d).rglob("__pycache__/*.pyc")):
        if tag not in cache.name:
            continue                 # another Python's cache: never read by this one
        source = cache.parent.parent / (cache.name.split(tag)[0] + ".py")
        try:
            cached = marshal.loads(cache.read_bytes()[16:])
            # code objects compare by content (marshal's bytes depend on reference counts); compiled under
            # the file name the cache records, which depends on how the module was found
            matches = cached == compile(source.read_bytes(), cached.co_filename, "exec", dont_inherit=True)
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, AttributeError):
            matches = False
        if not matches:
            bad.append(cache)
    return bad


def git_state(root: Path) -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    # Dirty means code that can run but is not the commit's: tracked code modified; any untracked or
    # git-ignored file under the code paths or at the root that the interpreter could import (a stray
    # ./<name>.py, .pyc, extension module or package shadows an installed one); bytecode under
    # pipeline/ or stages/ that is not its source compiled. params.yaml is logged as an artifact, and
    # outputs change during a run. Caches that do match their sources (Python writes them) are clean.
    changed = git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS, *IMPORTABLE)
    ignored = [line[3:] for line in git("status", "--porcelain", "--ignored", "--untracked-files=all", "--",
                                        *CODE_PATHS, *IMPORTABLE).splitlines() if line.startswith("!! ")]
    ignored = [path for path in ignored if not path.endswith(".pyc") or "/__pycache__/" not in path
               or not path.startswith(("pipeline/", "stages/"))]   # those are checked against their sources
    dirty = bool(changed or ignored or stale_bytecode(root))
    return {"git.commit": git("rev-parse", "HEAD") or "none", "git.dirty": str(dirty).lower()}


def run_label(commit: str, params_flat: dict) -> str:
    """A parent run's name outside ``dvc exp run``: short commit, then the params that differ from the
    committed params.yaml, e.g. ``3f2a1c model.heads=8``. Both sides are compared typed, as the pipeline
    reads them (``label_smoothing: 0.0`` and ``[0.0]`` are one setting); a committed file that today's
    schema refuses (an older layout) names no changes rather than all of them."""
    from .params import ParamsError, from_dict, parse

    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], capture_output=True, text=True)
    try:
        committed = from_dict(parse(shown.stdout)).flat() if shown.returncode == 0 else {}
    except ParamsError:
        committed = {}
    changed = [f"{key}={value}" for key, value in params_flat.items() if committed and committed.get(key) != value]
    return " ".join([commit[:6] if commit != "none" else "uncommitted", *changed])[:250]


def data_hashes(lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """Content hashes (md5, from dvc.lock) of the raw data read by ingest and of the processed table."""
    import yaml

    try:
        stages = yaml.safe_load(lock_path.read_text())["stages"]
    except (OSError, KeyError, TypeError):
        return {}
    out = {}
    for dep in stages.get("ingest", {}).get("deps", []):
        if not dep["path"].endswith(".py"):
            out["data.raw_md5"] = dep.get("md5", "")
    for item in stages.get("normalize", {}).get("outs", []):
        out["data.processed_md5"] = item.get("md5", "")
    return out


def alive(tags: dict[str, str]) -> bool:
    """Whether the process that opened a run (tags of :func:`process_tags`) still runs."""
    if tags.get("pipeline.host") != platform.node():
        return True   # another machine's run: cannot tell, leave it alone
    try:
        if tags.get("pipeline.boot") != Path("/proc/sys/kernel/random/boot_id").read_text().strip():
            return False
    except OSError:
        pass
    try:
        os.kill(int(tags.get("pipeline.pid", "0")), 0)
    except (OSError, ValueError):
        return False
    return True


PROCESS_TAGS = ("pipeline.host", "pipeline.pid", "pipeline.boot")


def process_tags() -> dict[str, str]:
    """The tags (:data:`PROCESS_TAGS`) that let :func:`alive` tell whether this process still runs."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return dict(zip(PROCESS_TAGS, (platform.node(), str(os.getpid()), boot)))


def environment_tags() -> dict[str, str]:
    import dvc
    import mlflow
    import numpy
    import torch

    return {"version.python": platform.python_version(), "version.torch": torch.__version__,
            "version.numpy": numpy.__version__, "version.dvc": dvc.__version__,
            "version.mlflow": mlflow.__version__}


