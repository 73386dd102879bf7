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

from pipeline.evaluate import seed_summary
from pipeline.folds import FoldFailed, run_folds, train_one
from pipeline.sequences import Trials
from tests.conftest import make_params

FOLDS = [1, 2, 3]


@pytest.fixture(scope="module")
def trials(tiny_frame):
    return Trials.from_frame(tiny_frame)


def tiny(**train):
    return make_params(data={"subjects": [1, 2, 3]}, cv={"subjects": FOLDS},
                       model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 2, "batch_size": 16, "device": "cpu", "validation_subjects": 1,
                              "input_noise": 0.3, **train})


def parallel(trials, params, folds=FOLDS):
    outputs = {}
    run_folds(trials, params, folds, lambda output, done: outputs.update({output.held_out: output}))
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
        assert_same(together[s], train_one(trials, s, params))       # in this process, no Ray
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
    without_3 = Trials(*(getattr(trials, f)[trials.subjects != 3] for f in
                         ("eeg", "eye", "lengths", "labels", "subjects", "sessions", "trials")))
    with pytest.raises(FoldFailed, match=r"^fold 3 failed: ValueError: cv.subjects: subject 3 is not in the "
                                         r"feature table$") as info:
        parallel(without_3, tiny(), folds=[3, 1, 2])
    assert "\n" not in str(info.value)


def test_an_inner_split_that_leaves_nothing_to_train_on_is_named(trials):
    only_1_and_2 = Trials(*(getattr(trials, f)[trials.subjects != 3] for f in
                            ("eeg", "eye", "lengths", "labels", "subjects", "sessions", "trials")))
    with pytest.raises(ValueError, match=r"^train.validation_subjects: 1 inner-validation subjects leave no subject "
                                         r"to train fold 1 on \(the table has 1 besides it\)$"):
        train_one(only_1_and_2, 1, tiny())


def test_each_extra_seed_is_the_run_with_that_seed(ray_session, trials):
    """train.seeds = 2: every fold trained with train.seed and train.seed + 1, each exactly what a one-seed
    run with that train.seed gives; seed_summary reports their mean and spread."""
    outputs = {}
    run_folds(trials, tiny(seed=5, seeds=2), FOLDS,
              lambda output, done: outputs.update({(output.held_out, output.seed): output}))
    assert set(outputs) == {(s, seed) for s in FOLDS for seed in (5, 6)}
    for s in FOLDS:
        assert_same(outputs[s, 5], train_one(trials, s, tiny(seed=5)))
        assert_same(outputs[s, 6], train_one(trials, s, tiny(seed=6)))
    folds = {s: {"seeds": {str(seed): outputs[s, seed].metrics for seed in (5, 6)}} for s in FOLDS}
    seeds, averaged = seed_summary(folds)
    per_seed = [np.mean([outputs[s, seed].metrics["trial"]["accuracy"] for s in FOLDS]) for seed in (5, 6)]
    assert seeds["n"] == 2 and seeds["trial_accuracy_seed_6"] == pytest.approx(per_seed[1])
    assert seeds["trial_accuracy_mean"] == pytest.approx(np.mean(per_seed))
    assert seeds["trial_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert averaged[1]["trial"]["accuracy"] == pytest.approx(
        np.mean([outputs[1, seed].metrics["trial"]["accuracy"] for seed in (5, 6)]))
    assert seed_summary({s: {} for s in FOLDS}) == ({}, {})
