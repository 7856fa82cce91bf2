#!/usr/bin/env bash
# Start the web UI on Linux/macOS, as AUTOMATIC1111's webui.sh does:
#   1. read the user's settings from webui-user.sh (next to this script);
#   2. create ./venv on the first run (venv_dir="-": no venv; an already active VIRTUAL_ENV is used as it is);
#   3. run "$python_cmd" -u launch.py "$@" from this folder, again each time the program leaves tmp/restart behind.
# launch.py installs torch (TORCH_COMMAND) and the requirements when needed, then starts the UI.
# The exit status is the launcher's. run_tests.sh runs this same script with --run-tests.

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

if [[ -f "$script_dir/webui-user.sh" ]]; then
    # shellcheck source=webui-user.sh
    source "$script_dir/webui-user.sh"
fi

# A1111 needs -f to run as root; here root only gets a warning, so a leading -f is accepted and dropped.
while [[ "${1:-}" == "-f" ]]; do
    shift
done
if [[ $(id -u) -eq 0 ]]; then
    echo "webui.sh: warning: running as root; a normal user account is safer." >&2
fi

# glibc's malloc gives every large buffer back to the kernel when it is freed and gets it again, as fresh zeroed
# pages, on the next UNet step: on the CPU that page-fault work could be half of a full-size SD1.5 step
# (benchmarks/merged_step.py, docs/benchmarks.md). Keeping freed memory in the process for reuse removes it; A1111
# preloads tcmalloc for the same reason. A value you set yourself (e.g. in webui-user.sh) wins; NO_MALLOC_TUNING=1
# keeps glibc's defaults.
if [[ "$(uname -s)" == "Linux" && -z "${NO_MALLOC_TUNING:-}" ]]; then
    export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-4294967296}"
    export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-4294967296}"
fi

python_cmd="${python_cmd:-python3}"
venv_dir="${venv_dir:-venv}"
LAUNCH_SCRIPT="${LAUNCH_SCRIPT:-launch.py}"
export SD_WEBUI_RESTART="tmp/restart"

cd "$script_dir" || exit 1

if ! command -v "$python_cmd" >/dev/null 2>&1; then
    echo "webui.sh: error: python not found: '$python_cmd'. Install Python 3.11, or set python_cmd in webui-user.sh." >&2
    exit 1
fi

if [[ "$venv_dir" == "-" ]]; then
    echo "webui.sh: running without a venv (venv_dir=-), with $python_cmd"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    echo "webui.sh: using the active venv $VIRTUAL_ENV"
    if [[ -x "$VIRTUAL_ENV/bin/python" ]]; then
        python_cmd="$VIRTUAL_ENV/bin/python"
    fi
else
    if [[ ! -x "$venv_dir/bin/python" ]]; then
        echo "webui.sh: creating the venv $venv_dir with $python_cmd"
        if ! "$python_cmd" -m venv "$venv_dir"; then
            echo "webui.sh: error: could not create the venv '$venv_dir'." >&2
            echo "  On Debian/Ubuntu install the venv module first: sudo apt install python3-venv" >&2
            exit 1
        fi
        if ! "$venv_dir/bin/python" -m pip install --upgrade pip; then
            echo "webui.sh: warning: could not upgrade pip in the new venv; going on with the bundled pip." >&2
        fi
    fi
    # shellcheck disable=SC1091
    source "$venv_dir/bin/activate" || exit 1
    python_cmd="$venv_dir/bin/python"
fi

while true; do
    rm -f tmp/restart
    "$python_cmd" -u "$LAUNCH_SCRIPT" "$@"
    status=$?
    if [[ ! -f tmp/restart ]]; then
        exit "$status"
    fi
    echo "webui.sh: restarting"
done
