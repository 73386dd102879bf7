"""Promote one pipeline execution's final model: the only way the Model Registry changes.

    python -m pipeline.promote <parent run id> --reason "why this one" [--alias candidate]

``track`` logs every execution's models but registers none, so no ``dvc repro`` or ``dvc exp run`` (an
ablation, a 1-epoch debug run) moves what ``models:/<experiment>@candidate`` serves. Promotion registers
the ``final`` model of a parent run that is FINISHED, has its metrics logged and was made from committed
code, as a new version of the model named after the run's MLflow experiment, records who, when, why and
from which run and commit in the version's tags and description, and then points the alias at it. A run
that is not such a parent is refused with one line and exit status 1; nothing is registered.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timezone

from .errors import UserError
from .mlflow_store import retry, tracking_uri
from .tracking import ROLE_TAG, Tracker

ALIAS = "candidate"


class PromotionRefused(UserError):
    """The run cannot be promoted; the message says why and what to promote instead."""


def final_child(tracker: Tracker, parent_id: str):
    """The parent's FINISHED ``final`` child run (the model trained on every subject)."""
    children = retry(tracker.client.search_runs, [tracker.experiment_id],
                     filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{ROLE_TAG}` = 'final'")
    finished = [r for r in children if r.info.status == "FINISHED"]
    if not finished:
        raise PromotionRefused(f"run {parent_id}: it has no FINISHED final run, so there is no model to promote")
    return finished[0]


def check_promotable(run) -> None:
    """Refuse anything but a FINISHED parent with metrics, made from committed code."""
    run_id, tags = run.info.run_id, run.data.tags
    if tags.get(ROLE_TAG) != "parent":
        raise PromotionRefused(f"run {run_id} is a {tags.get(ROLE_TAG, 'foreign')} run, not a pipeline execution: "
                               "promote its parent run (the one named after the commit or the DVC experiment)")
    if run.info.status != "FINISHED":
        raise PromotionRefused(f"run {run_id} ended {run.info.status}: only a FINISHED execution can be promoted")
    if "trial/accuracy_mean" not in run.data.metrics:
        raise PromotionRefused(f"run {run_id} has no logged metrics (trial/accuracy_mean): its tracking did not "
                               "complete; rerun `dvc repro` and promote the new run")
    if tags.get("git.dirty") != "false":
        raise PromotionRefused(f"run {run_id} was made from uncommitted code (git.dirty: {tags.get('git.dirty')}), "
                               "so it cannot be rebuilt: commit, rerun `dvc repro`, and promote that run")


def promote(run_id: str, reason: str, alias: str = ALIAS, user: str | None = None):
    """Register the final model of parent run ``run_id`` as a new version and point ``alias`` at it;
    returns the model version."""
    if not reason.strip():
        raise PromotionRefused("--reason is empty: say why this model is promoted (it is kept with the version)")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri())   # only to find the run's experiment; then its Tracker
    try:
        run = retry(client.get_run, run_id)
    except MlflowException:
        raise PromotionRefused(f"run {run_id}: no such run in {tracking_uri()}") from None
    check_promotable(run)
    experiment = retry(client.get_experiment, run.info.experiment_id).name
    tracker = Tracker(experiment)
    final = final_child(tracker, run_id)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    who = user or getpass.getuser()
    version = tracker.register(final.info.run_id, experiment)
    tags = {"promoted_by": who, "promoted_at": when, "reason": reason, "parent_run": run_id,
            "git.commit": run.data.tags.get("git.commit", ""),
            "trial_accuracy_mean": str(run.data.metrics["trial/accuracy_mean"])}
    for key, value in tags.items():
        retry(tracker.client.set_model_version_tag, experiment, version.version, key, value)
    retry(tracker.client.update_model_version, experiment, version.version,
          description=f"Promoted by {who} at {when} from run {run_id} ({run.info.run_name}): {reason}")
    retry(tracker.client.set_registered_model_alias, experiment, alias, version.version)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_id", help="the parent run of a pipeline execution (mlflow ui, or track's last line)")
    parser.add_argument("--reason", required=True, help="why this model, kept with the registered version")
    parser.add_argument("--alias", default=ALIAS)
    args = parser.parse_args(argv)
    try:
        version = promote(args.run_id, args.reason, args.alias)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"promoted run {args.run_id}: models:/{version.name}/{version.version} is now @{args.alias}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
