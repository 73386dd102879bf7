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

from .execution import alive, data_hashes, environment_tags, execution_id, git_state, process_tags, run_label
from .mlflow_store import TrackingStoreError, check_store, create_run_once, retry, store_lock, tracking_uri

EXECUTION_TAG = "pipeline.execution"
# Opens the experiment in MLflow 3's model-training view, not its GenAI one (value from the pinned UI).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
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
        if found is None:
            try:
                return retry(self.client.create_experiment, name, tags=EXPERIMENT_KIND)
            except Exception:  # another process (on a shared server) created it first
                found = retry(self.client.get_experiment_by_name, name)
        if found.tags.get("mlflow.experimentKind") is None:
            retry(self.client.set_experiment_tag, found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return found.experiment_id

    def parent(self, params_flat: dict, tags: dict[str, str] | None = None) -> str:
        """The run id of this execution's parent run, created (with params and tags) if missing."""
        query = f"tags.`{EXECUTION_TAG}` = '{self.execution}' and tags.`{ROLE_TAG}` = 'parent'"
        runs = retry(self.client.search_runs, [self.experiment_id], query, max_results=1)
        if runs:
            return runs[0].info.run_id
        exp_name = os.environ.get("DVC_EXP_NAME", "")
        run_tags = {EXECUTION_TAG: self.execution, ROLE_TAG: "parent", **self.provenance(),
                    **environment_tags(), **({"dvc.experiment": exp_name} if exp_name else {}), **(tags or {})}
        name = exp_name or run_label(run_tags["git.commit"], params_flat)
        run = create_run_once(self.client, self.experiment_id, name, run_tags)
        try:
            self.log_params(run.info.run_id, params_flat)
            if Path("params.yaml").is_file():   # the exact file, for pipeline.rebuild
                retry(self.client.log_artifact, run.info.run_id, "params.yaml")
        finally:   # a parent is RUNNING only while one of its stages runs (see stage_run)
            retry(self.client.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id

    @staticmethod
    def provenance() -> dict[str, str]:
        """git and data tags, put on the parent and on every stage run."""
        return {**git_state(Path.cwd()), **data_hashes()}

    def describe(self, run_id: str, text: str) -> None:
        """The run's description (the note shown at the top of its page in the UI)."""
        retry(self.client.set_tag, run_id, "mlflow.note.content", text)

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
    def stage_run(self, parent_id: str, role: str, name: str, params_flat: dict | None = None,
                  tags: dict[str, str] | None = None):
        """A child run for one stage. It ends FINISHED, FAILED on an error, or KILLED on Ctrl-C/SIGTERM;
        the parent's status follows the last stage that ran (FINISHED, or FAILED if that stage failed)."""
        self.close_stale()
        retry(self.client.update_run, parent_id, status="RUNNING")
        run = create_run_once(self.client, self.experiment_id, name,
                              {"mlflow.parentRunId": parent_id, EXECUTION_TAG: self.execution, ROLE_TAG: role,
                               **(self.provenance() if tags is None else tags), **process_tags()})
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

    def log_model(self, run_id: str, model, example, name: str = "model"):
        """Log a torch module with its signature (inferred from a numpy example batch)."""
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        with self.mlflow.start_run(run_id=run_id, nested=True):
            return retry(self.mlflow.pytorch.log_model, model, name=name, signature=signature,
                  input_example=example, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            retry(self.client.set_tag, run_id, key, value)

    def register(self, run_id: str, name: str, alias: str):
        """Register the model logged in ``run_id`` under ``name`` and point ``alias`` at the new version."""
        models = retry(self.mlflow.search_logged_models, experiment_ids=[self.experiment_id], output_format="list",
                       filter_string=f"source_run_id = '{run_id}'")
        version = retry(self.mlflow.register_model, models[0].model_uri, name)
        retry(self.client.set_registered_model_alias, name, alias, version.version)
        return version

    def log_artifacts(self, run_id: str, paths) -> None:
        for path in paths:
            retry(self.client.log_artifact, run_id, str(path))
