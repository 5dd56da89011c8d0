"""benchmarks/gpu/bench_gpu.py --cpu-smoke: the GPU check script's stages, end to end on CPU.

The script only meets a GPU when one is lent; this keeps its code path (environment
report, the gpu-marked tests, a throughput run through the trainer's entry point, the
results files) working in between.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.trainer.helpers import PYTHON, REPO

SCRIPT = REPO / "benchmarks" / "gpu" / "bench_gpu.py"


def test_cpu_smoke_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [PYTHON, str(SCRIPT), "--cpu-smoke", "--out", str(out), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "cpu-smoke"
    assert "torch" in results["environment"]["packages"]
    tests = results["gpu_tests"]
    # every gpu-marked module was collected (and, on CPU, skipped rather than failed)
    assert {"tests/trainer/test_gpu.py", "tests/trainer/test_methods.py"} <= set(tests["files"])
    assert tests["counts"]["failed"] == 0 and tests["counts"]["skipped"] >= 5, tests
    throughput = results["throughput"]
    assert throughput["returncode"] == 0, throughput.get("stderr_tail")
    assert throughput["steps_timed"] == throughput["model"]["steps"] - throughput["model"]["warmup"]
    assert throughput["tokens_per_second"] > 0
    assert throughput["flops_per_token"] > 6 * throughput["model"]["matmul_parameters"]
    assert throughput["mfu"] is None  # no peak is known for a CPU
    assert "| tokens/s |" in (out / "RESULTS.md").read_text()
