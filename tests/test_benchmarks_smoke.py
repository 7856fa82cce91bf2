"""The txt2img benchmark script runs end to end (``--quick``) and prints its table. No timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "txt2img.py"


def _run(*flags: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_quick_benchmark_prints_ours_and_vanilla_rows() -> None:
    result = _run("--quick")
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    sides = {cells[2].strip() for cells in (row.split("|") for row in rows) if len(cells) > 3}
    assert {"ours", "vanilla"} <= sides, result.stdout
    # Each configuration appears once per side, and the image comparison ran (a number, not the -1 default).
    ours_rows = [row for row in rows if "| ours |" in row]
    assert ours_rows and all("| -1" not in row and "/ -1" not in row for row in ours_rows), result.stdout


def test_cuda_without_cuda_fails_clearly() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the guard only applies without it")
    result = _run("--device", "cuda", timeout=300)
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("script", "row"), [
    ("hires.py", "| 64² → 128²"),  # our hires job vs diffusers' txt2img → upscale → img2img chain
    ("img2img.py", "| 64², Euler 4 of 4 st"),  # our img2img job vs diffusers' StableDiffusionImg2ImgPipeline
    ("xyz.py", "| 4 LoRA weights × 2 CFG"),  # our X/Y/Z plot vs the same cells with diffusers' PEFT adapter
])
def test_quick_side_by_side_benchmark_compares_with_diffusers(script: str, row: str) -> None:
    """A side-by-side benchmark runs both sides, times them and compares their pictures."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith(row)]
    assert len(rows) == 1, result.stdout
    assert int(rows[0][-2]) <= 1  # the same picture: at most one uint8 level (rounding) apart
