"""The MLflow run lifecycle: one parent run per pipeline execution, one child run per stage (or fold).

A parent is found or created by its execution id (:mod:`pipeline.execution`); it is RUNNING only while
one of its stages runs and ends FINISHED, or FAILED if its last stage failed. A stage run ends FINISHED,
FAILED on an error, or KILLED on Ctrl-C/SIGTERM; one left RUNNING by a SIGKILLed process is closed by
the next stage that starts. Nothing here is written into DVC-tracked outputs (run ids would break DVC's
caching).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .execution import alive, data_hashes, environment_tags, execution_id, git_state, process_tags
from .mlflow_store import TrackingStoreError, check_store, create_run_once, retry, store_lock, tracking_uri

EXECUTION_TAG = "pipeline.execution"
ROLE_TAG = "pipeline.role"  # parent | fold | baselines | evaluate | plots

__all__ = ["Tracker", "TrackingStoreError", "EXECUTION_TAG", "ROLE_TAG"]


class Tracker:
    """One stage's view of the MLflow store: its execution's parent run and its own child run."""

    def __init__(self, experiment: str, uri: str | None = None, execution: str | None = None):
        """``uri`` and ``execution`` default to this process's (see :mod:`pipeline.mlflow_store` and
        :mod:`pipeline.execution`); a fold worker on another machine is given its driver's."""
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)   # no "Creating initial tables" chatter
        self.mlflow = mlflow
        self.uri = uri = uri or tracking_uri()
        mlflow.set_tracking_uri(uri)
        with store_lock(uri):
            check_store(uri)
            self.client = mlflow.MlflowClient(uri)
            self.experiment_id = self._experiment(experiment)
        self.execution = execution or execution_id()

    def _experiment(self, name: str) -> str:
        found = retry(self.client.get_experiment_by_name, name)
        if found:
            return found.experiment_id
        try:
            return retry(self.client.create_experiment, name)
        except Exception:  # another process (on a shared server) created it first
            return retry(self.client.get_experiment_by_name, name).experiment_id

    def parent(self, params_flat: dict, tags: dict[str, str] | None = None) -> str:
        """The run id of this execution's parent run, created (with params and tags) if missing."""
        query = f"tags.`{EXECUTION_TAG}` = '{self.execution}' and tags.`{ROLE_TAG}` = 'parent'"
        runs = retry(self.client.search_runs, [self.experiment_id], query, max_results=1)
        if runs:
            return runs[0].info.run_id
        exp_name = os.environ.get("DVC_EXP_NAME", "")
        run_tags = {EXECUTION_TAG: self.execution, ROLE_TAG: "parent", **git_state(Path.cwd()),
                    **data_hashes(), **environment_tags(), **({"dvc.experiment": exp_name} if exp_name else {}),
                    **(tags or {})}
        name = f"pipeline {exp_name}".strip() if exp_name else "pipeline"
        run = create_run_once(self.client, self.experiment_id, name, run_tags)
        try:
            self.log_params(run.info.run_id, params_flat)
            if Path("params.yaml").is_file():   # the exact file, for pipeline.rebuild
                retry(self.client.log_artifact, run.info.run_id, "params.yaml")
        finally:   # a parent is RUNNING only while one of its stages runs (see stage_run)
            retry(self.client.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id

    def log_params(self, run_id: str, params_flat: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params_flat.items()]
        for start in range(0, len(items), 100):
            retry(self.client.log_batch, run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        retry(self.client.log_batch, run_id, metrics=batch)

    def close_stale(self) -> None:
        """Mark as KILLED every RUNNING stage run whose process is gone (a SIGKILLed process leaves its
        run RUNNING), and FAILED the parents left RUNNING by it."""
        query = f"attributes.status = 'RUNNING' and tags.`{ROLE_TAG}` != 'parent'"
        for run in retry(self.client.search_runs, [self.experiment_id], query):
            if not alive(run.data.tags):
                retry(self.client.set_terminated, run.info.run_id, "KILLED")
                parent = run.data.tags.get("mlflow.parentRunId")
                if parent:
                    retry(self.client.set_terminated, parent, "FAILED")

    @contextmanager
    def stage_run(self, parent_id: str, role: str, name: str, params_flat: dict | None = None):
        """A child run for one stage. It ends FINISHED, FAILED on an error, or KILLED on Ctrl-C/SIGTERM;
        the parent's status follows the last stage that ran (FINISHED, or FAILED if that stage failed)."""
        self.close_stale()
        retry(self.client.update_run, parent_id, status="RUNNING")
        run = create_run_once(self.client, self.experiment_id, name,
                              {"mlflow.parentRunId": parent_id, EXECUTION_TAG: self.execution, ROLE_TAG: role,
                               **process_tags()})
        run_id = run.info.run_id
        if params_flat:
            self.log_params(run_id, params_flat)
        try:
            yield run_id
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 143)
            retry(self.client.set_terminated, run_id, "KILLED" if interrupted else "FAILED")
            retry(self.client.set_terminated, parent_id, "FAILED")
            raise
        retry(self.client.set_terminated, run_id, "FINISHED")
        retry(self.client.set_terminated, parent_id, "FINISHED")

    def log_model(self, run_id: str, model, example) -> None:
        """Log a torch module with its signature (inferred from a numpy example batch)."""
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        with self.mlflow.start_run(run_id=run_id, nested=True):
            retry(self.mlflow.pytorch.log_model, model, name="model", signature=signature,
                  input_example=example, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            retry(self.client.set_tag, run_id, key, value)

    def register_best_fold(self, parent_id: str, name: str):
        """Register the model of this execution's fold with the best held-out trial accuracy."""
        query = f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{ROLE_TAG}` = 'fold'"
        runs = retry(self.client.search_runs, [self.experiment_id], query,
                     order_by=["metrics.`trial.accuracy` DESC"], max_results=1)
        if not runs:
            return None
        return retry(self.mlflow.register_model, f"runs:/{runs[0].info.run_id}/model", name)

    def log_artifacts(self, run_id: str, paths) -> None:
        for path in paths:
            retry(self.client.log_artifact, run_id, str(path))
