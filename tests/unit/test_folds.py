"""Folds on Ray: results independent of parallelism, a killed worker retried, a failing fold reported."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.datasets.seedv import SPEC
from pipeline.errors import UserError
from pipeline.evaluate import seed_summary
from pipeline.features import write_table
from pipeline.folds import FoldFailed, run_folds, train_one
from pipeline.sequences import Trials
from pipeline.splits import make_folds
from tests.conftest import ROOT, free_port, make_params, wait_for_port

FOLDS = [1, 2, 3]   # the test subjects: one LOSO fold each (subject-1, subject-2, subject-3)
FIELDS = ("eeg", "eye", "lengths", "labels", "subjects", "sessions", "trials")


@pytest.fixture(scope="module")
def trials(tiny_frame):
    return Trials.from_frame(tiny_frame, SPEC)


def tiny(subjects=(1, 2, 3), **train):
    return make_params(data={"subjects": list(subjects)}, cv={"split": "loso", "subjects": FOLDS[:len(subjects)]},
                       model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 2, "batch_size": 16, "device": "cpu", "validation": 1,
                              "input_noise": 0.3, **train})


def fold(params, subject):
    """The LOSO fold of ``params`` that tests ``subject``."""
    (chosen,) = [f for f in make_folds(SPEC, params) if f.subject == subject]
    assert chosen.name == f"subject-{subject}"
    return chosen


def parallel(trials, params, folds=FOLDS):
    outputs = {}
    run_folds(trials, params, [fold(params, s) for s in folds],
              lambda output, done: outputs.update({output.fold.subject: output}))
    return outputs


def assert_same(a, b):
    pd.testing.assert_frame_equal(a.result.predictions, b.result.predictions, check_exact=True)
    pd.testing.assert_frame_equal(a.result.curves, b.result.curves, check_exact=True)
    for key, value in a.result.model.state_dict().items():
        assert torch.equal(value, b.result.model.state_dict()[key]), key


def test_parallel_equals_one_at_a_time(ray_session, trials):
    params = tiny()
    together = parallel(trials, params)
    assert set(together) == set(FOLDS)
    for s in FOLDS:
        assert_same(together[s], train_one(trials, fold(params, s), params))       # in this process, no Ray
    alone = parallel(trials, params, folds=[2])                             # nothing beside it
    assert_same(alone[2], together[2])


def _fold_workers() -> list[int]:
    """Pids of Ray workers now running a fold (Ray titles them after the task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::train_one" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_worker_killed_mid_fold_is_retried_with_the_same_result(ray_session, trials):
    params = tiny(epochs=6)
    reference = parallel(trials, params, folds=[1])[1]
    killed = []

    def kill_one():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            workers = _fold_workers()
            if workers:
                time.sleep(1.0)              # mid-fold, not at its first instruction
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one)
    killer.start()
    outputs = parallel(trials, params, folds=[1])
    killer.join()
    assert killed, "no fold worker was found to kill"
    assert_same(outputs[1], reference)


def test_a_failing_fold_stops_the_study_with_one_line(ray_session, trials):
    without_3 = Trials(*(getattr(trials, f)[trials.subjects != 3] for f in FIELDS), SPEC)
    # Every fold lacks subject 3 (to test or to train on): whichever fails first stops the study.
    with pytest.raises(FoldFailed, match=r"^fold subject-[123] failed: ParamsError: data.subjects: subject\(s\) \[3\] "
                                         r"are not \(all\) in the feature table — rerun") as info:
        parallel(without_3, tiny(), folds=[3, 1, 2])
    assert "\n" not in str(info.value)


def test_an_inner_split_that_leaves_nothing_to_train_on_is_named(trials):
    only_1_and_2 = Trials(*(getattr(trials, f)[trials.subjects != 3] for f in FIELDS), SPEC)
    params = tiny(subjects=(1, 2))     # fold subject-1 has one training subject, and validation takes it
    with pytest.raises(UserError, match=r"^train.validation: 1 inner-validation subjects leave no subject "
                                        r"to train fold subject-1 on \(1 training subjects\); lower it$"):
        train_one(only_1_and_2, fold(params, 1), params)


def test_a_training_subject_missing_from_the_table_is_named(trials):
    """params list subject 3, the table lacks it: one line naming it, never a fold trained on less."""
    only_1_and_2 = Trials(*(getattr(trials, f)[trials.subjects != 3] for f in FIELDS), SPEC)
    params = tiny()
    with pytest.raises(ValueError, match=r"^data.subjects: subject\(s\) \[3\] are not \(all\) in the feature table"):
        train_one(only_1_and_2, fold(params, 1), params)


def test_each_extra_seed_is_the_run_with_that_seed(ray_session, trials):
    """train.seeds = 2: every fold trained with train.seed and train.seed + 1, each exactly what a one-seed
    run with that train.seed gives; seed_summary reports their mean and spread."""
    outputs = {}
    params = tiny(seed=5, seeds=2)
    run_folds(trials, params, [fold(params, s) for s in FOLDS],
              lambda output, done: outputs.update({(output.fold.subject, output.seed): output}))
    assert set(outputs) == {(s, seed) for s in FOLDS for seed in (5, 6)}
    for s in FOLDS:
        assert_same(outputs[s, 5], train_one(trials, fold(tiny(seed=5), s), tiny(seed=5)))
        assert_same(outputs[s, 6], train_one(trials, fold(tiny(seed=6), s), tiny(seed=6)))
    folds = {s: {"seeds": {str(seed): outputs[s, seed].metrics for seed in (5, 6)}} for s in FOLDS}
    seeds, averaged = seed_summary(folds)
    per_seed = [np.mean([outputs[s, seed].metrics["trial"]["accuracy"] for s in FOLDS]) for seed in (5, 6)]
    assert seeds["n"] == 2 and seeds["trial_accuracy_seed_6"] == pytest.approx(per_seed[1])
    assert seeds["trial_accuracy_mean"] == pytest.approx(np.mean(per_seed))
    assert seeds["trial_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert averaged[1]["trial"]["accuracy"] == pytest.approx(
        np.mean([outputs[1, seed].metrics["trial"]["accuracy"] for seed in (5, 6)]))
    assert seed_summary({s: {} for s in FOLDS}) == ({}, {})


def run_python(code: str, cwd: Path, **env) -> "subprocess.CompletedProcess":
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**clean, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **env})


def test_an_unreachable_ray_address_fails_the_stage_in_one_line(tmp_path, tiny_frame):
    """It hung past 120 s with rpc warnings; now one line within seconds, nothing written."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["subjects"] = [1, 2, 3]                 # tiny_frame's subjects
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_table(tiny_frame, tmp_path / "features.parquet", SPEC)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stages.train", "features.parquet", "m", "p", "f", "c", "s"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": "127.0.0.1:1"})
    assert result.returncode == 1 and time.monotonic() - start < 60
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: RAY_ADDRESS=127.0.0.1:1: no Ray head answers there")
    assert not any((tmp_path / name).exists() for name in "mpfcs")


def test_a_head_already_on_the_machine_is_not_joined_by_accident(tmp_path):
    """After `ray start --head` (the README's recipe for queued experiments) a plain `dvc repro` without
    RAY_ADDRESS died with "When connecting to an existing cluster, num_cpus and num_gpus must not be
    provided"; it now starts its own Ray, with the head running and after it has gone."""
    import subprocess
    import sys

    port = free_port()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                             "--num-cpus=1", "--include-dashboard=false", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = ("from pathlib import Path; import os, ray; from pipeline.folds import _start_ray\n"
             "from pipeline.params import load\n"
             f"assert _start_ray(load(Path({str(ROOT / 'params.yaml')!r})), Path('.'))\n"
             "print(ray.cluster_resources()['CPU'] >= 1, ray.get_runtime_context().gcs_address)\n"
             "ray.shutdown()\n")
    try:
        wait_for_port(port)
        running = run_python(probe, tmp_path)
        assert running.returncode == 0, running.stderr[-2000:]
        own, address = running.stdout.split()
        assert own == "True" and not address.endswith(f":{port}")
    finally:
        head.terminate()
        head.wait(timeout=60)
    try:
        gone = run_python(probe, tmp_path)     # the dead head's files are still in /tmp/ray
        assert gone.returncode == 0 and gone.stdout.startswith("True"), gone.stderr[-2000:]
    finally:   # leave no pointer to the dead head: older code (another checkout's) would trip on it
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
