"""The GPU path checked in one go (about 6-8 minutes on one modern GPU); what a person with a GPU runs first:

    .venv/bin/python benchmarks/gpu_check.py

1. the CUDA tests (``tests/unit/test_cuda.py``: no host sync in an epoch of steps or a validation pass, a
   bit-identical rerun, the fp32 fallback without bf16) and the device tests (``tests/unit/test_device.py``);
2. the step benchmark (``benchmarks/step.py``) at the default and the original's size: steps/s, model FLOP
   per step and MFU;
3. two LOSO folds (subjects 1 and 2, default params, embedded synthetic data) trained on the GPU twice and
   on the CPU once: the GPU rerun must be bit-identical (same GPU, same software); GPU vs CPU must agree
   within GPU_CPU_TOLERANCE in each fold's trial accuracy (bf16 autocast and other kernels train another
   model: the tolerance is of the size of a fold's seed-to-seed spread, a guess until measured on a GPU).

Prints one summary table; the parts that need a GPU say so on a machine without one (the CPU parts still
run). Exit status 0 when every part that ran passed.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GPU_CPU_TOLERANCE = 0.10   # |Δ trial accuracy| per fold, GPU (bf16) vs CPU (fp32)
FEATURES = ROOT / "data/processed/features.parquet"


def run(command: list[str], timeout: int) -> tuple[bool, str]:
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s"
    print(result.stdout[-4000:], result.stderr[-2000:] if result.returncode else "", sep="\n", flush=True)
    tail = (result.stdout.strip().splitlines() or [""])[-1]
    return result.returncode == 0, f"{tail} ({time.monotonic() - started:.0f} s)"


def two_folds(cuda: bool) -> list[tuple[str, str, bool | None, str]]:
    import torch

    from pipeline.datasets.seedv import SPEC
    from pipeline.features import read_table
    from pipeline.folds import train_one
    from pipeline.params import load
    from pipeline.sequences import Trials
    from pipeline.splits import make_folds

    if not FEATURES.is_file():
        return [("2-fold LOSO", "-", None, f"no {FEATURES.relative_to(ROOT)}: run `dvc repro normalize` first")]
    params = load(ROOT / "params.yaml")
    trials = Trials.from_frame(read_table(FEATURES, SPEC), SPEC)
    folds = [f for f in make_folds(SPEC, params) if f.subject in (1, 2)]

    def study(device: str):
        p = dataclasses.replace(params, train=dataclasses.replace(params.train, device=device))
        start = time.monotonic()
        outputs = [train_one(trials, fold, p) for fold in folds]
        return outputs, time.monotonic() - start

    cpu, cpu_s = study("cpu")
    rows = [("2-fold LOSO, CPU", "cpu", True, f"trial acc {[round(o.metrics['trial']['accuracy'], 3) for o in cpu]}, "
                                              f"{cpu_s:.0f} s")]
    if not cuda:
        return rows + [("2-fold LOSO, GPU rerun + GPU vs CPU", "-", None, "needs a GPU")]
    gpu, gpu_s = study("cuda")
    again, _ = study("cuda")
    same = all(a.result.predictions.equals(b.result.predictions) and all(
        torch.equal(v, b.result.model.state_dict()[k]) for k, v in a.result.model.state_dict().items())
        for a, b in zip(gpu, again))
    gaps = [abs(g.metrics["trial"]["accuracy"] - c.metrics["trial"]["accuracy"]) for g, c in zip(gpu, cpu)]
    drift = max(float((g.result.predictions[SPEC.probability_columns] - c.result.predictions[SPEC.probability_columns])
                      .abs().to_numpy().max()) for g, c in zip(gpu, cpu))
    name = gpu[0].result.device["name"]
    return rows + [
        ("2-fold LOSO, GPU", name, True, f"trial acc {[round(o.metrics['trial']['accuracy'], 3) for o in gpu]}, "
                                         f"{gpu_s:.0f} s ({cpu_s / gpu_s:.1f}x the CPU), {gpu[0].result.device['precision']}"),
        ("GPU rerun bit-identical", name, same, "predictions and weights" + ("" if same else " DIFFER")),
        ("GPU vs CPU trial accuracy", name, max(gaps) <= GPU_CPU_TOLERANCE,
         f"max |Δ| {max(gaps):.3f} (tolerance {GPU_CPU_TOLERANCE}); max |Δ window probability| {drift:.3f}"),
    ]


def main() -> int:
    import torch

    cuda = torch.cuda.is_available()
    rows = []
    ok, note = run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/unit/test_cuda.py",
                    "tests/unit/test_device.py"], timeout=600)
    rows.append(("CUDA + device tests", "gpu" if cuda else "cpu (CUDA tests skipped: need a GPU)", ok, note))
    bench = [sys.executable, "benchmarks/step.py", "--repeats", "1"] + (
        [] if cuda else ["--steps", "5", "--original-steps", "1", "--subjects", "2"])
    ok, note = run(bench, timeout=900)
    rows.append(("step benchmark, default + original size", "gpu" if cuda else "cpu (quick look; MFU needs a GPU)",
                 ok, "see its table above"))
    rows += two_folds(cuda)

    width = max(len(r[0]) for r in rows)
    device_width = max(len(r[1]) for r in rows)
    print(f"\n{'check':{width}s}  {'device':{device_width}s}  result  detail")
    for check, device, passed, detail in rows:
        verdict = "skip" if passed is None else "ok" if passed else "FAIL"
        print(f"{check:{width}s}  {device:{device_width}s}  {verdict:6s}  {detail}")
    return 0 if all(r[2] in (True, None) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
