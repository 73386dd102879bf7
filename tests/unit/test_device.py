"""The device path, checked on a CPU machine: who decides the device (the worker), what Ray is asked for,
what is recorded, the memory check, host syncs in the training loop, compilation and the LR warmup.
The tests that need a real GPU are in ``test_cuda.py`` (skipped here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.datasets.seedv import SPEC
from pipeline.models import check_device_memory, device_facts, resolve_device
from pipeline.models import transformer
from pipeline.params import ParamsError
from pipeline.sequences import Trials, autocast, precision
from pipeline.train import fit_data, seed_everything
from tests.conftest import ROOT, make_params


def tiny(device: str = "cpu", **train):
    return make_params(data={"subjects": [1, 2, 3]}, cv={"split": "loso", "subjects": [1, 2, 3]},
                       model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 3, "batch_size": 16, "device": device, "validation": 1, "patience": 0,
                              "input_noise": 0.3, **train})


@pytest.fixture(scope="module")
def trials(tiny_frame):
    return Trials.from_frame(tiny_frame, SPEC)


# The fake-GPU checks run in a fresh interpreter: Ray is started there with a *declared* GPU (num_gpus=1)
# that torch cannot see, which is what a CPU worker on a GPU cluster looks like.
FAKE_GPU_CLUSTER = r"""
import json, sys
from pathlib import Path
import ray, torch
from pipeline.datasets.seedv import SPEC
from pipeline.features import read_table
from pipeline.folds import FoldFailed, _ray_tasks, run_folds
from pipeline.sequences import Trials
from pipeline.splits import make_folds
from tests.conftest import make_params

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
def params(device):
    return make_params(data={"subjects": [1, 2, 3]}, cv={"split": "loso", "subjects": [1]},
                       model={"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32},
                       train={"epochs": 1, "batch_size": 16, "device": device, "validation": 0,
                              "input_noise": 0.0})
def assigned_gpus():
    return ray.get_gpu_ids()
out = {}
for device in ("cpu", "auto"):
    with _ray_tasks(params(device), assigned_gpus, Path(".")) as (task, share):
        out[device] = [len(ray.get(task.remote())), share]
torch.cuda.is_available = lambda: True          # the driver "sees" a GPU; only the worker's view may count
trials = Trials.from_frame(read_table(Path(sys.argv[1]), SPEC), SPEC)
outputs = []
p = params("auto")
run_folds(trials, p, make_folds(SPEC, p), lambda output, n: outputs.append(output))
out["recorded"] = outputs[0].result.device
try:
    p = params("cuda")
    run_folds(trials, p, make_folds(SPEC, p), lambda output, n: None)
except FoldFailed as exc:
    out["cuda"] = str(exc)
print(json.dumps(out))
"""


def test_the_worker_decides_the_device_and_cpu_folds_ask_for_no_gpu(tmp_path, tiny_frame):
    from pipeline.features import write_table

    write_table(tiny_frame, tmp_path / "features.parquet", SPEC)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", FAKE_GPU_CLUSTER, str(tmp_path / "features.parquet")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**env, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["cpu"] == [0, 1.0]       # train.device cpu: no GPU asked for, none assigned
    assert out["auto"] == [1, 0.25]     # auto on a cluster with GPUs: compute.gpus_per_fold of one
    # The driver pretended to see CUDA; the worker saw none, fell back to the CPU and recorded that.
    assert out["recorded"] == {"type": "cpu", "name": "cpu", "precision": "fp32", "torch": torch.__version__}
    assert out["cuda"] == ("fold subject-1 failed: ParamsError: train.device: cuda was asked for but torch sees "
                           "no CUDA device — use auto or cpu on this machine")


def test_ray_takes_its_cpu_count_from_compute_cpus_or_its_own_detection(tmp_path):
    probe = ("import ray; from pathlib import Path; from pipeline.folds import _start_ray\n"
             "from tests.conftest import make_params\n"
             "for cpus in (1, 0):\n"
             "    assert _start_ray(make_params(compute={'cpus': cpus}), Path('.'))\n"
             "    print(int(ray.cluster_resources()['CPU']))\n"
             "    ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    declared, detected = map(int, result.stdout.split())
    assert declared == 1
    # Ray's own count honours a container's CPU limit (os.cpu_count() does not); never more than the host's.
    assert 1 <= detected <= os.cpu_count()


def test_device_resolution_and_what_is_recorded(monkeypatch):
    assert resolve_device("auto") == torch.device("cpu") and precision(torch.device("cpu")) == "fp32"
    assert device_facts(torch.device("cpu"))["name"] == "cpu"
    with pytest.raises(ParamsError, match="^train.device: cuda was asked for but torch sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"    # before cuBLAS starts: deterministic GEMMs
    # bf16 only where the GPU supports it; else fp32 and autocast stays off
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert precision(torch.device("cuda")) == "fp32" and not autocast(torch.device("cuda"))._enabled
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision(torch.device("cuda")) == "bf16"


def test_a_step_too_big_for_the_folds_gpu_share_is_refused_in_one_line(monkeypatch):
    class H200:
        name, total_memory = "NVIDIA H200", 140 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H200)
    original = make_params(model={"d_model": 512, "heads": 8, "layers": 4, "d_ff": 2048},
                           train={"batch_size": 8192}, compute={"gpus_per_fold": 0.25})   # ≈ 41 GiB
    check_device_memory(original, torch.device("cpu"), 0.25)        # CPU: MAX_TRAINING_BYTES covers it
    check_device_memory(original, torch.device("cuda"), 1.0)        # the whole GPU is enough
    with pytest.raises(ParamsError, match=r"^model, train.batch_size and cv.crop_windows: one training step needs "
                                          r"about \d+\.\d GiB, this fold's share of the NVIDIA H200 is 35\.0 GiB — "
                                          r"raise compute.gpus_per_fold \(now 0.25\)"):
        check_device_memory(original, torch.device("cuda"), 0.25)


class HostReads:
    """Counts, while active, the project's own calls (from pipeline/) that read a tensor back to the host
    or move one to a device: on a GPU each is a sync. (torch's AdamW reads its step counter, a CPU tensor,
    with .item(): no sync, and not counted.)"""

    READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.reads, self.moves = 0, 0
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name), "reads"))
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):   # a dtype conversion is no move
            if (any(isinstance(a, (torch.device, str)) for a in (*args, *kwargs.values()))
                    and str(ROOT / "pipeline") in sys._getframe(1).f_code.co_filename):
                self.moves += 1
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)

    def _counted(self, original, counter: str):
        def counted(tensor, *args, **kwargs):
            if str(ROOT / "pipeline") in sys._getframe(1).f_code.co_filename:
                setattr(self, counter, getattr(self, counter) + 1)
            return original(tensor, *args, **kwargs)
        return counted


def test_the_training_loop_reads_the_host_a_fixed_number_of_times_per_epoch(trials, monkeypatch):
    """Per epoch: the losses and the finiteness check (2), the inner validation's sums (cpu + numpy): never
    per step. The old loop copied two index arrays to the device every step."""
    params = tiny()
    data = fit_data(trials, trials.keys()[trials.subjects != 3], trials.keys()[trials.subjects == 3], "subject")
    steps = transformer.steps_per_epoch(len(data.train_index), params)
    assert steps >= 4
    counts = []
    for epochs in (1, 3):
        host = HostReads(monkeypatch)
        transformer.fit(data, params, transformer.candidates(params)[-1], seed_everything(0, (1,)),
                        torch.device("cpu"), epochs)
        counts.append((host.reads, host.moves))
        monkeypatch.undo()
    (reads_1, moves_1), (reads_3, moves_3) = counts
    assert (reads_3 - reads_1) / 2 <= 4, counts        # per extra epoch
    assert moves_3 == moves_1, counts                   # nothing is moved per epoch or step on the CPU


def test_compiled_training_compiles_once_per_batch_shape(trials, monkeypatch):
    """train.compile: the GRL coefficient is a 0-d tensor, so its change every step recompiles nothing; only
    a second batch size (the epoch's last, shorter batch) does. With a Python float (the old code), torch
    2.13 compiles once more (measured: then its automatic-dynamic makes the float an input). Dynamo with
    the eager backend (no C++ compiler needed) counts the compilations inductor would make."""
    import torch._dynamo

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend="eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    params = tiny(compile=True, epochs=2)
    data = fit_data(trials, trials.keys()[trials.subjects != 3], (), "subject")
    fitted = transformer.fit(data, params, transformer.candidates(params)[0], seed_everything(0, (1,)),
                             torch.device("cpu"), 2)
    steps = transformer.steps_per_epoch(len(data.train_index), params)
    shapes = {len(b) for b in np.array_split(np.arange(len(data.train_index) * params.train.crops_per_trial), steps)}
    assert dict(torch._dynamo.utils.counters["frames"]) == {"total": len(shapes), "ok": len(shapes)}
    assert np.isfinite([row["loss"] for row in fitted.curves]).all()
    torch._dynamo.reset()


def test_warmup_ramps_the_learning_rate_then_follows_the_cosine():
    def rates(total, warmup):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = transformer.lr_schedule(optimizer, total, warmup)
        out = []
        for _ in range(total):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return out

    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    assert isinstance(transformer.lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, 0),
                      cosine)                                     # warmup 0: today's schedule, bit for bit
    warm = rates(20, 4)
    np.testing.assert_allclose(warm[:5], [0.2, 0.4, 0.6, 0.8, 1.0])   # lr / (w + 1) up to lr in w steps
    assert all(a >= b for a, b in zip(warm[4:], warm[5:])) and warm[-1] < 0.05


def test_final_does_not_depend_on_the_seed_count_but_on_every_other_training_key():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train_keys = {f"train.{k}" for k in yaml.safe_load((ROOT / "params.yaml").read_text())["train"]}
    final = set(stages["final"]["params"])
    assert train_keys - final == {"train.seeds"}
    assert "metrics/selections" in stages["final"]["deps"] and "metrics/folds" not in stages["final"]["deps"]
    assert "train.device" in stages["plots"]["params"]          # inference on the GPU moves the figures' digits


def test_a_refit_told_to_run_past_its_schedule_still_trains(trials):
    """params.yaml changed under a running pipeline (train.epochs 60 -> 2) leaves final a chosen epoch past
    the schedule: it trains on (the ramp goes on past 1) and track then refuses its params, instead of an
    IndexError from the precomputed GRL schedule."""
    params = tiny(validation=0)
    data = fit_data(trials, trials.keys()[trials.subjects != 3], (), "subject")
    fitted = transformer.fit(data, params, transformer.candidates(params)[0], seed_everything(0, (1,)),
                             torch.device("cpu"), 3, schedule_epochs=1)
    assert len(fitted.curves) == 3 and fitted.curves[-1]["grl_alpha"] > fitted.curves[0]["grl_alpha"]
