"""The A1111 folder layout exists, and importing any module does nothing (no parsing, probing, scanning or I/O)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

REQUIRED = ["webui.py", "modules", "extensions-builtin", "models/Stable-diffusion", "models/Lora",
            "models/hypernetworks", "models/VAE", "embeddings", "configs", "tests", "requirements.txt", "webui.sh",
            "webui.bat", "webui-user.sh", "webui-user.bat", "README.md", ".ci/run", "launch.py", "run_tests.sh"]


def test_required_top_level_exists() -> None:
    missing = [p for p in REQUIRED if not (REPO / p).exists()]
    assert not missing


def test_every_module_imports_without_side_effects(tmp_path: Path) -> None:
    """Import all of modules/ with a bogus argv in an empty working dir: nothing may be parsed, created or loaded."""
    names = sorted("modules." + ".".join(p.relative_to(REPO / "modules").with_suffix("").parts)
                   for p in (REPO / "modules").rglob("*.py") if p.name != "__init__.py")
    code = f"""
import sys, os, threading
sys.path.insert(0, {str(REPO)!r})
sys.argv = ["webui.py", "--this-flag-does-not-exist"]
before = set(os.listdir("."))
import importlib
for name in {names!r} + ["webui"]:
    importlib.import_module(name)
assert set(os.listdir(".")) == before, "a module created files at import"
assert threading.active_count() == 1, "a module started a thread at import"
import torch
print("OK", len({names!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("OK")
    assert not list(tmp_path.iterdir())


def test_no_committed_weights_but_the_shipped_demo() -> None:
    """Generated test weights are never committed; the one exception is the trained demo model and its networks
    under models/demo/ (a few MB, each with its checksum, reproduced by scripts/train_demo_*.py)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    heavy = [f for f in tracked if f.endswith((".safetensors", ".ckpt", ".pt", ".bin", ".pth"))]
    assert [f for f in heavy if not f.startswith("models/demo/")] == []
    assert "models/demo/demo-shapes-sd15.safetensors" in heavy
    for name in heavy:
        assert f"{name}.sha256" in tracked, f"{name} is shipped without its checksum"
    assert sum((REPO / f).stat().st_size for f in heavy) < 20 * 2**20  # the 20 MB budget for the demo
