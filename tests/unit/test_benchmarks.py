"""The benchmark scripts run (on a tiny config, so they cannot rot); their timings are not checked."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_step_benchmark_runs_and_both_paths_start_from_the_same_loss():
    result = subprocess.run([sys.executable, "benchmarks/step.py", "--steps", "2", "--original-steps", "1",
                             "--warmup", "1", "--subjects", "2", "--repeats", "2", "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("(b)/(a) = ") == 2 and result.stdout.count("(agree, tolerance 0.0)") == 2, result.stdout
    for path in ("reference", "project"):
        assert result.stdout.count(f"  {path} ") == 2


def test_memory_benchmark_runs_and_prints_the_estimate_beside_the_measurement():
    result = subprocess.run([sys.executable, "benchmarks/memory.py", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    row = result.stdout.splitlines()[-1].split()
    estimate, measured, ratio = float(row[-3]), float(row[-2]), float(row[-1])
    assert estimate > 0 and measured > 0 and abs(ratio - measured / estimate) < 0.05 * ratio, result.stdout
