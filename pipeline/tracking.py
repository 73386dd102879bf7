"""MLflow runs: created, logged into and ended by the ``track`` stage, the only code that talks to MLflow.

Nothing here can change a result: no other stage imports this module, so editing how runs are logged
reruns ``track`` and nothing else. A run ends FINISHED, FAILED on an error, or KILLED on Ctrl-C/SIGTERM;
one left RUNNING by a SIGKILLed process (its ``pipeline.*`` process tags name a dead pid) is closed by
the next run that starts. Nothing here is written into DVC-tracked outputs (run ids would break DVC's
caching).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .mlflow_store import (REQUEST_TAG, artifact_root, check_artifact_root, check_store, create_run_once, retry,
                           store_lock, tracking_uri)
from .provenance import PROCESS_TAGS, alive, data_hashes, environment_tags, git_state, process_tags, run_label

# The experiment's kind for MLflow's experiment-kind selector. The pinned UI (3.17) opens in whatever view
# the browser last chose (GenAI by default) whatever this tag says: links carry ?workflowType=machine_learning.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "?workflowType=machine_learning"
ROLE_TAG = "pipeline.role"  # parent | fold | final
BATCH = 1000                # MLflow's limit of metrics per log_batch call
SHOWN_DIGITS = 5            # significant digits of a logged float metric: what people read in the UI and its
                            # tables (the exact values are the run's metrics/ and folds/ artifacts); 5, not 4,
                            # so that no accuracy short of 1 reads as 1 (0.99995) and seconds stay whole
SERVING_PACKAGES = ("mlflow", "numpy", "pandas", "pyyaml", "scikit-learn", "scipy", "torch", "tqdm")   # what
                            # pipeline.serving imports with pipeline.models (evaluate, sequences, splits)
BOOKKEEPING_TAGS = (*PROCESS_TAGS, REQUEST_TAG)   # only on RUNNING runs (see Tracker.end)


CHECKPOINT_TAG = "model.sha256"   # on a run that logged a model: the SHA-256 of its model.pt


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def provenance() -> dict[str, str]:
    """git, data, software-version and DVC-experiment tags, put on the parent and on every child run; and
    the tags MLflow's UI shows as a run's Source and User (the stage that logged it, the commit, who ran it)."""
    import getpass

    experiment = os.environ.get("DVC_EXP_NAME")
    git = git_state(Path.cwd())
    return {**git, **data_hashes(), **environment_tags(), **({"dvc.experiment": experiment} if experiment else {}),
            "mlflow.source.name": "stages/track.py", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git["git.commit"], "mlflow.user": getpass.getuser()}


def parent_name(params_flat: dict, commit: str) -> str:
    """The DVC experiment's name under ``dvc exp run``; else short commit + changed params."""
    return os.environ.get("DVC_EXP_NAME") or run_label(commit, params_flat)


def headline(summary: dict, split: str, dataset: str, synthetic: bool) -> str:
    """One paragraph for a run's description: the headline numbers, and what data they are on."""
    t, w = summary["trial"], summary["window"]
    text = (f"Trial accuracy {100 * t['accuracy_mean']:.1f} ± {100 * t['accuracy_std']:.1f} % (macro-F1 "
            f"{100 * t['f1_macro_mean']:.1f} %), window accuracy {100 * w['accuracy_mean']:.1f} %, over "
            f"{summary['n_folds']} test subjects ({dataset}, cv.split {split}).")
    if synthetic:
        text += (f" Data: the embedded synthetic {dataset} (pipeline/synthetic.py), not real recordings; these "
                 "numbers say nothing about real EEG.")
    return text


def flat_metrics(summary: dict, prefix: str = "") -> dict[str, float]:
    """``{"trial": {"accuracy_mean": x}}`` -> ``{prefix + "trial/accuracy_mean": x}``, as logged to MLflow:
    one namespace for folds (``trial/accuracy``) and parents (``trial/accuracy_mean``), ``baseline/<name>/``
    for the baselines, so the UI groups them."""
    return {f"{prefix}{level}/{key}": value for level, values in summary.items() if isinstance(values, dict)
            for key, value in values.items()}


def pipeline_metrics(metrics_dir: Path) -> dict[str, float]:
    """A finished pipeline's final metrics (``metrics.json``, ``baselines.json`` and the position probe of
    ``audits.json``), flattened as they are logged to the parent run."""
    metrics = flat_metrics(json.loads((metrics_dir / "metrics.json").read_text()))
    for name, summary in json.loads((metrics_dir / "baselines.json").read_text()).items():
        metrics.update(flat_metrics(summary, f"baseline/{name}/"))
    audits = metrics_dir / "audits.json"     # absent in results from before the audit (pipeline.rebuild)
    probe = json.loads(audits.read_text())["position_probe"] if audits.exists() else {}
    metrics.update({f"audit/position_probe/{k}": probe[k] for k in ("accuracy_mean", "accuracy_std", "chance")
                    if k in probe})
    return metrics


def shown(value: float) -> float:
    """A float to :data:`SHOWN_DIGITS` significant digits (0.7625000000000001 -> 0.7625); counts exact."""
    return float(value) if isinstance(value, int) else float(f"{float(value):.{SHOWN_DIGITS}g}")


def _ended_by(exc: BaseException) -> str:
    """A run's final status when ``exc`` ends it: KILLED for Ctrl-C or SIGTERM (``SystemExit(143)``)."""
    interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 143)
    return "KILLED" if interrupted else "FAILED"


def pyfunc_arguments(checkpoint: Path) -> dict:
    """What ``mlflow.pyfunc.log_model`` / ``save_model`` get for ``checkpoint``: this checkout's
    :mod:`pipeline.serving` as the model's code, the checkpoint as its artifact, and a signature naming the
    recording table's columns (``label`` optional) in and one row per trial out (keys, ``predicted``,
    ``p_<emotion>``); the input example is one all-zero trial."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from . import serving
    from .models import load_checkpoint
    from .predict import example_table, shortest_trial, table_columns

    _, ckpt = load_checkpoint(checkpoint)   # a bad checkpoint is one line
    spec = ckpt["spec"]
    inputs = Schema([ColSpec(kind, column, required=column != "label")
                     for column, kind in table_columns(spec).items()])
    outputs = Schema([ColSpec("long", key) for key in ("subject", "session", "trial")] + [ColSpec("string", "predicted")]
                     + [ColSpec("double", f"p_{emotion}") for emotion in spec.classes])
    return {"python_model": serving.__file__, "artifacts": {"checkpoint": str(checkpoint)},
            "code_paths": [str(Path(serving.__file__).parent)], "signature": ModelSignature(inputs, outputs),
            "input_example": example_table(spec, shortest_trial(ckpt["params"], spec))}


class Tracker:
    """One MLflow experiment in the store of this process (``MLFLOW_TRACKING_URI``, else ``mlflow.db``)."""

    def __init__(self, experiment: str, uri: str | None = None):
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)   # no "Creating initial tables" chatter
        self.mlflow = mlflow
        self.uri = uri = uri or tracking_uri()
        mlflow.set_tracking_uri(uri)
        with store_lock(uri):
            check_store(uri)
            self.client = mlflow.MlflowClient(uri)
            self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        found = retry(self.client.get_experiment_by_name, name)
        if found is None:
            try:
                return retry(self.client.create_experiment, name, artifact_root(self.uri, name),
                             tags=EXPERIMENT_KIND)
            except UserError:   # the server refused: not allowed, no retry will change that
                raise
            except Exception:  # another process (on a shared server) created it first
                found = retry(self.client.get_experiment_by_name, name)
        check_artifact_root(found.artifact_location, name)
        if found.tags.get("mlflow.experimentKind") is None:
            retry(self.client.set_experiment_tag, found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return found.experiment_id

    @contextmanager
    def run(self, name: str, role: str, params_flat: dict | None = None, tags: dict[str, str] | None = None,
            parent: str | None = None, span: tuple[float, float | None] | None = None):
        """A run (a child of ``parent`` when given) that ends FINISHED, FAILED on an error, or KILLED on
        Ctrl-C/SIGTERM (the stage turns SIGTERM into ``SystemExit(143)``). Starting a top-level run first
        closes the runs that killed processes left RUNNING (once per execution, not per child).
        ``span``: (start, end) in Unix seconds of what the run records (its training), shown by MLflow as
        the run's start and duration; end None: when the block ends; no span: the logging itself."""
        if parent is None:
            self.close_stale()
        run_tags = {ROLE_TAG: role, **(tags or {}), **process_tags()}
        if parent:
            run_tags["mlflow.parentRunId"] = parent
        start, end = [None if t is None else int(t * 1000) for t in (span or (None, None))]   # MLflow: ms
        run_id = create_run_once(self.client, self.experiment_id, name, run_tags, start).info.run_id
        try:
            if params_flat:
                self.log_params(run_id, params_flat)
            yield run_id
        except BaseException as exc:
            self.end(run_id, _ended_by(exc))
            raise
        self.end(run_id, "FINISHED", end)

    @contextmanager
    def execution(self):
        """Around everything one process logs: whatever ends it early (an error, Ctrl-C, SIGTERM), every
        run it still has RUNNING ends too. :meth:`run` ends its own run, but not one that the interruption
        caught between creating it and entering its block, or while it was being ended."""
        try:
            yield
        except BaseException as exc:
            self.close_own(_ended_by(exc))
            raise

    def close_own(self, status: str) -> None:
        """End as ``status`` every RUNNING run that this process opened (its :func:`process_tags`)."""
        mine = process_tags()
        for run in retry(self.client.search_runs, [self.experiment_id], "attributes.status = 'RUNNING'"):
            if all(run.data.tags.get(key) == value for key, value in mine.items()):
                self.end(run.info.run_id, status)

    def end(self, run_id: str, status: str, end_time: int | None = None) -> None:
        """Terminate a run (at ``end_time``, Unix ms, default now) and drop its bookkeeping tags (process and
        request ids): they only serve :meth:`close_stale` and :func:`create_run_once` while the run is
        RUNNING, and clutter the UI after."""
        from mlflow.exceptions import MlflowException

        retry(self.client.set_terminated, run_id, status, end_time)
        for key in BOOKKEEPING_TAGS:
            try:
                retry(self.client.delete_tag, run_id, key)
            except MlflowException as exc:   # already gone: a retried call whose first answer was lost
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise

    def close_stale(self) -> None:
        """Mark as KILLED every RUNNING run whose process is gone (a SIGKILLed process leaves it RUNNING)."""
        for run in retry(self.client.search_runs, [self.experiment_id], "attributes.status = 'RUNNING'"):
            if not alive(run.data.tags):
                self.end(run.info.run_id, "KILLED")

    def describe(self, run_id: str, text: str) -> None:
        """The run's description (the note shown at the top of its page in the UI)."""
        retry(self.client.set_tag, run_id, "mlflow.note.content", text)

    def log_params(self, run_id: str, params_flat: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params_flat.items()]
        for start in range(0, len(items), 100):
            retry(self.client.log_batch, run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log_steps(run_id, [(step, metrics)])

    def log_steps(self, run_id: str, steps: list[tuple[int, dict[str, float]]]) -> None:
        """Metrics at several steps (e.g. one per epoch, the epoch as the step) in few calls, each to
        :data:`SHOWN_DIGITS` significant digits."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, shown(v), stamp, step) for step, metrics in steps for k, v in metrics.items()]
        for start in range(0, len(batch), BATCH):
            retry(self.client.log_batch, run_id, metrics=batch[start:start + BATCH])

    def log_model(self, run_id: str, checkpoint: Path, name: str):
        """Log a ``model.pt`` as a pyfunc model (:func:`pyfunc_arguments`); the run records the checkpoint's
        SHA-256 (``model.sha256``), which :func:`pipeline.predict.checkpoint_of` checks before loading
        anything of the model."""
        retry(self.client.set_tag, run_id, CHECKPOINT_TAG, sha256(checkpoint))
        from importlib.metadata import version

        with self.mlflow.start_run(run_id=run_id, nested=True):
            return retry(self.mlflow.pyfunc.log_model, name=name, **pyfunc_arguments(checkpoint),
                         pip_requirements=[f"{p}=={version(p).split('+')[0]}" for p in SERVING_PACKAGES])

    def register(self, run_id: str, name: str):
        """Register the model logged in ``run_id`` as a new version of ``name`` (no alias: that is
        :mod:`pipeline.promote`'s decision)."""
        models = retry(self.mlflow.search_logged_models, experiment_ids=[self.experiment_id], output_format="list",
                       filter_string=f"source_run_id = '{run_id}'")
        return retry(self.mlflow.register_model, models[0].model_uri, name)

    def log_artifacts(self, run_id: str, paths, folder: str | None = None) -> None:
        for path in paths:
            retry(self.client.log_artifact, run_id, str(path), folder)
