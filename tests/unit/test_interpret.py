import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import interpret
from pipeline.datasets.seedv import SPEC
from pipeline.evaluate import confusion
from pipeline.models.transformer import CrossModalTransformer
from tests.conftest import SMALL_MODEL
from pipeline.sequences import Trials

SMALL = dataclasses.replace(SMALL_MODEL, dropout=0.1)


@pytest.fixture(scope="module")
def trials(tiny_frame):
    return Trials.from_frame(tiny_frame, SPEC)


def model(**switches):
    torch.manual_seed(0)
    return CrossModalTransformer(dataclasses.replace(SMALL, **switches), SPEC.widths, SPEC.n_classes, n_domains=2).eval()


def test_bin_attention_rows_sum_to_one():
    rng = np.random.default_rng(0)
    attention = rng.random((10, 10))
    attention /= attention.sum(1, keepdims=True)
    for n, bins in ((10, 10), (10, 4), (7, 5)):
        a = attention[:n, :n] / attention[:n, :n].sum(1, keepdims=True)
        padded = np.zeros((12, 12))
        padded[:n, :n] = a
        binned = interpret.bin_attention(padded, n, bins)
        assert binned.shape == (bins, bins)
        np.testing.assert_allclose(binned.sum(1), 1.0)
    assert interpret.key_mass(np.full((4, 4), 0.25), 4) == pytest.approx(np.ones(4))


@pytest.mark.parametrize("cv_input", ["crop", "trial"])
def test_extraction_shapes(trials, cv_input):
    index = np.flatnonzero(trials.subjects == 1)
    ex = interpret.extract(model(), trials, index, cv_input, 12, 12, interpret.Extraction(SPEC))
    assert len(ex.labels) == 45 and ex.subjects == [1] * 45
    assert ex.fim["eeg"][0].shape == (310,) and ex.fim["eye"][0].shape == (33,)
    assert all(((w > 0) & (w < 1)).all() for w in ex.fim["eeg"])
    for direction in ("eeg_to_eye", "eye_to_eeg"):
        maps = np.stack(ex.attention[direction])
        assert maps.shape == (45, 12, 12)
        np.testing.assert_allclose(np.nansum(maps, axis=2)[~np.isnan(maps).all(2)], 1.0, rtol=1e-5)
        assert np.stack(ex.temporal[direction]).shape == (45, 12)


def test_every_figure_writes_a_png(trials, tmp_path):
    index = np.flatnonzero(trials.subjects == 1)
    ex = interpret.extract(model(), trials, index, "crop", 12, 12, interpret.Extraction(SPEC))
    rng = np.random.default_rng(0)
    log_p = np.log(rng.dirichlet(np.ones(5), 45))
    table = pd.DataFrame({**{f"logp_{c}": log_p[:, c] for c in range(5)}, "label": trials.labels[index],
                          "predicted": log_p.argmax(1)})
    predictions = pd.DataFrame({"subject": 1, "session": 1, "trial": np.arange(45), "window": 0,
                                "label": trials.labels[index], **{f"p_{c}": np.exp(log_p[:, c]) for c in range(5)}})
    embeddings = interpret.trial_embeddings(model(), trials, index, "crop", 12)
    assert embeddings.shape == (len(index), 32)
    held_out = {"subject-1": (embeddings, trials.labels[index], log_p.argmax(1)),
                "subject-2": (embeddings, trials.labels[index], trials.labels[index])}
    paths = [
        interpret.cross_attention_figure(ex, tmp_path / "a.png"),
        interpret.temporal_attention_figure(ex, tmp_path / "b.png"),
        interpret.confidence_figure(table, tmp_path / "c.png"),
        interpret.feature_importance_figure(ex, tmp_path / "d.png"),
        interpret.subject_variability_figure({1: 0.5, 2: 0.7}, {"length-only": {1: 0.2, 2: 0.2}}, 0.229,
                                             tmp_path / "e.png"),
        interpret.confusion_figure(confusion(predictions, normalize="true"), SPEC.classes, tmp_path / "f.png"),
        interpret.tsne_figure(held_out, ("subject-1", 0.5, 0.0, 2), 0, SPEC.classes, tmp_path / "g.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_disabled_components_get_a_note(trials, tmp_path):
    index = np.flatnonzero(trials.subjects == 1)
    ex = interpret.extract(model(cross_attention=False, feature_importance=False), trials, index, "crop", 12, 12,
                           interpret.Extraction(SPEC))
    assert not ex.attention["eeg_to_eye"] and not ex.fim["eeg"]
    for draw in (interpret.cross_attention_figure, interpret.temporal_attention_figure,
                 interpret.feature_importance_figure):
        assert draw(ex, tmp_path / f"{draw.__name__}.png").stat().st_size > 1000


def test_subject_probe_finds_identity_and_chance():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(6), 40)
    marked = rng.normal(size=(240, 8)) + 3 * np.eye(6, 8)[subjects]     # each subject shifted its own way
    assert interpret.subject_probe(marked, subjects, seed=0) > 0.9
    assert interpret.subject_probe(rng.normal(size=(240, 8)), subjects, seed=0) < 0.35   # chance: 1/6


def test_expected_calibration_error():
    confidence = np.array([0.9, 0.9, 0.3, 0.3])
    correct = np.array([1, 1, 0, 1], dtype=bool)
    ece, _ = interpret.expected_calibration_error(confidence, correct)
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)


def test_the_confusion_figure_shows_each_true_class_row_of_the_test_trials(monkeypatch, tmp_path):
    """The numbers drawn in the cells are the trial confusion matrix normalized per true class: each row
    of the figure sums to 1, and the counts behind it sum to the 45 test trials."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 9)
    predicted = np.where(rng.uniform(size=45) < 0.6, labels, rng.integers(0, 5, 45))
    predictions = pd.DataFrame({"subject": 1, "session": 1, "trial": np.arange(45), "window": 0, "label": labels,
                                **{f"p_{c}": np.where(predicted == c, 0.9, 0.025) for c in range(5)}})
    assert confusion(predictions).sum() == 45
    drawn = {}
    monkeypatch.setattr(interpret, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    interpret.confusion_figure(confusion(predictions, normalize="true"), SPEC.classes, tmp_path / "f.png")
    ax = drawn["fig"].axes[0]
    cells = np.array([float(t.get_text()) for t in ax.texts]).reshape(5, 5)    # row-major, as displayed
    counts = np.array([[np.sum((labels == t) & (predicted == p)) for p in range(5)] for t in range(5)])
    np.testing.assert_allclose(cells, counts / counts.sum(1, keepdims=True), atol=0.005)
    np.testing.assert_allclose(cells.sum(1), 1, atol=0.03)
    assert ax.get_ylabel() == "true emotion"


def test_emotion_differences_keep_only_what_holds_across_subjects():
    """A cell raised for emotion 0 in every subject is kept (and its size is right); a cell raised in one
    subject only, however much, is blanked: subjects are the unit."""
    rng = np.random.default_rng(0)
    maps, labels, subjects = [], [], []
    for s in range(1, 9):
        for c in (0, 1):
            for _ in range(3):
                m = 1 + 0.01 * rng.normal(size=(2, 2))
                m[0, 0] += 0.5 if c == 0 else 0.0
                m[1, 1] += 5.0 if (c == 0 and s == 1) else 0.0
                maps.append(m), labels.append(c), subjects.append(s)
    (mean0, kept0), (mean1, kept1) = interpret.emotion_differences(maps, labels, subjects, 2)
    assert kept0[0, 0] and not kept0[1, 1] and kept1[0, 0]     # emotion 1 sits 0.25 below the mean there
    assert mean0[0, 0] == pytest.approx(0.25, abs=0.01) and mean1[0, 0] == pytest.approx(-0.25, abs=0.01)
