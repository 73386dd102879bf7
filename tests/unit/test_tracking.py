"""MLflow bookkeeping in-process: stale and killed runs, retries, model registration."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import mlflow_store, promote, provenance, serve, tracking


def process_with_open_runs() -> subprocess.Popen:
    """A process (SIGTERM handled as the stages handle it) that opens a parent and a child run and waits."""
    code = ("from pipeline import tracking; import time, signal, sys\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
            "t = tracking.Tracker('t')\n"
            "with t.run('p', 'parent') as p, t.run('fold 1', 'fold', parent=p):\n"
            "    print('started', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "started"
    return child


def statuses(tracker) -> dict[str, str]:
    return {r.info.run_name: r.info.status for r in tracker.client.search_runs([tracker.experiment_id])}


def test_killed_run_is_marked_on_next_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = process_with_open_runs()
    os.kill(child.pid, signal.SIGKILL)       # it cannot close its runs
    child.wait()
    tracker = tracking.Tracker("t")
    assert statuses(tracker) == {"p": "RUNNING", "fold 1": "RUNNING"}
    with tracker.run("next", "parent"):
        pass
    assert statuses(tracker) == {"p": "KILLED", "fold 1": "KILLED", "next": "FINISHED"}


def test_sigterm_ends_runs_as_killed_and_an_error_as_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = process_with_open_runs()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    tracker = tracking.Tracker("t")
    with pytest.raises(ValueError), tracker.run("q", "parent"):
        raise ValueError("boom")
    assert statuses(tracker) == {"p": "KILLED", "fold 1": "KILLED", "q": "FAILED"}


def test_an_interrupted_execution_leaves_no_run_running(tmp_path, monkeypatch):
    """SIGTERM can land between creating a run and entering its block, or while a run is being ended:
    `run` alone then left it RUNNING (seen with `track`). `execution` ends whatever this process has open."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = tracking.Tracker("t")
    mlflow_store.create_run_once(tracker.client, tracker.experiment_id, "another process's",
                                         {"pipeline.host": "elsewhere", "pipeline.pid": "1"})
    real_end = tracker.end

    def interrupted_while_ending(run_id, status, end_time=None):
        if status == "FINISHED":
            raise SystemExit(143)          # the signal arrives inside the child's end
        real_end(run_id, status, end_time)

    with pytest.raises(SystemExit), tracker.execution(), tracker.run("p", "parent") as parent:
        mlflow_store.create_run_once(tracker.client, tracker.experiment_id, "created, never entered",
                                     {**provenance.process_tags(), "mlflow.parentRunId": parent})
        raise SystemExit(143)              # the signal arrives before the child's block is entered
    monkeypatch.setattr(tracker, "end", interrupted_while_ending)
    with pytest.raises(SystemExit), tracker.execution(), tracker.run("q", "parent") as parent:
        with tracker.run("fold 1", "fold", parent=parent):
            pass
    assert statuses(tracker) == {"p": "KILLED", "created, never entered": "KILLED", "q": "KILLED",
                                 "fold 1": "KILLED", "another process's": "RUNNING"}


def test_retry_backs_off_on_locked_store():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert mlflow_store.retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        mlflow_store.retry(lambda: (_ for _ in ()).throw(ValueError("not transient")))


def test_only_a_promotion_registers_and_the_model_is_the_checkpoint(tmp_path, monkeypatch):
    import torch

    from pipeline.datasets.seedv import SPEC
    from pipeline.models import save_checkpoint
    from pipeline.predict import example_table, predict_table
    from pipeline.models.transformer import CrossModalTransformer
    from pipeline.predict import checkpoint_of
    from tests.conftest import make_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = make_params(model=dict(d_model=8, heads=2, layers=1, d_ff=8))
    model = CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, n_domains=2).eval()
    save_checkpoint(tmp_path / "model.pt", model, params, SPEC, [1, 2], 2, "subject-3")
    tracker = tracking.Tracker("t")
    example = example_table(SPEC, 12)
    example[list(SPEC.feature_columns)] = np.random.default_rng(0).normal(size=(12, len(SPEC.feature_columns)))
    committed = {"git.dirty": "false", "git.commit": "abc"}

    def execution(tags=committed, metrics=True, fail=False) -> tuple[str, str]:
        """A parent run with a final child holding the model; (parent id, final id)."""
        with contextlib.suppress(RuntimeError), tracker.run("p", "parent", tags=tags) as parent:
            with tracker.run("final", "final", parent=parent) as run_id:
                tracker.log_model(run_id, tmp_path / "model.pt", name="final")
            if metrics:
                tracker.log_metrics(parent, {"trial/accuracy_mean": 0.5})
            if fail:
                raise RuntimeError("late failure")
        return parent, run_id

    # Logging registers nothing; only a promotion of a good execution moves the alias.
    parent, run_id = execution()
    assert tracker.client.search_registered_models() == []
    refusals = {execution(fail=True)[0]: "ended FAILED", execution(metrics=False)[0]: "no logged metrics",
                execution(tags={"git.dirty": "true"})[0]: "uncommitted code", run_id: "is a final run, not",
                "0" * 32: "no such run"}
    for refused, why in refusals.items():
        with pytest.raises(promote.PromotionRefused, match=why):
            promote.promote(refused, "test", user="tester")
    assert tracker.client.search_registered_models() == []
    version = promote.promote(parent, "best so far", user="tester")
    assert version.run_id == run_id
    promoted = tracker.client.get_model_version_by_alias("t", "candidate")
    assert promoted.version == version.version and promoted.tags["promoted_by"] == "tester"
    assert promoted.tags["reason"] == "best so far" and promoted.tags["parent_run"] == parent
    assert "best so far" in promoted.description
    # A later execution does not move it until it is promoted.
    later, _ = execution()
    assert tracker.client.get_model_version_by_alias("t", "candidate").version == version.version
    loaded = mlflow.pyfunc.load_model("models:/t@candidate")
    with torch.no_grad():
        expected = predict_table(model, {"spec": SPEC, "params": asdict(params)}, example, torch.device("cpu"))
    pd.testing.assert_frame_equal(loaded.predict(example.assign(label=3)), expected)   # label: optional, unused
    assert checkpoint_of("models:/t@candidate").read_bytes() == (tmp_path / "model.pt").read_bytes()
    inputs = loaded.metadata.signature.inputs
    assert inputs.input_names()[:5] == ["subject", "session", "trial", "window", "label"]
    assert inputs.input_names()[5:] == list(SPEC.feature_columns) and not inputs.inputs[4].required
    assert loaded.metadata.signature.outputs.input_names() == ["subject", "session", "trial", "predicted",
                                                               *(f"p_{e}" for e in SPEC.classes)]
    with pytest.raises(mlflow.exceptions.MlflowException, match="recording table: subject 1, session 1, trial 0: "
                                                                "5 window"):
        loaded.predict(example.iloc[:5])
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_retried_create_run_leaves_no_duplicate(tmp_path):
    """The first attempt creates the run but its answer is lost ("database is locked"): the retry finds
    that run by its request tag instead of creating a second one."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("t")

    class LosesFirstAnswer:
        calls = 0

        def create_run(self, *args, **kwargs):
            self.calls += 1
            run = client.create_run(*args, **kwargs)
            if self.calls == 1:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return run

        def search_runs(self, *args, **kwargs):
            return client.search_runs(*args, **kwargs)

    run = mlflow_store.create_run_once(LosesFirstAnswer(), experiment, "r", {"a": "b"})
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run.info.run_id]


def test_ended_runs_keep_no_bookkeeping_tags(tmp_path, monkeypatch):
    """Process and request ids serve only RUNNING runs; finished, failed and killed ones drop them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = process_with_open_runs()
    running = tracking.Tracker("t")
    open_runs = running.client.search_runs([running.experiment_id])
    assert all(set(tracking.BOOKKEEPING_TAGS) <= set(r.data.tags) for r in open_runs)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    tracker = tracking.Tracker("t")
    with tracker.run("done", "parent") as parent, tracker.run("fold 1", "fold", parent=parent):
        pass
    with pytest.raises(ValueError), tracker.run("failed", "parent"):
        raise ValueError("boom")
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"KILLED", "FINISHED", "FAILED"}
    assert all(not set(tracking.BOOKKEEPING_TAGS) & set(r.data.tags) for r in runs)
    assert all(r.data.tags["pipeline.role"] in ("parent", "fold") for r in runs)


def test_run_label_names_only_settings_that_differ_from_the_committed_params(tmp_path, monkeypatch):
    """A scalar in the committed params.yaml and the one-element list the pipeline reads it as are the
    same setting (CI once named every plain run ``<commit> train.label_smoothing=[0.0]``)."""
    from pathlib import Path

    from pipeline import params, provenance

    text = Path("params.yaml").read_text()
    assert "label_smoothing: 0.0" in text      # the scalar form this test is about
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    for args in (["init", "-q"], ["add", "params.yaml"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *args], check=True)
    flat = params.load("params.yaml").flat()
    assert provenance.run_label("abcdef123", flat) == "abcdef"
    flat["model.heads"] = 8
    assert provenance.run_label("abcdef123", flat) == "abcdef model.heads=8"


def test_artifacts_live_beside_the_store_whatever_the_working_directory(tmp_path, monkeypatch):
    """A queued `dvc exp run` works in .dvc/tmp/exps/<tmp>, deleted afterwards: an experiment created
    from there must not put its artifact root there (MLflow's default is ./mlruns of the cwd)."""
    store = tmp_path / "repo" / "mlflow.db"
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    tracker = tracking.Tracker("fresh")
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location.removeprefix("file://") == str(tmp_path / "repo" / "mlruns" / "fresh")
    with tracker.run("p", "parent") as run_id:
        tracker.log_artifacts(run_id, [store])
    assert (tmp_path / "repo" / "mlruns" / "fresh" / run_id / "artifacts" / "mlflow.db").is_file()
    assert not (workspace / "mlruns").exists()


def test_an_experiment_rooted_in_a_dvc_workspace_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.Tracker("ok")                       # creates the store
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("stale", artifact_location=str(tmp_path / ".dvc" / "tmp" / "exps" / "tmpx" / "mlruns" / "2"))
    with pytest.raises(mlflow_store.TrackingStoreError, match=r"^MLflow experiment 'stale' keeps its artifacts in "
                                                              r".*\.dvc/tmp/.*rename the experiment"):
        tracking.Tracker("stale")


PLANTED = '''
import pathlib
pathlib.Path({marker!r}).write_text("the planted model's code ran")
import mlflow


class Planted(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Planted())
'''


def test_a_planted_model_or_a_swapped_checkpoint_is_refused_before_any_of_it_runs(tmp_path, monkeypatch):
    """Anyone who can write to the tracking store can register a model under the project's name and point
    @candidate at it, or replace a logged model.pt: predict refuses both in one line, and the planted
    model's code (a pyfunc model is code, executed on load) never runs."""
    import torch

    from pipeline.datasets.seedv import SPEC
    from pipeline.errors import UserError
    from pipeline.models import save_checkpoint
    from pipeline.models.transformer import CrossModalTransformer
    from pipeline.predict import checkpoint_of
    from tests.conftest import make_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = make_params(model=dict(d_model=8, heads=2, layers=1, d_ff=8))
    for name, seed in (("model.pt", 0), ("other.pt", 1)):
        torch.manual_seed(seed)
        model = CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, n_domains=2).eval()
        save_checkpoint(tmp_path / name, model, params, SPEC, [1, 2], 2, None)
    tracker = tracking.Tracker("t")
    with tracker.run("final", "final") as genuine:
        tracker.log_model(genuine, tmp_path / "model.pt", name="final")
    assert checkpoint_of(f"runs:/{genuine}/final").read_bytes() == (tmp_path / "model.pt").read_bytes()

    marker, code = tmp_path / "ran.txt", tmp_path / "planted.py"
    code.write_text(PLANTED.format(marker=str(marker)))

    def plant(tags: dict, checkpoint: Path, alias: str) -> str:
        with mlflow.start_run(experiment_id=tracker.experiment_id, tags=tags) as run:
            info = mlflow.pyfunc.log_model(name="final", python_model=str(code),
                                           artifacts={"checkpoint": str(checkpoint)})
        version = mlflow.register_model(info.model_uri, "t")
        tracker.client.set_registered_model_alias("t", alias, version.version)
        return run.info.run_id

    plant({}, tmp_path / "model.pt", "stranger")                  # the genuine weights, in a stranger's model
    plant({"pipeline.role": "final", tracking.CHECKPOINT_TAG: tracking.sha256(tmp_path / "model.pt")},
          tmp_path / "other.pt", "forged")                        # tags copied from a real run, other weights
    marker.unlink(missing_ok=True)                                # whatever logging itself did
    with pytest.raises(UserError, match=r"^--model models:/t@stranger: not a model logged by this pipeline's "
                                        r"track stage \(its run has no model.sha256 tag\), so it is not loaded"):
        checkpoint_of("models:/t@stranger")
    with pytest.raises(UserError, match=r"^--model models:/t@forged: its model.pt is not the checkpoint its run "
                                        r"\w+ logged \(SHA-256 differs"):
        checkpoint_of("models:/t@forged")
    for alias in ("stranger", "forged"):                       # serving refuses them the same way
        assert serve.main([f"models:/t@{alias}"]) == 1
    assert not marker.exists()
    served = serve.local_model(f"runs:/{genuine}/final", tmp_path / "serve")   # ours: our code, its weights
    assert (served / "artifacts" / "model.pt").read_bytes() == (tmp_path / "model.pt").read_bytes()
    assert mlflow.pyfunc.load_model(str(served)).metadata.signature.inputs.input_names()[0] == "subject"

    # The genuine model's stored checkpoint replaced after logging.
    (logged,) = [m for m in tracker.client.search_logged_models([tracker.experiment_id])
                 if m.source_run_id == genuine]
    stored = Path(logged.artifact_location.removeprefix("file://")) / "artifacts" / "model.pt"
    stored.write_bytes((tmp_path / "other.pt").read_bytes())
    with pytest.raises(UserError, match="SHA-256 differs"):
        checkpoint_of(f"runs:/{genuine}/final")
    with pytest.raises(UserError, match="neither a model.pt file nor an MLflow model URI"):
        checkpoint_of("no/such/file.pt")


def test_a_copied_project_opens_its_own_artifacts_and_models(tmp_path, monkeypatch):
    """A store records absolute artifact paths: after `cp -r` (and the original deleted) the copy's store is
    made to point at the copy's mlruns/ the first time the pipeline opens it; its fold artifacts and final
    model load from there."""
    import shutil

    import torch

    from pipeline.datasets.seedv import SPEC
    from pipeline.models import save_checkpoint
    from pipeline.models.transformer import CrossModalTransformer
    from pipeline.predict import checkpoint_of
    from tests.conftest import make_params

    original, copy = tmp_path / "original", tmp_path / "moved" / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{original / 'mlflow.db'}")
    params = make_params(model=dict(d_model=8, heads=2, layers=1, d_ff=8))
    save_checkpoint(original / "model.pt", CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, 2).eval(),
                    params, SPEC, [1, 2], 2, None)
    (original / "fold.json").write_text('{"fold": "subject-1"}')
    tracker = tracking.Tracker("t")
    with tracker.run("fold subject-1", "fold") as fold, tracker.run("final", "final") as final:
        tracker.log_artifacts(fold, [original / "fold.json"], "folds")
        tracker.log_model(final, original / "model.pt", name="final")
    mlflow.MlflowClient().create_registered_model("t")
    shutil.copytree(original, copy)
    shutil.rmtree(original)                                   # nothing can be read from the old place

    monkeypatch.chdir(copy)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)                              # as a new process in the copy would have it
    assert mlflow_store.check_store(uri) == str(original)
    client = mlflow.MlflowClient()
    assert client.get_run(fold).info.artifact_uri.startswith(str(copy / "mlruns"))
    downloaded = client.download_artifacts(fold, "folds/fold.json", str(tmp_path / "got"))
    assert Path(downloaded).read_text() == '{"fold": "subject-1"}'
    assert checkpoint_of(f"runs:/{final}/final").read_bytes() == (copy / "model.pt").read_bytes()
    assert mlflow_store.check_store(uri) is None               # once is enough


def test_a_run_spans_what_it_records_and_shows_rounded_numbers(tmp_path, monkeypatch):
    """A fold run's start and duration are its training's (MLflow's Created and Duration); a parent given
    only a start ends when its block does; metrics are logged to SHOWN_DIGITS significant digits."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = tracking.Tracker("t")
    started = time.time() - 3600
    with tracker.run("p", "parent", span=(started, None)) as parent:
        with tracker.run("fold subject-1", "fold", parent=parent, span=(started + 5, started + 375.5)) as fold:
            tracker.log_metrics(fold, {"trial/accuracy": 0.7625000000000001, "p": 1 / 3, "noise": -1.7e-17,
                                       "window/accuracy": 0.99995, "window/n": 123456})
    runs = {r.info.run_name: r for r in tracker.client.search_runs([tracker.experiment_id])}
    info = runs["fold subject-1"].info
    assert (info.start_time, info.end_time) == (int((started + 5) * 1000), int((started + 375.5) * 1000))
    assert runs["p"].info.start_time == int(started * 1000) and runs["p"].info.end_time >= (time.time() - 60) * 1000
    assert runs["fold subject-1"].data.metrics == {"trial/accuracy": 0.7625, "p": 0.33333, "noise": -1.7e-17,
                                                   "window/accuracy": 0.99995, "window/n": 123456}


def test_a_timing_note_belongs_to_the_weights_it_timed(tmp_path, capsys):
    """data/timings/ is not DVC-tracked: a note is used only while the model it timed is the one on disk."""
    from pipeline import timing

    model = tmp_path / "models/subject-3/block-2/model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    timing.record("subject-3/block-2", model, 1000.0, 42.5, root=tmp_path / "timings")
    assert timing.timing_of("subject-3/block-2", timing.md5(model), root=tmp_path / "timings") == {
        "started": 1000.0, "seconds": 42.5}
    model.write_bytes(b"other weights")          # trained in another checkout
    assert timing.timing_of("subject-3/block-2", timing.md5(model), root=tmp_path / "timings") is None
    assert timing.timing_of("subject-4", timing.md5(model), root=tmp_path / "timings") is None   # never timed
    (tmp_path / "a-file").write_text("")          # a note that cannot be written never fails the training
    timing.record("subject-4", model, 1000.0, 42.5, root=tmp_path / "a-file" / "timings")
    assert "warning: " in capsys.readouterr().err


def test_the_chosen_epoch_is_marked_on_the_fold_curves(tmp_path):
    """On a fold's MLflow page every inner/* curve shares the epoch axis with inner/chosen_epoch, 1 at the
    epoch the inner validation chose."""
    from stages.track import curve_steps

    path = tmp_path / "subject-1.csv"
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.4], "val_loss": [0.9, 0.6, 0.7],
                  "fold": "subject-1"}).to_csv(path, index=False)
    steps = curve_steps(path, chosen_epoch=2)
    assert [epoch for epoch, _ in steps] == [1, 2, 3]
    assert [m["inner/chosen_epoch"] for _, m in steps] == [0, 1, 0]
    assert steps[1][1]["inner/val_loss"] == 0.6
