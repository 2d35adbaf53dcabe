"""The GPU benchmark scripts run on the CPU in their smoke mode (tiny shapes, Triton's interpreter),
and the GPU runner lists its steps in the order of priority: none of them is dead code where no GPU
is lent. Their figures mean nothing here; that they are produced, row by row, is what is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("TRITON_INTERPRET") and
                                                    not __import__("torch").cuda.is_available(),
                                                    reason="needs a GPU or TRITON_INTERPRET=1")]


def _run(*command: str, env: dict | None = None) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_kernel_benchmark_smoke_writes_a_row_per_op_and_implementation(tmp_path):
    out = tmp_path / "kernels.md"
    _run(sys.executable, str(HERE / "bench_kernels.py"), "--smoke", "--out", str(out))
    rows = _rows(out)
    assert {(r[0], r[2]) for r in rows} == {(op, impl) for op in ("linear_cross_entropy", "bias_gelu",
                                                                   "residual_layer_norm")
                                            for impl in ("reference", "triton")}
    assert all(float(r[3].replace(",", "")) > 0 for r in rows) and {r[4] for r in rows if r[2] == "reference"} == {"1.00x"}


def test_throughput_benchmark_smoke_trains_every_variant_under_zero3(tmp_path):
    out = tmp_path / "throughput.md"
    _run(sys.executable, str(HERE / "bench_throughput.py"), "--smoke", "--out", str(out))
    rows = _rows(out)
    assert [r[3] for r in rows] == ["reference", "triton", "triton+varlen"]
    assert all(float(r[4].replace(",", "")) > 0 for r in rows)  # tokens/s


def test_gpu_runner_orders_its_steps_by_priority(tmp_path):
    results = tmp_path / "gpu.md"
    _run("bash", str(HERE / "run_gpu.sh"), "--dry-run", env={"RESULTS": str(results), "PYTHON": sys.executable})
    steps = re.findall(r"START (.+?) \(limit", results.read_text())
    assert steps[:3] == ["gpu tests", "MFU large@512", "kernels vs reference"]
    assert steps[-1] == "kernels vs torch.compile"
