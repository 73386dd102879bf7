"""The model contract: every model trains through the same folds, learns, checkpoints, serves and keeps
its test part out of training; the documented own-model example runs."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from pipeline import models
from pipeline.datasets.seedv import SPEC
from pipeline.evaluate import subject_metrics
from pipeline.models import load_checkpoint, save_checkpoint
from pipeline.predict import example_table, predict_table
from pipeline.sequences import Trials, predict_windows
from pipeline.splits import make_folds
from pipeline.train import train_fold
from tests.conftest import ROOT, make_params

OTHER_MODELS = ("svm", "dcca")


def params_for(name: str, split: str = "loso", **train):
    return make_params(data={"subjects": [1, 2, 3]}, cv={"split": split, "subjects": [1]},
                       model={"name": name, "d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 3, "validation": 1, **train})


@pytest.fixture(scope="module")
def trials(tiny_frame):
    return Trials.from_frame(tiny_frame, SPEC)


@pytest.mark.parametrize("name", OTHER_MODELS)
def test_the_reference_models_learn_on_a_loso_fold(trials, name):
    """Chance is 20 %; trained on two subjects, both reach well above it on a new one (a model whose fit
    left the classifier at its initial weights sits at chance: 9 of 45 trials)."""
    p = params_for(name)
    result = train_fold(trials, make_folds(SPEC, p)[0], p)
    assert subject_metrics(result.predictions)["trial"]["accuracy"] >= 0.4
    assert result.selection["C"] in p.flat()[f"{name}.C"] and len(result.selection["candidates"]) == 3


@pytest.mark.parametrize("name", OTHER_MODELS)
def test_checkpoint_and_serving_give_the_trained_predictions(trials, name, tmp_path):
    p = params_for(name)
    fold = make_folds(SPEC, p)[0]
    result = train_fold(trials, fold, p)
    save_checkpoint(tmp_path / "model.pt", result.model, p, SPEC, result.train_subjects, result.n_domains, fold.name)
    loaded, ckpt = load_checkpoint(tmp_path / "model.pt")
    index = np.flatnonzero(fold.mask("test", trials))
    again = predict_windows(loaded, trials, index, p.cv.input, p.cv.crop_windows)
    assert again.equals(result.predictions) and ckpt["spec"] == SPEC and ckpt["fold"] == "subject-1"
    served = predict_table(loaded, ckpt, example_table(SPEC, 12), torch.device("cpu"))
    probabilities = served[[f"p_{e}" for e in SPEC.classes]].to_numpy()
    assert served.shape == (1, 4 + SPEC.n_classes) and abs(probabilities.sum() - 1) < 1e-6


@pytest.mark.parametrize("name,split", [("svm", "subject-dependent"), ("dcca", "loso-unseen-clips"),
                                        ("transformer", "cross-session")])
def test_a_folds_test_labels_change_nothing_it_trained(trials, name, split):
    """Under every split the test part chooses nothing: other labels on it give the same choice, the same
    weights and the same probabilities."""
    p = params_for(name, split)
    fold = make_folds(SPEC, p)[1]
    test = fold.mask("test", trials)
    relabelled = dataclasses.replace(trials, labels=np.where(test, (trials.labels + 1) % 5, trials.labels))
    first, second = train_fold(trials, fold, p), train_fold(relabelled, fold, p)
    assert first.selection == second.selection
    for (key, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), key
    columns = list(SPEC.probability_columns)
    assert first.predictions[columns].equals(second.predictions[columns])
    assert not first.predictions["label"].equals(second.predictions["label"])   # the relabelling did happen


def readme_model() -> str:
    """The code block of the "Add your own model" section (docs/protocols.md, linked from the README)."""
    text = (ROOT / "docs" / "protocols.md").read_text()
    section = text[text.index("### Add your own model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_own_model_example_runs_through_a_fold(trials, monkeypatch, tmp_path):
    import importlib.util

    path = ROOT / "pipeline" / "models" / "_readme_example.py"   # inside the package: its relative imports work
    path.write_text(readme_model())
    try:
        spec = importlib.util.spec_from_file_location("pipeline.models._readme_example", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        path.unlink()
    monkeypatch.setattr(models, "load", lambda name: module)
    p = params_for("transformer", validation=0, input_noise=0.0)   # any registered name: load() is replaced
    fold = make_folds(SPEC, p)[0]
    result = train_fold(trials, fold, p)
    assert subject_metrics(result.predictions)["trial"]["accuracy"] >= 0.5    # nearest class means learn too
    save_checkpoint(tmp_path / "model.pt", result.model, p, SPEC, result.train_subjects, result.n_domains, fold.name)
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    index = np.flatnonzero(fold.mask("test", trials))
    assert predict_windows(loaded, trials, index, p.cv.input, p.cv.crop_windows).equals(result.predictions)
