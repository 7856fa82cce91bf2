"""Built-in extensions: packages under ``extensions-builtin/`` (A1111's folder), loaded by path.

The folder name has a hyphen and extension folders are named like A1111's (``Lora``), so they cannot be imported
by name; each one is loaded as a package called ``extensions_builtin.<folder>`` and may use relative imports.
An extension's ``extension.py`` offers ``register(state) -> ExtensionParts`` (what it adds to the app); importing
it must do nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from modules.paths import SCRIPT_DIR

logger = logging.getLogger(__name__)

BUILTIN_DIR = SCRIPT_DIR / "extensions-builtin"
PACKAGE_PREFIX = "extensions_builtin"


@dataclass
class ExtensionParts:
    """What an extension adds: API routers served even without ``--api`` (A1111 does this for LoRA), behind --api-auth."""

    public_routers: list[Any] = field(default_factory=list)


def load_package(folder: Path) -> ModuleType:
    """Import ``folder`` (which holds ``__init__.py``) as ``extensions_builtin.<folder name>``; idempotent."""
    if PACKAGE_PREFIX not in sys.modules:
        namespace = ModuleType(PACKAGE_PREFIX)
        namespace.__path__ = []  # a namespace package: only explicitly loaded children
        sys.modules[PACKAGE_PREFIX] = namespace
    name = f"{PACKAGE_PREFIX}.{folder.name}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load extension package {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def builtin_folders(root: Path = BUILTIN_DIR) -> list[Path]:
    """Extension folders in name order (each has ``__init__.py`` and ``extension.py``)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "__init__.py").is_file() and (p / "extension.py").is_file())


def register_builtin(state: Any, root: Path = BUILTIN_DIR) -> list[ExtensionParts]:
    """Load every built-in extension and let it register itself with ``state``."""
    parts = []
    for folder in builtin_folders(root):
        package = load_package(folder)
        extension = importlib.import_module(package.__name__ + ".extension")
        parts.append(extension.register(state))
        logger.info("Loaded extension: %s", folder.name)
    return parts
