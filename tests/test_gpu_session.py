"""The GPU-session kit: the wheels it carries match our pins, and the runner's stages and outputs work.

The GPU stages themselves only mean something on a lent GPU; here the runner is driven in its CPU rehearsal mode
through bash, as the device tool would run it, with cheap stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import device_wheels  # noqa: E402 - the script's folder is not a package


def _requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_carried_wheels_are_the_pinned_versions() -> None:
    """Every carried package that requirements.txt pins travels at exactly that version (the GPU run then uses
    the libraries every other test uses); the core stack is among them."""
    pins = _requirement_pins()
    carried = dict(spec.split("==") for spec in device_wheels.pinned())
    carried = {name.lower().replace("_", "-"): version for name, version in carried.items()}
    assert {"diffusers", "transformers", "huggingface-hub", "tokenizers", "fastapi", "pydantic", "lark"} <= set(carried)
    for name, version in carried.items():
        if name in pins:
            assert version == pins[name], name


def _session(tmp_path: Path, *stages: str) -> subprocess.CompletedProcess:
    (tmp_path / "no-wheels").mkdir(exist_ok=True)  # this venv has the packages; .whl/ may hold another Python's
    env = dict(os.environ, OUT=str(tmp_path / "out"), REHEARSAL="1", PYTHON=sys.executable,
               WHEELS=str(tmp_path / "no-wheels"))
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_session.sh"), *stages], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_runner_keeps_each_stage_log_a_summary_and_the_benchmarks_doc(tmp_path: Path) -> None:
    result = _session(tmp_path, "env", "tests")
    out = tmp_path / "out"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert re.search(r"^env: exit 0 in \d+ s$", summary, re.M) and re.search(r"^tests: exit 0 in \d+ s$", summary, re.M)
    assert "torch" in (out / "env.log").read_text()
    assert "skipped" in (out / "tests.log").read_text()  # no CUDA here: the gpu tests say so
    assert (out / "benchmarks.md").read_bytes() == (REPO / "docs" / "benchmarks.md").read_bytes()


def test_runner_rejects_an_unknown_stage(tmp_path: Path) -> None:
    result = _session(tmp_path, "bogus")
    assert result.returncode == 2 and "unknown stage: bogus" in result.stderr
