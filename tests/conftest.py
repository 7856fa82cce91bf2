"""Shared fixtures: an offline environment and tiny SD1.5-layout checkpoints in the real file formats.

Everything is generated on the fly (nothing is downloaded, no weights are committed). The tiny model is built
by ``modules.demo_model``, the same generator the launcher uses for its demo, and saved as a single-file LDM
checkpoint with its sidecar ``.yaml`` — so tests load it through the same code as a real SD1.5 file.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# The tiny test model is ~50x faster on one thread than on two when another process (a webui.py server started by
# a test, a second pytest) competes for the cores: OpenMP's spinning threads then wait on each other. Set before
# torch is imported anywhere; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The browser test modules import helpers from browser_support and load it as their fixtures' plugin.
pytest.register_assert_rewrite("browser_support")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need CUDA; where there is none they are skipped with that reason (never silently passed)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as ``tiny.safetensors`` + ``tiny.yaml`` (written once per session; copy before changing)."""
    from modules import demo_model

    return demo_model.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_checkpoint_ckpt(tiny_checkpoint: Path) -> Path:
    """The same weights as a pickled ``.ckpt`` (``{"state_dict": ...}``, like the original SD releases)."""
    from modules import demo_model

    return demo_model.write_checkpoint(tiny_checkpoint.parent.parent / "ckpt_pickle" / "tiny.ckpt")


def install_checkpoint(source: Path, folder: Path, name: str | None = None) -> Path:
    """Copy a checkpoint and its sidecar ``.yaml`` into ``folder`` (optionally renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or source.name)
    shutil.copyfile(source, target)
    sidecar = source.with_suffix(".yaml")
    if sidecar.exists():
        shutil.copyfile(sidecar, target.with_suffix(".yaml"))
    return target


@pytest.fixture
def make_state(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Callable[..., object]]:
    """Build an :class:`AppState` over a fresh data dir holding the tiny checkpoint (as webui.py would).

    Call it with extra command-line flags; ``install=False`` leaves the checkpoint folder empty.
    """
    from modules import cmd_args, initialize

    states = []

    def build(*flags: str, install: bool = True, load: bool = True):
        data = tmp_path / "data"
        if install:
            install_checkpoint(tiny_checkpoint, data / "models" / "Stable-diffusion")
        args = cmd_args.parse_args(["--data-dir", str(data), *flags])
        state = initialize.build_state(args)
        if install and load:
            info = state.models.checkpoints[0]
            state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False)
            state.models.load(info)
        states.append(state)
        return state

    yield build
    for state in states:
        state.queue.shutdown()


def load_lora_package():
    """The built-in LoRA extension package (its folder name cannot be imported by name)."""
    from modules.extensions import BUILTIN_DIR, load_package

    return load_package(BUILTIN_DIR / "Lora")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_and_interrupt_after_first_batch(state, run, plan) -> object:
    """Submit a script's ``run(state, plan)`` to the queue, interrupt it once its first batch is done (as the page's
    Interrupt would), and return its result."""
    import threading
    import time

    _, future = state.queue.submit(run, state, plan)

    def interrupt() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and state.job.job_no < 1:
            time.sleep(0.005)
        state.job.interrupt()

    threading.Thread(target=interrupt).start()
    return future.result(timeout=120)
