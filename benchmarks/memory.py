"""Measure one training step's peak memory beside ``pipeline.params.training_bytes``, the estimate that
params validation refuses over ``MAX_TRAINING_BYTES``, so that the estimate's error is a measured number.

    python benchmarks/memory.py              # five configs around the default and the original's size
    python benchmarks/memory.py --quick      # one small config

Each config runs in its own fresh process (CPU, float32, one thread): a forward and backward pass of the
model on one batch of random SEED-V-shaped input, and one AdamW step; the peak is the growth of peak RSS
over the process's RSS before the step. Run on demand; no test asserts on its numbers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (train.batch_size, model overrides, cv overrides)
CONFIGS = [
    (4096, dict(d_model=64, d_ff=128), dict(crop_windows=12)),
    (8192, dict(d_model=64, d_ff=128), dict(crop_windows=12)),
    (1024, dict(d_model=256, d_ff=1024), dict(crop_windows=12)),
    (256, dict(d_model=64, d_ff=128), dict(input="trial")),
    (64, dict(d_model=512, heads=8, layers=4, d_ff=2048), dict(crop_windows=12)),   # the original's size
]
QUICK = [(64, dict(d_model=16, heads=2, layers=1, d_ff=32), dict(crop_windows=4))]


def measure(batch: int, model: dict, cv: dict) -> tuple[int, int]:
    """(estimated bytes, measured peak bytes) of one training step."""
    import torch

    from pipeline.datasets.seedv import N_EEG, N_EYE, SPEC, TRIAL_WINDOWS
    from pipeline.models.transformer import CrossModalTransformer
    from pipeline.params import training_bytes
    from tests.conftest import make_params

    torch.manual_seed(0)
    torch.set_num_threads(1)
    params = make_params(model=model, cv=cv, train={"batch_size": batch})
    length = params.cv.crop_windows if params.cv.input == "crop" else max(TRIAL_WINDOWS)
    net = CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, n_domains=14).train()
    optimizer = torch.optim.AdamW(net.parameters())
    eeg, eye = torch.randn(batch, length, N_EEG), torch.randn(batch, length, N_EYE)
    valid = torch.ones(batch, length, dtype=torch.bool)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = net(eeg, eye, valid, grl_alpha=0.5)
    (out.logits.logsumexp(-1).mean() + out.domain_logits.logsumexp(-1).mean()).backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return training_bytes(params), (peak - before) * 1024 + eeg.nbytes + eye.nbytes   # inputs made before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small config (a smoke run)")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    print(f"{'batch':>6} {'model':<40} {'cv':<22} {'estimate MiB':>12} {'measured MiB':>12} {'measured/estimate':>17}")
    for batch, model, cv in QUICK if args.quick else CONFIGS:
        with context.Pool(1) as pool:
            estimate, measured = pool.apply(measure, (batch, model, cv))
        print(f"{batch:>6} {str(model):<40} {str(cv):<22} {estimate / 2**20:>12.1f} {measured / 2**20:>12.1f} "
              f"{measured / estimate:>17.2f}")


if __name__ == "__main__":
    main()
