"""The network benchmark runs end to end (``--quick``, tiny model) and prints our rows and diffusers' rows.

No timing is asserted: timings live in ``docs/benchmarks.md``, as ratios measured in one run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "networks.py"


def _run(*flags: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _table(stdout: str) -> list[list[str]]:
    """The markdown table's body rows as cells (header and separator dropped)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|")]
    return [row for row in rows[2:] if len(row) > 3]


@pytest.mark.slow
def test_quick_benchmark_prints_our_rows_and_diffusers_rows() -> None:
    result = _run("--quick")
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    rows = _table(result.stdout)
    assert rows, result.stdout
    by_measurement: dict[str, set[str]] = {}
    for model, measurement, side, *_ in rows:
        assert model == "tiny"
        by_measurement.setdefault(measurement.split(",")[0].split(" (")[0], set()).add(side)
    assert set(by_measurement) >= {"switch 3 ↔ 3 LoRAs rank 32", "first load", "per step"}, by_measurement
    for measurement, sides in by_measurement.items():
        assert any(side.startswith("ours") for side in sides), (measurement, sides)
        assert any(side.startswith("diffusers") for side in sides), (measurement, sides)
    # The diffusers rows carry a ratio against ours (a number, not the "—" of a baseline row).
    assert all("×" in row[6] or "%" in row[6] for row in rows if row[2].startswith("diffusers")), result.stdout
    # Like for like: the merged weights of both sides were compared (and matched, or the run would have failed).
    assert "Parity, set B merged (fresh" in result.stdout
    # The linear (A1111-default) hypernetwork is folded: its step computes exactly the FLOPs of a plain step,
    # the relu one (MLPs at every step) more.
    flops = next(line for line in result.stdout.splitlines() if "FLOPs per step" in line)
    counts = dict(re.findall(r"(no network|linear, folded|relu) ([0-9.e+-]+) GFLOP", flops))
    assert set(counts) == {"no network", "linear, folded", "relu"}, flops
    assert counts["linear, folded"] == counts["no network"] and float(counts["relu"]) > float(counts["no network"])


def test_cuda_without_cuda_fails_clearly() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the guard only applies without it")
    result = _run("--device", "cuda", timeout=300)
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr


def test_hypernetwork_flops_folded_equals_plain_step() -> None:
    """benchmarks/hypernetwork_flops.py (full-size UNet on the meta device): folded into the weights the
    hypernetwork costs no FLOPs per step; through processors, and with an activation, it costs more."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hypernetwork_flops.py"), "--size", "128"],
                            cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    per_step = {row[0]: float(row[1].replace(",", "")) for row in _table(result.stdout)}
    base = per_step["no hypernetwork"]
    assert base > 50  # GFLOP: the full-size UNet at 128², not a toy
    assert per_step["A1111 default (linear), folded into the weights"] == base
    assert per_step["A1111 default (linear), through processors"] > 1.05 * base
    assert per_step["relu (not foldable: processors)"] > 1.05 * base


def test_layered_switch_writes_each_weight_once_when_deferred() -> None:
    """benchmarks/layered_switch.py on the tiny model: both ways reach the same weights (the script checks), and
    the deferred activation writes fewer UNet parameters per switch than one reconcile per layer."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "layered_switch.py"), "--model", "tiny",
                             "--pairs", "1"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    writes = dict(re.findall(r"(deferred|per layer)\s+median .* weight writes per switch \[(\d+)\]", result.stderr))
    assert set(writes) == {"deferred", "per layer"}, result.stderr[-2000:]
    assert 0 < int(writes["deferred"]) < int(writes["per layer"])
