#!/usr/bin/env bash
# Run the test suite in exactly the environment of the web UI:  ./run_tests.sh [pytest arguments]
# It runs webui.sh (same webui-user.sh settings, same venv) with "launch.py --run-tests", which installs torch,
# requirements.txt and requirements-test.txt when needed and then runs "python -m pytest [pytest arguments]".
# The exit status is pytest's; "no tests collected" (5) is a failure too.
script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$script_dir/webui.sh" --run-tests "$@"
