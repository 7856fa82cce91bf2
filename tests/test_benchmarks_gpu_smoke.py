"""benchmarks/gpu.py runs its whole code path on the CPU (no timing assertions), and refuses CUDA runs without CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow


def test_cpu_run_prints_every_row() -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--model", "tiny", "--size", "64",
                           "--steps", "2", "--batches", "1", "--repeats", "1", "--no-compile"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in ("| vanilla diffusers | 1 |", "| ours, default | 1 |", "| ours, --medvram | 1 |", "| ours, --lowvram | 1 |"):
        assert row in done.stdout
    for mode in ("normal", "medvram", "lowvram"):  # the LoRA switch table (activation errors would raise)
        assert f"| {mode} | " in done.stdout.split("LoRA switch")[-1], mode


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_run_without_cuda_says_so() -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "needs CUDA" in done.stderr
