"""k-diffusion's ``sampling`` and ``external`` modules, loaded without the package ``__init__``: the tests' reference.

Why this exists: A1111 samples with Katherine Crowson's k-diffusion (``k_diffusion.sampling.sample_*`` over
``k_diffusion.external.CompVisDenoiser``), so the PyPI ``k-diffusion`` package is an independent implementation
of the arithmetic our diffusers schedulers must reproduce. Its package ``__init__`` imports the training code
(``augmentation``, ``evaluation``, ``models``...), which needs torchvision, kornia, clip, wandb and more. None of
that is needed for sampling, and the wheel is installed with ``--no-deps`` so that nothing replaces our torch::

    pip install --no-deps k-diffusion==0.1.1.post1 torchdiffeq==0.2.5

(``sampling.py`` itself needs only scipy, torchsde, torchdiffeq and tqdm.) This module finds the installed
files and imports ``utils.py``, ``sampling.py`` and ``external.py`` as submodules of a synthetic package
``_kdiffusion_ref`` whose ``__path__`` is the real package folder, so their relative imports resolve and the
real ``__init__`` never runs. ``utils.py`` imports ``torchvision.transforms.functional`` at module level (for
its PIL helpers, which sampling never calls); when torchvision is missing a stub stands in for that one import
and is removed from ``sys.modules`` again afterwards, so no other code can see it.

Tested with k-diffusion 0.1.1.post1 (``VERSION``). A1111 clones k-diffusion from git at a pinned commit
(``ab527a9a``, June 2023) instead of installing it from PyPI. The sampler functions compared here are believed to
be the same there, but nobody has checked them line by line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

PACKAGE = "_kdiffusion_ref"
VERSION = "0.1.1.post1"
INSTALL = "pip install --no-deps k-diffusion==0.1.1.post1 torchdiffeq==0.2.5"


def installed_version() -> str | None:
    """The installed k-diffusion distribution's version, or None."""
    try:
        return importlib.metadata.version("k-diffusion")
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir() -> Path:
    spec = importlib.util.find_spec("k_diffusion")  # locates the folder; does not execute __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k-diffusion is not installed; install the reference with: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def _torchvision_stub() -> dict[str, types.ModuleType]:
    """Modules that satisfy ``from torchvision.transforms import functional as TF`` (never called)."""
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    root.transforms = transforms
    transforms.functional = functional
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """``(sampling, external)`` of the installed k-diffusion; cached after the first call.

    Raises:
        ImportError: k-diffusion (or torchsde/torchdiffeq/scipy) is not installed.
    """
    if f"{PACKAGE}.external" in sys.modules:
        return sys.modules[f"{PACKAGE}.sampling"], sys.modules[f"{PACKAGE}.external"]
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(_package_dir())]
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package
    stubbed: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("torchvision") is None:
        stubbed = _torchvision_stub()
        for name, module in stubbed.items():
            sys.modules.setdefault(name, module)
    try:
        importlib.import_module(f"{PACKAGE}.utils")
        sampling = importlib.import_module(f"{PACKAGE}.sampling")
        external = importlib.import_module(f"{PACKAGE}.external")
    except BaseException:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        raise
    finally:
        for name, module in stubbed.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return sampling, external
