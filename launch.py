"""Start the web UI the A1111 way: prepare the environment, then run ``webui.main``.

``webui.sh`` / ``webui.bat`` run this file inside the venv:

    python launch.py [flags]                  install what is missing (torch, requirements, xformers), start the UI
    python launch.py --exit [flags]           install what is missing, then exit
    python launch.py --help                   list the flags (installs nothing)
    python launch.py --run-tests [pytest args]
                                              install what is missing plus the test requirements, then run
                                              ``python -m pytest [pytest args]`` (used by run_tests.sh; must be first)

Flags come from the command line followed by ``COMMANDLINE_ARGS``, as in A1111. Until torch is installed only the
standard library is imported.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from modules import cmd_args, launch_utils

log = logging.getLogger("launch")

RUN_TESTS_FLAG = "--run-tests"


def configure_logging(level: str | None) -> None:
    """Send log records to the console unless the root logger is already configured."""
    numeric = logging.getLevelName((level or "INFO").upper())
    logging.basicConfig(level=numeric if isinstance(numeric, int) else logging.INFO,
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the launcher.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``); ``COMMANDLINE_ARGS`` is appended.

    Returns:
        The process exit code.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [RUN_TESTS_FLAG]:
        configure_logging(None)
        return launch_utils.run_tests(raw[1:])
    full = cmd_args.full_argv(raw)
    args = launch_utils.parse_launch_args(full)
    configure_logging(args.loglevel)
    try:
        launch_utils.prepare_environment(args)
    except launch_utils.LaunchError as exc:
        log.error("%s", exc)
        return 1
    if args.exit:
        log.info("--exit: environment ready, not starting the web UI")
        return 0
    import webui  # noqa: PLC0415 - only after the requirements are installed

    return webui.main(full)


if __name__ == "__main__":
    sys.exit(main())
