"""Download the wheels a lent GPU machine lacks into ``.whl/``, for ``scripts/gpu_session.sh`` to install there.

Why: the lent machine (``/work/.library/device``) has PyTorch, transformers and many common packages but no
diffusers, FastAPI, pydantic, lark, ftfy or torchsde, and nothing can be fetched from it. The GPU tests and
benchmarks import those (``initialize.build_state`` builds the whole app state), so they travel as wheels in the
git-ignored ``.whl/`` folder, named in the device call's ``carry``.

Which versions: exactly the ones installed in the environment running this script (the project's venv, which
``requirements.txt`` pins and CI tests), so the GPU run uses the same libraries as every other test. Packages the
machine's image already has are carried too where our code or a carried package needs a newer one (transformers,
huggingface_hub, tokenizers, typing_extensions, ...): wheels installed with ``--target`` shadow the image's copies.

Usage (in the repository root, with the project venv active)::

    python scripts/device_wheels.py                     # CPython 3.12, manylinux x86-64: the lent machine
    python scripts/device_wheels.py --python-version 3.11 --dest /tmp/wheels311   # a local rehearsal
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger("device_wheels")

# Distribution names. Chosen by tracing which third-party modules `pytest -m gpu tests/test_gpu.py` and the three
# GPU benchmarks import, minus what the machine's image provides at a compatible version (KINDS.md's package list),
# plus each carried package's own requirements that the image lacks or has too old.
CARRY = (
    # the model stack, at our pinned versions
    "diffusers", "importlib_metadata", "transformers", "huggingface_hub", "tokenizers", "peft",
    # huggingface_hub 2's HTTP client
    "httpx2", "httpcore2", "truststore", "anyio", "idna", "click",
    # the API models that AppState builds (modules.api is imported by initialize)
    "fastapi", "starlette", "pydantic", "pydantic_core", "annotated-types", "annotated-doc", "typing-inspection",
    "typing_extensions", "opentelemetry-api", "python-multipart",
    # prompt parsing, CLIP's text clean-up, k-diffusion's Brownian noise for SDE samplers
    "lark", "ftfy", "wcwidth", "regex", "torchsde", "trampoline",
)

# pip matches manylinux tags exactly; these cover the wheels of every package above.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64")


def pinned() -> list[str]:
    """``name==version`` for each carried package, as installed here (fails loudly if one is missing)."""
    missing = [name for name in CARRY if _version(name) is None]
    if missing:
        raise SystemExit(f"not installed in this environment: {', '.join(missing)} — activate the project venv "
                         "(run `./run_tests.sh` once to create it) and try again")
    return [f"{name}=={_version(name)}" for name in CARRY]


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path(".whl"), help="where the wheels go (default .whl)")
    parser.add_argument("--python-version", default="3.12", help="the target interpreter (the machine has 3.12)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # one version of each package: two stop the install on the machine
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", args.python_version, "--implementation", "cp", "--dest", str(args.dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pinned(), check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    logger.info("%d wheels, %.1f MiB in %s (the device call's working tree is limited to 64 MiB in all)",
                len(wheels), total / 2**20, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
