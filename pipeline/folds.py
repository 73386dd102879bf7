"""Every fold of a study (:mod:`pipeline.splits`) as a Ray task: in parallel on this machine, or on a Ray cluster.

The driver loads the trials once and puts them in Ray's object store; each task trains one fold and
returns its results; the driver writes every file, so workers need no shared filesystem. Nothing here
talks to MLflow: the ``track`` stage logs the written folds afterwards.

- Where: with ``RAY_ADDRESS`` set (Ray's own convention) it joins that cluster and ships the project code
  as a ``runtime_env`` working dir (an address that does not answer fails in one line within
  ``RAY_CONNECT_TIMEOUT`` s); otherwise it starts a private local Ray sized to the machine (no dashboard,
  quiet logs; never the head that ``ray start --head`` left running) and shuts it down at the end.
- Resources per fold: ``compute.threads_per_fold`` CPUs (the torch thread count, which can change the
  last bits of a result) and, when the cluster has GPUs and ``train.device`` is not ``cpu``,
  ``compute.gpus_per_fold`` of a GPU. The final model is one more such task (:func:`run_final`).
- Device: each task resolves ``train.device`` itself (``auto``: CUDA when *that worker* sees a GPU) and
  records what it ran on (:func:`pipeline.models.device_facts`); the driver decides nothing about devices.
- Seeds: with ``train.seeds`` = n > 1 every fold is trained n times, seeded ``train.seed`` + 0 .. n-1 (one
  task each); the extra trainings exist to measure seed variance. Each is exactly what a run with that
  ``train.seed`` and one seed gives.
- Results do not depend on parallelism: a fold's seed, data and thread count are fixed by the params,
  whichever worker runs it and whatever runs beside it; :func:`train_one` outside Ray gives the same bits.
- Faults: a worker process that dies mid-fold is retried by Ray (the fold restarts from its seed); a fold
  that raises stops the study at once and the other folds are cancelled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .evaluate import subject_metrics
from .models import check_device_memory, device_facts, resolve_device
from .params import Params
from .sequences import Trials
from .splits import Fold
from .train import FoldResult, train_final, train_fold

RETRIES = 3              # attempts after a worker process dies (not after an exception in the fold)
RUNTIME_EXCLUDES = [".git", ".venv", ".dvc/cache", ".dvc/tmp", "data", "mlruns", "mlartifacts", "mlflow.db*",
                    "plots", "metrics", "*.pyc"]


@dataclass
class FoldOutput:
    fold: Fold
    seed: int            # the train.seed this training used
    result: FoldResult
    metrics: dict
    seconds: float       # how long it took, on the worker
    started: float       # when it started (Unix time, the worker's clock)


class FoldFailed(UserError, RuntimeError):
    """A fold raised, or Ray cannot be reached: the message is one line naming the fold and its error."""


RAY_CONNECT_TIMEOUT = 10   # seconds to reach RAY_ADDRESS's head before giving up (Ray itself retries for minutes)


def _check_reachable(address: str) -> None:
    """Fail in one line when ``RAY_ADDRESS`` (``host:port`` or ``ray://host:port``) does not answer;
    ``auto`` and ``local`` are Ray's own lookups and are left to it."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT).close()
    except (OSError, ValueError) as exc:
        raise FoldFailed(f"RAY_ADDRESS={address}: no Ray head answers there ({type(exc).__name__}: {exc}); start one "
                         "with `ray start --head`, fix the address, or unset RAY_ADDRESS to train on a private "
                         "local Ray") from None


RAY_TOKEN_FILE = "~/.ray/auth_token"   # where `ray start --head` keeps the cluster's token (Ray 2.59+)


@contextmanager
def _stderr_held():
    """Hold what this process writes to file descriptor 2 (C++ libraries included) while the block runs;
    afterwards it is in the yielded dict's ``text``, for the caller to print or drop."""
    sys.stderr.flush()
    saved, out = os.dup(2), {"text": ""}
    with tempfile.TemporaryFile("w+") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            out["text"] = held.read()


def _use_token_if_available() -> None:
    """Turn on Ray's token authentication for a driver joining ``RAY_ADDRESS`` when a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or the default file) and ``RAY_AUTH_MODE`` is unset:
    ``ray start --head`` enables it whenever a token exists, but Ray never does for a driver given an
    explicit address, which then fails with ``InvalidAuthToken``. This is Ray's own rule (the one it applies
    to ``address="auto"``), from Ray's module for it; ``RAY_AUTH_MODE`` set by the user wins."""
    from ray._private.authentication import authentication_token_setup as setup

    quiet = logging.getLogger(setup.__name__)
    level, _ = quiet.level, quiet.setLevel(logging.ERROR)   # its notice would be a second stderr line
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def training_seeds(params: Params) -> list[int]:
    """The seeds each fold is trained with: ``train.seed`` first, then the extra ones."""
    return [params.train.seed + k for k in range(params.train.seeds)]


def train_one(trials: Trials, fold: Fold, params: Params, seed: int | None = None,
              gpu_share: float = 1.0) -> FoldOutput:
    """Train and test one fold (seeded ``seed``, default ``train.seed``) with ``compute.threads_per_fold``
    torch threads, on the device this process resolves ``train.device`` to (``gpu_share``: the part of the
    GPU it may use, for the memory check)."""
    started, start = time.time(), time.monotonic()
    seed = params.train.seed if seed is None else seed
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=seed))
    device = _worker_device(params, gpu_share)
    result = train_fold(trials, fold, params, device)
    result.model = result.model.cpu().eval()
    return FoldOutput(fold, seed, result, subject_metrics(result.predictions), time.monotonic() - start, started)


@dataclass
class FinalOutput:
    model: nn.Module
    subjects: list[int]  # the subjects it was trained on
    n_domains: int
    device: dict         # what it ran on (pipeline.models.device_facts)
    seconds: float       # how long it took, on the worker
    started: float       # when it started (Unix time, the worker's clock)


def train_final_one(trials: Trials, params: Params, epochs: int, candidate, gpu_share: float = 1.0) -> FinalOutput:
    """:func:`pipeline.train.train_final` on the device this process resolves, as :func:`train_one` does."""
    started, start = time.time(), time.monotonic()
    device = _worker_device(params, gpu_share)
    model, subjects, n_domains = train_final(trials, params, epochs, candidate, device)
    return FinalOutput(model.cpu().eval(), subjects, n_domains, device_facts(device), time.monotonic() - start,
                       started)


def _worker_device(params: Params, gpu_share: float) -> torch.device:
    torch.set_num_threads(params.compute.threads_per_fold)
    device = resolve_device(params.train.device)
    check_device_memory(params, device, gpu_share)
    return device


def _start_ray(params: Params, root: Path) -> bool:
    """Join ``RAY_ADDRESS`` or start a local Ray; return whether we started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(logging_level="ERROR", log_to_driver=False)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        _use_token_if_available()
        try:
            with _stderr_held() as held:   # Ray's C++ client logs every refused retry on stderr
                ray.init(runtime_env={"working_dir": str(root), "excludes": RUNTIME_EXCLUDES}, **quiet)
            sys.stderr.write(held["text"])
        except (ray.exceptions.AuthenticationError, ConnectionError, RuntimeError) as exc:
            causes = [exc]
            while causes[-1].__cause__ is not None or causes[-1].__context__ is not None:
                causes.append(causes[-1].__cause__ or causes[-1].__context__)
            if not any(isinstance(c, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(c)
                       for c in causes):   # Ray wraps it, as text, in a RuntimeError in a ConnectionError
                raise
            raise FoldFailed(f"RAY_ADDRESS={address}: the Ray head refused this driver's authentication token "
                             f"({type(exc).__name__}): give it the head's token — copy the head's "
                             f"{RAY_TOKEN_FILE} here, or set RAY_AUTH_TOKEN_PATH to a copy of it") from None
    else:
        # "local": a private Ray for this stage, even when a head started with `ray start --head` (or a
        # dead one's leftovers in /tmp/ray) is on the machine; without it ray.init joins that one. No
        # num_cpus unless compute.cpus says: Ray's own count honours a container's CPU limit.
        ray.init(address="local", num_cpus=params.compute.cpus or None, include_dashboard=False, **quiet)
    return True


def gpus_per_task(params: Params, cluster_gpus: float) -> float:
    """The GPU share each task asks Ray for: ``compute.gpus_per_fold`` when ``train.device`` may use one
    (auto, cuda) and the cluster has GPUs; none for ``cpu`` (a CPU fold never waits for a GPU slot)."""
    return params.compute.gpus_per_fold if params.train.device != "cpu" and cluster_gpus > 0 else 0.0


@contextmanager
def _ray_tasks(params: Params, function: Callable, root: Path):
    """``function`` as a Ray remote with the resources each training asks for, and its GPU share, inside a
    started (or joined) Ray."""
    import ray

    started = _start_ray(params, root)
    try:
        gpus = gpus_per_task(params, ray.cluster_resources().get("GPU", 0))
        yield ray.remote(function).options(num_cpus=params.compute.threads_per_fold, num_gpus=gpus,
                                           max_retries=RETRIES, retry_exceptions=False), gpus or 1.0
    finally:
        if started:
            ray.shutdown()


def _failure(exc, name: str) -> FoldFailed:
    cause = exc.cause if exc.cause is not None else exc
    return FoldFailed(f"{name} failed: " + " ".join(f"{type(cause).__name__}: {cause}".split())[:300])


def run_folds(trials: Trials, params: Params, folds: list[Fold], on_done: Callable[[FoldOutput, int], None],
              root: Path = Path(".")) -> None:
    """Train ``folds`` (each once per training seed) as Ray tasks; call ``on_done(output, n_done)`` in the
    driver as each finishes."""
    import ray

    with _ray_tasks(params, train_one, root) as (task, share):
        trials_ref = ray.put(trials)
        pending = {task.remote(trials_ref, fold, params, seed, share): (fold, seed)
                   for fold in folds for seed in training_seeds(params)}
        done = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                fold, seed = pending.pop(ready[0])
                try:
                    output = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:
                    raise _failure(exc, f"fold {fold.name}" + (f" (seed {seed})" if params.train.seeds > 1
                                                               else "")) from None
                done += 1
                on_done(output, done)
        finally:
            for ref in pending:          # a failure or Ctrl-C: stop the others now
                ray.cancel(ref, force=True)


def run_final(trials: Trials, params: Params, epochs: int, candidate, root: Path = Path(".")) -> FinalOutput:
    """The final model as one Ray task, placed and resourced as a fold is (a GPU worker trains it where
    the folds ran, not the driver's CPU)."""
    import ray

    with _ray_tasks(params, train_final_one, root) as (task, share):
        try:
            return ray.get(task.remote(trials, params, epochs, candidate, share))
        except ray.exceptions.RayTaskError as exc:
            raise _failure(exc, "the final model") from None
