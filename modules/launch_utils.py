"""Launch-time environment preparation: torch, requirements, xformers (A1111's ``launch_utils``, simplified).

This module imports only the standard library (and :mod:`modules.cmd_args`, which does too), because it runs
before torch and the requirements exist. Importing it does nothing.

Environment variables read (the ones A1111 users set in ``webui-user.sh`` / ``webui-user.bat``):

``TORCH_COMMAND``
    How torch is installed, run as ``python -m <TORCH_COMMAND>``, so it must start with ``pip``.
    Default: ``pip install torch==2.13.0``.
``REQS_FILE``
    Runtime requirements. Default: ``requirements.txt``. A relative path is relative to the program folder.
``TEST_REQS_FILE``
    Test requirements, installed only by ``run_tests.sh``. Default: ``requirements-test.txt``.
``XFORMERS_PACKAGE``
    What ``--xformers`` installs. Default: ``xformers==0.0.35``.
``CHROMIUM_PATH``
    The browser the browser tests drive. Default: ``/usr/bin/chromium``. When it is missing, ``run_tests.sh``
    installs Debian's ``chromium`` package with ``APT_GET`` (default ``apt-get``) if it runs as root, and
    otherwise says how to install it (the browser tests are skipped without it).

A requirements file is installed only when its sha256 differs from the one recorded after its last successful
install. The records live in ``<sys.prefix>/.webui-requirements.sha256`` (``sha256sum`` format), so they belong to
the environment they describe; deleting that file makes the next launch run pip again.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modules import cmd_args

log = logging.getLogger(__name__)

#: The program folder (the one holding launch.py, webui.sh and requirements.txt).
REPO_DIR = Path(__file__).resolve().parent.parent

DEFAULT_TORCH_COMMAND = "pip install torch==2.13.0"
DEFAULT_REQS_FILE = "requirements.txt"
DEFAULT_TEST_REQS_FILE = "requirements-test.txt"
DEFAULT_XFORMERS_PACKAGE = "xformers==0.0.35"
DEFAULT_CHROMIUM_PATH = "/usr/bin/chromium"
STAMP_FILE_NAME = ".webui-requirements.sha256"
#: The file whose presence makes webui.sh / webui.bat start the program again (A1111's ``SD_WEBUI_RESTART``).
RESTART_FILE = Path("tmp") / "restart"


class LaunchError(RuntimeError):
    """A launch step failed; the message says which one and what to do."""


@dataclass(frozen=True)
class LaunchSettings:
    """What the environment variables ask the launcher to install, validated.

    Attributes:
        python: the interpreter whose environment is prepared (``sys.executable``).
        torch_command: ``TORCH_COMMAND`` split into arguments for ``python -m``; starts with ``pip``.
        reqs_file: ``REQS_FILE`` as an absolute path.
        test_reqs_file: ``TEST_REQS_FILE`` as an absolute path.
        xformers_package: ``XFORMERS_PACKAGE`` split into pip arguments.
        stamp_file: where requirement-file hashes are recorded; None when the environment is not a venv or conda env.
    """

    python: str
    torch_command: tuple[str, ...]
    reqs_file: Path
    test_reqs_file: Path
    xformers_package: tuple[str, ...]
    stamp_file: Path | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LaunchSettings:
        """Read and validate the settings; raise :class:`LaunchError` on a malformed ``TORCH_COMMAND``."""
        environ = os.environ if environ is None else environ
        return cls(
            python=sys.executable,
            torch_command=tuple(parse_torch_command(environ.get("TORCH_COMMAND") or DEFAULT_TORCH_COMMAND)),
            reqs_file=_repo_path(environ.get("REQS_FILE") or DEFAULT_REQS_FILE),
            test_reqs_file=_repo_path(environ.get("TEST_REQS_FILE") or DEFAULT_TEST_REQS_FILE),
            xformers_package=tuple(split_command(environ.get("XFORMERS_PACKAGE") or DEFAULT_XFORMERS_PACKAGE)),
            stamp_file=default_stamp_file(),
        )


def _repo_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_DIR / path


def split_command(value: str) -> list[str]:
    """Split a command string from an environment variable (Windows back-slashes survive on Windows)."""
    return cmd_args.split_commandline_args(value)


def parse_torch_command(value: str) -> list[str]:
    """Split ``TORCH_COMMAND`` and check that it is a pip command, as A1111 requires.

    Raises:
        LaunchError: when the command is empty or does not start with ``pip``.
    """
    parts = split_command(value)
    if not parts or parts[0] != "pip":
        raise LaunchError(
            f'TORCH_COMMAND must start with "pip": it is run as "python -m <TORCH_COMMAND>". Got: {value!r}. '
            f'Example: export TORCH_COMMAND="{DEFAULT_TORCH_COMMAND}" in webui-user.sh '
            f"(set TORCH_COMMAND={DEFAULT_TORCH_COMMAND} in webui-user.bat).")
    return parts


def default_stamp_file() -> Path | None:
    """``<sys.prefix>/.webui-requirements.sha256`` inside a venv or conda env; None for a system interpreter."""
    prefix = Path(sys.prefix)
    if sys.prefix != sys.base_prefix or (prefix / "conda-meta").is_dir():
        return prefix / STAMP_FILE_NAME
    return None


def parse_launch_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the flags the launcher needs; flags it does not know are left for ``webui.main`` to judge.

    ``--help`` prints every flag and exits here, before anything is installed.
    """
    parser = cmd_args.build_parser()
    parser.prog = "launch.py"
    group = parser.add_argument_group(
        "launcher only", "launch.py --run-tests [pytest args] (as the first argument) prepares the environment with "
        "the test requirements, then runs python -m pytest; run_tests.sh uses it")
    group.add_argument("--exit", action="store_true", help="prepare the environment (installs), then exit")
    args, _unknown = parser.parse_known_args(list(argv))
    return args


def run_python_module(python: str, module_args: Sequence[str], what: str) -> None:
    """Run ``python -m <module_args>`` with its output on the console.

    Raises:
        LaunchError: naming the command when it exits with a non-zero status.
    """
    command = [python, "-m", *module_args]
    log.info("%s: %s", what, subprocess.list2cmdline(command))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise LaunchError(f"{what} failed (exit code {result.returncode}). The command was:\n"
                          f"  {subprocess.list2cmdline(command)}")


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported by this interpreter (checked without importing it)."""
    importlib.invalidate_caches()
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def torch_status() -> tuple[str, bool]:
    """Import torch in this process and return its version and whether CUDA works.

    Called after the requirements are installed (numpy must be there before torch is imported); the web UI then
    finds torch already imported.

    Raises:
        LaunchError: when torch cannot be imported.
    """
    importlib.invalidate_caches()
    try:
        import torch  # noqa: PLC0415 - torch may have been installed a moment ago
    except Exception as exc:  # noqa: BLE001 - any failure here means a broken torch install
        raise LaunchError(f"torch is installed but cannot be imported: {exc!r}\n"
                          "Launch once with --reinstall-torch, or fix TORCH_COMMAND in webui-user.sh / "
                          "webui-user.bat.") from exc
    return str(torch.__version__), bool(torch.cuda.is_available())


def file_sha256(path: Path) -> str:
    """The sha256 of the file's bytes, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_stamps(stamp_file: Path | None) -> dict[str, str]:
    """The recorded ``{requirements file path: sha256}``; empty when there is no record."""
    if stamp_file is None or not stamp_file.is_file():
        return {}
    stamps: dict[str, str] = {}
    for line in stamp_file.read_text(encoding="utf-8").splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64:
            stamps[name] = digest
    return stamps


def write_stamp(stamp_file: Path | None, reqs_file: Path, digest: str) -> None:
    """Record that ``reqs_file`` with content ``digest`` is installed; a failure to write is only logged."""
    if stamp_file is None:
        return
    stamps = read_stamps(stamp_file)
    stamps[str(reqs_file)] = digest
    text = "".join(f"{value}  {name}\n" for name, value in sorted(stamps.items()))
    tmp = stamp_file.with_name(stamp_file.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, stamp_file)
    except OSError as exc:
        log.warning("could not record the installed requirements in %s (%s); pip will run again next time",
                    stamp_file, exc)


def install_requirements(settings: LaunchSettings, reqs_file: Path, no_deps: bool = False) -> bool:
    """``pip install -r reqs_file`` unless this exact file content was installed here before.

    The hash covers the file itself, not files it includes with ``-r``. ``no_deps`` installs with ``--no-deps``
    (for packages whose declared dependencies would pull another torch, such as k-diffusion's torchvision).

    Returns:
        True when pip ran, False when the recorded hash matched and nothing was done.

    Raises:
        LaunchError: when the file is missing or pip fails (the hash is then not recorded).
    """
    if not reqs_file.is_file():
        raise LaunchError(f"requirements file not found: {reqs_file} (check REQS_FILE / TEST_REQS_FILE)")
    digest = file_sha256(reqs_file)
    if read_stamps(settings.stamp_file).get(str(reqs_file)) == digest:
        log.info("requirements up to date: %s", reqs_file.name)
        return False
    command = ["pip", "install", *(["--no-deps"] if no_deps else []), "-r", str(reqs_file)]
    run_python_module(settings.python, command, f"installing {reqs_file.name}")
    write_stamp(settings.stamp_file, reqs_file, digest)
    return True


def _ensure_torch(args: argparse.Namespace, settings: LaunchSettings) -> None:
    if args.reinstall_torch or not is_installed("torch"):
        run_python_module(settings.python, settings.torch_command, "installing torch (TORCH_COMMAND)")
        if not is_installed("torch"):
            raise LaunchError("TORCH_COMMAND finished but torch still cannot be found: check TORCH_COMMAND "
                              f"({subprocess.list2cmdline(settings.torch_command)})")


def _check_cuda(args: argparse.Namespace) -> None:
    if args.skip_torch_cuda_test:
        return
    version, cuda = torch_status()
    if cuda:
        log.info("torch %s with CUDA", version)
        return
    log.warning(
        "CUDA is not available to torch %s: the web UI will run on the CPU in fp32, which is slow. "
        "With an NVIDIA GPU, install a CUDA build of torch: set TORCH_COMMAND in webui-user.sh / webui-user.bat "
        "(on Windows, PyPI's torch is CPU-only: add PyTorch's CUDA index URL) and launch once with "
        "--reinstall-torch. Add --skip-torch-cuda-test to COMMANDLINE_ARGS to hide this notice.", version)


def _ensure_xformers(args: argparse.Namespace, settings: LaunchSettings) -> None:
    if args.reinstall_xformers:
        run_python_module(settings.python, ["pip", "install", "--force-reinstall", "--no-deps",
                                            *settings.xformers_package], "reinstalling xformers")
    elif not is_installed("xformers"):
        run_python_module(settings.python, ["pip", "install", *settings.xformers_package], "installing xformers")


def prepare_environment(args: argparse.Namespace, test: bool = False,
                        environ: Mapping[str, str] | None = None) -> None:
    """Install what the web UI needs into this interpreter's environment, doing no pip work when nothing changed.

    Steps: torch (``TORCH_COMMAND``, only if missing or ``--reinstall-torch``), ``REQS_FILE`` (and
    ``TEST_REQS_FILE`` when ``test``), xformers with ``--xformers``, then a notice when CUDA is unavailable
    (``--skip-torch-cuda-test`` hides it; it is checked last because it imports torch, which must come after numpy).
    ``--skip-install`` skips the requirements and xformers; ``--skip-prepare-environment`` skips everything.

    Args:
        args: flags from :func:`parse_launch_args`.
        test: also install the test requirements.
        environ: the environment variables to read (default ``os.environ``).

    Raises:
        LaunchError: a step failed; its message names the failing command.
    """
    if args.skip_prepare_environment:
        log.info("--skip-prepare-environment: nothing is installed")
        return
    settings = LaunchSettings.from_environ(environ)
    _ensure_torch(args, settings)
    if args.skip_install:
        log.info("--skip-install: requirements are not checked")
    else:
        install_requirements(settings, settings.reqs_file)
        if test:
            install_requirements(settings, settings.test_reqs_file)
            no_deps_file = settings.test_reqs_file.with_name(settings.test_reqs_file.stem + "-nodeps.txt")
            if no_deps_file.is_file():
                install_requirements(settings, no_deps_file, no_deps=True)
            environ = os.environ if environ is None else environ
            ensure_chromium(Path(environ.get("CHROMIUM_PATH") or DEFAULT_CHROMIUM_PATH),
                            split_command(environ.get("APT_GET") or "apt-get"))
        if args.xformers:
            _ensure_xformers(args, settings)
    _check_cuda(args)


def ensure_chromium(chromium: Path, apt_get: Sequence[str] = ("apt-get",), is_root: bool | None = None) -> bool:
    """Install Debian's ``chromium`` for the browser tests when ``chromium`` is missing; returns whether it exists.

    Only as root (``apt-get`` needs it) and only where ``apt_get`` is found; otherwise, or when apt fails, a
    warning says how to install it and the browser tests skip themselves. Playwright never downloads a browser.
    """
    if chromium.exists():
        return True
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    how = "install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH; browser tests are skipped"
    if not is_root or shutil.which(apt_get[0]) is None:
        log.warning("%s not found: %s", chromium, how)
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update"], ["install", "-y", "chromium"]):
        command = [*apt_get, *step]
        log.info("installing chromium for the browser tests: %s", subprocess.list2cmdline(command))
        if subprocess.run(command, env=env, check=False).returncode != 0:
            log.warning("%s failed: %s", subprocess.list2cmdline(command), how)
            return False
    return chromium.exists()


def run_tests(pytest_args: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Prepare the environment with the test requirements, then run ``python -m pytest <pytest_args>``.

    Launch flags (``--skip-install``, ``--xformers``, ...) come from ``COMMANDLINE_ARGS``, as for the web UI.

    Returns:
        pytest's exit code, unchanged (5, "no tests collected", is a failure too), or 1 when preparation failed.
    """
    environ = os.environ if environ is None else environ
    args = parse_launch_args(cmd_args.full_argv([], environ))
    try:
        prepare_environment(args, test=True, environ=environ)
    except LaunchError as exc:
        log.error("%s", exc)
        return 1
    env = dict(environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    command = [sys.executable, "-m", "pytest", *pytest_args]
    log.info("running: %s", subprocess.list2cmdline(command))
    code = subprocess.run(command, cwd=REPO_DIR, env=env, check=False).returncode
    if code == 5:
        log.error("pytest collected no tests (exit code 5): counted as a failure")
    restart = REPO_DIR / RESTART_FILE
    if restart.exists():
        log.warning("a test left %s behind; removed so that the launcher does not run the tests again", restart)
        restart.unlink()
    return code
