"""The CUDA path on a real GPU: no host sync inside the training step or the inner validation's batches,
a rerun is bit-identical, and a GPU without bf16 trains in fp32. Skipped without CUDA;
``benchmarks/gpu_check.py`` runs these first on a GPU machine."""

import numpy as np
import pytest
import torch

from pipeline.datasets.seedv import SPEC
from pipeline.models import resolve_device, transformer
from pipeline.sequences import Batcher, Trials, precision, run_sequences, to_device
from pipeline.train import fit_data, seed_everything
from tests.unit.test_device import tiny as device_params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py)")


def tiny(**train):
    return device_params("cuda", **train)


@pytest.fixture(scope="module")
def trials(tiny_frame):
    return Trials.from_frame(tiny_frame, SPEC)


def test_an_epoch_of_steps_and_a_validation_pass_never_sync(trials):
    params, device = tiny(), resolve_device("cuda")
    data = fit_data(trials, trials.keys()[trials.subjects != 3], trials.keys()[trials.subjects == 3], "subject")
    lengths = trials.lengths[data.train_index]
    model = transformer.build(params, SPEC, data.n_domains).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = transformer.steps_per_epoch(len(lengths), params)
    positions, owners, batches = transformer.epoch_batches(lengths, params, np.random.default_rng(0), steps)
    order = np.concatenate(batches)
    positions_on, owners_on = to_device(positions[order], device), to_device(owners[order], device)
    labels, domains = to_device(trials.labels[data.train_index], device), to_device(data.domains, device)
    alphas = to_device(np.linspace(0, 1, steps, dtype=np.float32), device)
    batch_of, validation = Batcher(trials, data.train_index, device), Batcher(trials, data.validation_index, device)
    bounds = np.cumsum([0] + [len(b) for b in batches])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k, batch in enumerate(map(slice, bounds[:-1], bounds[1:])):
            own = owners_on[batch]
            transformer.train_step(model, optimizer, batch_of(positions_on[batch], own), labels[own], domains[own],
                                   alphas[k], params.train, transformer.candidates(params)[-1])
        outputs = [out.logits for *_, out in run_sequences(model, trials, data.validation_index, params.cv.input,
                                                            params.cv.crop_windows, device, batcher=validation)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.cat(outputs)).all()


def test_a_rerun_on_the_same_gpu_is_bit_identical(trials):
    params, device = tiny(), resolve_device("cuda")
    data = fit_data(trials, trials.keys()[trials.subjects != 3], trials.keys()[trials.subjects == 3], "subject")
    runs = [transformer.fit(data, params, transformer.candidates(params)[-1], seed_everything(0, (1,)), device, 2)
            for _ in range(2)]
    assert runs[0].curves == runs[1].curves
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[key]), key


def test_a_gpu_without_bf16_trains_in_fp32(trials, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    params, device = tiny(validation=0), resolve_device("cuda")
    assert precision(device) == "fp32"
    data = fit_data(trials, trials.keys(), (), "subject")
    fitted = transformer.fit(data, params, transformer.candidates(params)[0], seed_everything(0, (1,)), device, 1)
    *_, out = next(run_sequences(fitted.model, trials, data.train_index[:2], params.cv.input,
                                 params.cv.crop_windows, device))
    assert out.embedding.dtype == torch.float32 and np.isfinite(fitted.curves[0]["loss"])
