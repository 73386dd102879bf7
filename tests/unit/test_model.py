import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.datasets.seedv import SPEC
from pipeline.features import recording_to_frame, normalize
from pipeline.models.transformer import (ClassificationHead, CrossModalAttention, CrossModalTransformer,
                                         DomainClassifier, FeatureImportance, GlobalPooling, PositionalEncoding,
                                         SelfAttentionEncoder, grl_alpha)
from pipeline.params import ParamsError
from pipeline.synthetic import generate_subject
from pipeline.sequences import Trials
from pipeline.splits import make_folds
from pipeline.train import train_fold

from tests.conftest import SMALL_MODEL as SMALL, WINDOWS_PER_SUBJECT, make_params


def transformer(params, n_domains):
    """The network on SEED-V's inputs (310 EEG, 33 eye features, 5 classes)."""
    return CrossModalTransformer(params, SPEC.widths, SPEC.n_classes, n_domains)


def fold_1(params):
    """The LOSO fold that tests subject 1 (cv.subjects: [1])."""
    (fold,) = make_folds(SPEC, params)
    assert fold.name == "subject-1"
    return fold


def batch(b=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[min(1, b - 1), 7:] = False
    return torch.randn(b, length, 310, generator=g), torch.randn(b, length, 33, generator=g), valid


def test_component_shapes():
    eeg, eye, valid = batch()
    x = torch.randn(3, 10, 16)
    assert PositionalEncoding(16)(x).shape == (3, 10, 16)
    gated, weights = FeatureImportance(310, 16)(eeg, valid)
    assert gated.shape == eeg.shape and weights.shape == (3, 310)
    assert ((weights > 0) & (weights < 1)).all()
    a, b, map_a, map_b = CrossModalAttention(16, 2, 0.0)(x, x.flip(0), valid)
    assert a.shape == b.shape == (3, 10, 16) and map_a.shape == map_b.shape == (3, 10, 10)
    torch.testing.assert_close(map_a.sum(-1), torch.ones(3, 10))
    assert (map_a[1, :, 7:] == 0).all()   # no attention to padding
    assert SelfAttentionEncoder(16, 2, 1, 32, 0.0)(x, valid).shape == (3, 10, 16)
    assert GlobalPooling()(x, valid).shape == (3, 16)
    torch.testing.assert_close(GlobalPooling(enabled=False)(x, valid)[1], x[1, 6])
    assert DomainClassifier(32, 16, 7)(torch.randn(3, 32), 0.5).shape == (3, 7)
    assert ClassificationHead(32, 16, 0.1, SPEC.n_classes)(torch.randn(3, 32)).shape == (3, 5)
    out = transformer(SMALL, n_domains=7)(eeg, eye, valid, details=True)
    assert out.logits.shape == (3, 5) and out.domain_logits.shape == (3, 7) and out.embedding.shape == (3, 32)
    assert set(out.details) == {"fim_eeg", "fim_eye", "attn_eeg_to_eye", "attn_eye_to_eeg"}


@pytest.mark.parametrize("switch", [None, "positional_encoding", "feature_importance", "cross_attention",
                                    "self_attention", "global_pooling", "domain_adaptation", "mlp_head"])
def test_padding_does_not_change_output(switch):
    params = dataclasses.replace(SMALL, **({switch: False} if switch else {}))
    torch.manual_seed(0)
    model = transformer(params, n_domains=4).eval()
    eeg, eye, _ = batch(1, 9)
    short = model(eeg, eye, torch.ones(1, 9, dtype=torch.bool)).logits
    for pad in (1, 20):
        padded = [torch.cat([x, torch.randn(1, pad, x.shape[-1]) * 100], 1) for x in (eeg, eye)]
        valid = torch.cat([torch.ones(1, 9), torch.zeros(1, pad)], 1).bool()
        torch.testing.assert_close(model(*padded, valid).logits, short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modalities", [["eeg"], ["eye"]])
def test_single_modality(modalities):
    model = transformer(dataclasses.replace(SMALL, modalities=modalities), n_domains=3)
    assert model.cross is None
    out = model(*batch())
    assert out.logits.shape == (3, 5) and out.embedding.shape == (3, 16)
    other = "eye" if modalities == ["eeg"] else "eeg"
    assert not any(name.startswith(f"project.{other}") for name, _ in model.named_parameters())


def test_gradient_reversal_flips_sign():
    torch.manual_seed(0)
    domain = DomainClassifier(8, 8, 3)
    x = torch.randn(4, 8, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(domain.classifier(x), target).backward()
    plain = x.grad.clone()
    x.grad = None
    torch.nn.functional.cross_entropy(domain(x, 0.5), target).backward()
    torch.testing.assert_close(x.grad, -0.5 * plain)
    assert grl_alpha(0.0) == 0.0 and grl_alpha(1.0) == pytest.approx(0.99991, abs=1e-5)


def test_params_validation():
    with pytest.raises(ParamsError, match=r"model.d_model \(30\) must be a multiple of model.heads \(4\)"):
        make_params(model={"d_model": 30, "heads": 4})
    with pytest.raises(ParamsError, match="model.hedas: unknown key"):
        make_params(model={"hedas": 4})
    with pytest.raises(ParamsError, match=r"cv.input: 'window' must be one of crop, trial"):
        make_params(cv={"input": "window"})
    with pytest.raises(ParamsError, match="train.lr: 'fast' should be float"):
        make_params(train={"lr": "fast"})
    assert make_params(train={"lr": 1}).train.lr == 1.0


@pytest.fixture(scope="module")
def tiny_trials():
    frame = pd.concat([recording_to_frame(generate_subject(0, s), SPEC) for s in (1, 2, 3)], ignore_index=True)
    return Trials.from_frame(normalize(frame, "subject"), SPEC)


def tiny_params(**cv):
    return make_params(data={"subjects": [1, 2, 3]}, cv={"subjects": [1], **cv},
                       model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 2, "batch_size": 16, "device": "cpu", "validation": 0,
                              "input_noise": 0.3})


@pytest.mark.parametrize("cv_input", ["crop", "trial"])
def test_training_is_deterministic(tiny_trials, cv_input):
    params = tiny_params(input=cv_input)
    a = train_fold(tiny_trials, fold_1(params), params)
    b = train_fold(tiny_trials, fold_1(params), params)
    pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=True)
    pd.testing.assert_frame_equal(a.curves, b.curves, check_exact=True)
    assert len(a.predictions) == WINDOWS_PER_SUBJECT and set(a.predictions.subject) == {1}
    assert a.train_subjects == [2, 3] and len(a.curves) == 2
    np.testing.assert_allclose(a.predictions[[f"p_{c}" for c in range(5)]].sum(axis=1), 1, atol=1e-5)


def test_long_crops_tile_short_trials(tiny_trials):
    """A crop longer than the shortest trial (13 windows) still gives every window a prediction."""
    params = tiny_params(crop_windows=20)
    result = train_fold(tiny_trials, fold_1(params), params)
    assert len(result.predictions) == WINDOWS_PER_SUBJECT and result.predictions.notna().all().all()


def test_the_held_out_labels_change_nothing_the_model_learns(tiny_trials):
    """Nested LOSO with a candidate list: new labels for the held-out subject (other class counts too)
    leave the chosen candidate, the chosen epoch, every trained weight and the predictions unchanged (only
    their score can change)."""
    params = make_params(data={"subjects": [1, 2, 3]}, cv={"subjects": [1]},
                         model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                         train={"epochs": 3, "batch_size": 16, "device": "cpu", "validation": 1,
                                "patience": 2, "input_noise": [0.0, 0.5], "refit": True})
    a = train_fold(tiny_trials, fold_1(params), params)
    relabelled = dataclasses.replace(tiny_trials, labels=tiny_trials.labels.copy())
    held_out = np.flatnonzero(relabelled.subjects == 1)
    relabelled.labels[held_out] = np.random.default_rng(0).integers(0, 5, len(held_out))
    assert np.bincount(relabelled.labels[held_out], minlength=5).tolist() != [9] * 5
    b = train_fold(relabelled, fold_1(params), params)
    assert a.selection == b.selection and a.selection["validation"] in ([2], [3])
    assert [c["input_noise"] for c in a.selection["candidates"]] == [0.0, 0.5]
    assert a.selection["input_noise"] in (0.0, 0.5) and a.selection["refit"]
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    prob = [f"p_{c}" for c in range(5)]
    pd.testing.assert_frame_equal(a.predictions[prob], b.predictions[prob], check_exact=True)


def test_each_candidate_is_chosen_by_its_inner_validation_score(tiny_trials):
    """The fold's choice is the candidate whose chosen epoch scores best (macro-F1, ties: loss); a
    candidate's run does not depend on which other candidates are listed."""
    from pipeline.models import selection_key

    params = make_params(data={"subjects": [1, 2, 3]}, cv={"subjects": [1]},
                         model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                         train={"epochs": 3, "batch_size": 16, "device": "cpu", "validation": 1,
                                "patience": 0, "input_noise": [3.0, 0.0], "refit": False})
    both = train_fold(tiny_trials, fold_1(params), params).selection
    scores = {c["input_noise"]: selection_key(c, "f1") for c in both["candidates"]}
    assert both["input_noise"] == min(scores, key=scores.get) == 0.0   # the second: noise of 3 std drowns it
    alone = train_fold(tiny_trials, fold_1(params), dataclasses.replace(
        params, train=dataclasses.replace(params.train, input_noise=[0.0]))).selection
    assert alone["candidates"][0] == both["candidates"][1]


def test_the_refit_follows_the_selection_runs_schedule(tiny_trials):
    """A refit stopped at epoch 2 of a 4-epoch schedule is where the selection run was after 2 epochs:
    same learning rate and gradient-reversal alpha, not annealed to zero."""
    from pipeline.models.transformer import Candidate, fit
    from pipeline.train import fit_data, seed_everything

    params = tiny_params()
    candidate = Candidate(0.0, 0.0)
    data = fit_data(tiny_trials, fold_1(params).train, (), "subject")     # subjects 2 and 3, no validation
    assert sorted(set(tiny_trials.subjects[data.train_index])) == [2, 3]
    full = fit(data, params, candidate, seed_everything(0, (1,)), torch.device("cpu"), 4)
    short = fit(data, params, candidate, seed_everything(0, (1,)), torch.device("cpu"), 2, schedule_epochs=4)
    for k in range(2):
        assert short.curves[k]["lr"] == full.curves[k]["lr"] > 0
        assert short.curves[k]["grl_alpha"] == full.curves[k]["grl_alpha"] < 1


def test_positional_encoding_takes_sequences_longer_than_its_table():
    from pipeline.models.transformer import PositionalEncoding, sinusoid_table

    encoding = PositionalEncoding(8, max_len=4)
    x = torch.zeros(2, 10, 8)
    assert torch.equal(encoding(x)[0], sinusoid_table(10, 8))
    assert torch.equal(encoding(x[:, :3]), encoding(x)[:, :3])       # the same codes, short or long


def test_regularizers_act_only_when_set():
    """train_step: input_noise 0 draws nothing from torch's RNG (so every default result is unchanged);
    noise > 0 perturbs the inputs; label smoothing changes the emotion loss."""
    from pipeline.models.transformer import Candidate, train_step

    def step(**setting):
        torch.manual_seed(0)
        model = transformer(SMALL, n_domains=3).eval()   # eval: no dropout draws
        tp = make_params().train
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        eeg, eye, valid = batch()
        before = torch.random.get_rng_state()
        sums = train_step(model, optimizer, (eeg, eye, valid), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]),
                          0.5, tp, Candidate(**setting))
        return sums[1].item(), torch.equal(before, torch.random.get_rng_state())

    plain, untouched = step(input_noise=0.0, label_smoothing=0.0)
    noisy, untouched_noisy = step(input_noise=0.3, label_smoothing=0.0)
    smoothed, _ = step(input_noise=0.0, label_smoothing=0.2)
    assert untouched and not untouched_noisy
    assert noisy != plain and smoothed != plain
    assert step(input_noise=0.0, label_smoothing=0.0)[0] == plain


def test_candidate_lists_are_validated():
    assert make_params(train={"input_noise": 0.3}).train.input_noise == [0.3]
    assert make_params(train={"input_noise": [0, 0.5]}).train.input_noise == [0.0, 0.5]
    for value, match in (([], "should be a number or a non-empty list"), ([0.1, 0.1], "lists a value twice"),
                         ([0.1, -1.0], r"-1.0 is outside"), (list(range(9)), "at most 8")):
        with pytest.raises(ParamsError, match=match):
            make_params(train={"input_noise": value})
    with pytest.raises(ParamsError, match="candidate lists need inner validation"):
        make_params(train={"input_noise": [0.0, 0.3], "validation": 0})
