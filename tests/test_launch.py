"""The launch scripts and launcher, run for real: bash, python subprocesses, pip, throwaway venvs, wheels built here.

Nothing here touches the venv the tests run in: launcher runs use throwaway venvs under tmp_path that see this
interpreter's packages (pip, torch, pytest) through a ``.pth`` file, and pip installs only wheels built in tmp_path,
with ``PIP_NO_INDEX=1``. webui.sh runs from copies in tmp_path, because it writes next to itself (venv/, tmp/).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch.py"

#: Settings a developer may have exported; each test starts without them.
USER_VARIABLES = ("COMMANDLINE_ARGS", "TORCH_COMMAND", "REQS_FILE", "TEST_REQS_FILE", "XFORMERS_PACKAGE",
                  "LAUNCH_SCRIPT", "venv_dir", "python_cmd", "VIRTUAL_ENV", "PYTHONPATH", "SD_WEBUI_RESTART",
                  "CHROMIUM_PATH", "APT_GET", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "NO_MALLOC_TUNING")


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without the user's launch settings, offline for pip, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    env["PIP_NO_INDEX"] = "1"
    env["CHROMIUM_PATH"] = sys.executable  # "there": --run-tests never runs apt-get unless a test asks for it
    env.update(extra)
    return env


def build_wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """Write a pure-Python wheel holding ``files`` (path inside site-packages → text)."""
    dist_info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    contents[f"{dist_info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test_launch\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return wheel


def make_venv(root: Path, see: list[str]) -> Path:
    """A venv without pip of its own that also sees the folders ``see``; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_outer.pth").write_text("\n".join(see) + "\n")
    return python


@pytest.fixture()
def venv_python(tmp_path: Path) -> Path:
    """A throwaway venv that sees this interpreter's packages (torch, pip, pytest), so nothing is downloaded."""
    return make_venv(tmp_path / "venv", site.getsitepackages())


def launch(python: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), str(LAUNCH), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def can_import(python: Path, module: str) -> str | None:
    """Where ``module`` is imported from by ``python``, or None."""
    code = f"import importlib.util as u; s = u.find_spec({module!r}); print(s.origin if s else '')"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return out or None


# --- the shell and batch scripts -------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["webui.sh", "webui-user.sh", "run_tests.sh", ".ci/run"])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ["webui.bat", "webui-user.bat", "run_tests.bat"])
def test_batch_files_have_crlf_line_ends(script: str) -> None:
    """cmd.exe can miss labels (goto :launch) in LF-only batch files."""
    data = (REPO / script).read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") > 0


@pytest.fixture()
def webui_copy(tmp_path: Path) -> Path:
    """A folder holding a copy of webui.sh and a webui-user.sh that sets COMMANDLINE_ARGS."""
    folder = tmp_path / "webui dir"
    folder.mkdir()
    shutil.copy(REPO / "webui.sh", folder / "webui.sh")
    (folder / "webui-user.sh").write_text('export COMMANDLINE_ARGS="--from-user-file"\n')
    return folder


def recorder(tmp_path: Path, body: str = "") -> Path:
    """A launch script that appends what it received to runs.jsonl, then runs ``body``."""
    script = tmp_path / "record.py"
    script.write_text(
        "import json, os, sys\n"
        "info = {'argv': sys.argv[1:], 'cwd': os.getcwd(), 'prefix': sys.prefix,\n"
        "        'COMMANDLINE_ARGS': os.environ.get('COMMANDLINE_ARGS'),\n"
        "        'SD_WEBUI_RESTART': os.environ.get('SD_WEBUI_RESTART')}\n"
        f"log = {str(tmp_path / 'runs.jsonl')!r}\n"
        "with open(log, 'a') as f:\n"
        "    f.write(json.dumps(info) + '\\n')\n"
        "runs = sum(1 for _ in open(log))\n" + body)
    return script


def runs(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]


def test_webui_sh_passes_arguments_exactly(tmp_path: Path, webui_copy: Path) -> None:
    script = recorder(tmp_path, "sys.exit(7)\n")
    (webui_copy / "tmp").mkdir()
    (webui_copy / "tmp" / "restart").write_text("left over from a crash")
    args = ["a b", "", '--x="q"', "$HOME", "*", "tab\there", "-f"]
    env = clean_env(LAUNCH_SCRIPT=str(script), venv_dir="-", python_cmd=sys.executable)

    result = subprocess.run(["bash", str(webui_copy / "webui.sh"), "-f", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)

    assert result.returncode == 7, result.stderr
    [run] = runs(tmp_path)  # the stale tmp/restart did not cause a second run
    assert run["argv"] == args  # the leading -f (A1111's "allow root") is dropped, everything else is kept
    assert run["cwd"] == str(webui_copy)
    assert run["COMMANDLINE_ARGS"] == "--from-user-file"  # webui-user.sh was read
    assert run["SD_WEBUI_RESTART"] == "tmp/restart"
    assert not (webui_copy / "venv").exists()


MALLOC_PROBE = """import resource
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = bytearray(64 << 20)  # 64 MiB: far above glibc's default mmap threshold
del buffer
before = faults()
for _ in range(5):
    buffer = bytearray(64 << 20)  # zero-filled: every page is touched
    del buffer
with open('malloc.json', 'w') as f:
    json.dump({'faults': faults() - before, 'mmap': os.environ.get('MALLOC_MMAP_THRESHOLD_')}, f)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.parametrize("setting", ["default", "NO_MALLOC_TUNING", "user value"])
def test_webui_sh_keeps_freed_memory_for_reuse(tmp_path: Path, webui_copy: Path, setting: str) -> None:
    """Under webui.sh, freeing and re-allocating a big buffer costs no new page faults; without the tuning it does."""
    import resource  # Unix only, like the behaviour under test
    script = recorder(tmp_path, MALLOC_PROBE)
    extra = {"default": {}, "NO_MALLOC_TUNING": {"NO_MALLOC_TUNING": "1"},
             "user value": {"MALLOC_MMAP_THRESHOLD_": "131072"}}[setting]
    env = clean_env(LAUNCH_SCRIPT=str(script), venv_dir="-", python_cmd=sys.executable, **extra)

    result = subprocess.run(["bash", str(webui_copy / "webui.sh")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    probe = json.loads((webui_copy / "malloc.json").read_text())
    pages = 5 * (64 << 20) // resource.getpagesize()
    if setting == "default":
        assert probe["mmap"] == "4294967296"
        assert probe["faults"] < pages // 20, probe  # the freed 64 MiB was reused in place
    else:  # glibc's own behaviour (or the user's threshold): fresh zeroed pages every time
        assert probe["mmap"] == (None if setting == "NO_MALLOC_TUNING" else "131072")
        assert probe["faults"] > pages // 2, probe


def test_webui_sh_restarts_while_tmp_restart_exists(tmp_path: Path, webui_copy: Path) -> None:
    body = ("if runs < 3:\n"
            "    os.makedirs('tmp', exist_ok=True)\n"
            "    open('tmp/restart', 'w').close()\n"
            "    sys.exit(0)\n"
            "sys.exit(3)\n")
    script = recorder(tmp_path, body)
    env = clean_env(LAUNCH_SCRIPT=str(script), venv_dir="-", python_cmd=sys.executable)

    result = subprocess.run(["bash", str(webui_copy / "webui.sh"), "--port", "1"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 3, result.stderr
    assert [r["argv"] for r in runs(tmp_path)] == [["--port", "1"]] * 3
    assert result.stdout.count("restarting") == 2
    assert not (webui_copy / "tmp" / "restart").exists()


def test_webui_sh_uses_an_active_virtualenv(tmp_path: Path, webui_copy: Path) -> None:
    active = tmp_path / "active venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(active)], check=True)
    script = recorder(tmp_path)
    env = clean_env(LAUNCH_SCRIPT=str(script), VIRTUAL_ENV=str(active))

    result = subprocess.run(["bash", str(webui_copy / "webui.sh")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert runs(tmp_path)[0]["prefix"] == str(active)
    assert not (webui_copy / "venv").exists()


@pytest.mark.slow
def test_webui_sh_creates_the_venv_once(tmp_path: Path, webui_copy: Path) -> None:
    script = recorder(tmp_path)
    env = clean_env(LAUNCH_SCRIPT=str(script), venv_dir="my venv", python_cmd=sys.executable)
    venv = webui_copy / "my venv"

    first = subprocess.run(["bash", str(webui_copy / "webui.sh")], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "creating the venv" in first.stdout
    cfg_mtime = (venv / "pyvenv.cfg").stat().st_mtime_ns

    second = subprocess.run(["bash", str(webui_copy / "webui.sh")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "creating the venv" not in second.stdout
    assert (venv / "pyvenv.cfg").stat().st_mtime_ns == cfg_mtime
    assert [Path(str(r["prefix"])) for r in runs(tmp_path)] == [venv, venv]


# --- launch.py / modules/launch_utils.py -------------------------------------------------------------------------


def test_requirements_are_installed_once_per_content(tmp_path: Path, venv_python: Path) -> None:
    wheel = build_wheel(tmp_path, "tinyreq", "1.0", {"tinyreq/__init__.py": "VALUE = 1\n"})
    reqs = tmp_path / "reqs.txt"
    reqs.write_text(f"{wheel}\n")
    env = clean_env(REQS_FILE=str(reqs))
    stamp = venv_python.parent.parent / ".webui-requirements.sha256"

    first = launch(venv_python, "--exit", "--skip-torch-cuda-test", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    origin = can_import(venv_python, "tinyreq")
    assert origin is not None and origin.startswith(str(venv_python.parent.parent))
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()
    assert stamp.read_text() == f"{digest}  {reqs}\n"

    wheel.unlink()  # pip would now fail: a second launch must not run it
    second = launch(venv_python, "--exit", "--skip-torch-cuda-test", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "requirements up to date: reqs.txt" in second.stderr

    reqs.write_text(f"# changed\n{wheel}\n")  # a changed file runs pip, which fails and names its command
    third = launch(venv_python, "--exit", "--skip-torch-cuda-test", env=env, cwd=tmp_path)
    assert third.returncode == 1
    assert "installing reqs.txt failed" in third.stderr
    assert f"-m pip install -r {reqs}" in third.stderr
    assert stamp.read_text() == f"{digest}  {reqs}\n"  # a failed install is not recorded


def test_torch_command_must_start_with_pip(tmp_path: Path, venv_python: Path) -> None:
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("# nothing\n")
    env = clean_env(TORCH_COMMAND="conda install pytorch", REQS_FILE=str(reqs))

    result = launch(venv_python, "--exit", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert 'TORCH_COMMAND must start with "pip"' in result.stderr
    assert "'conda install pytorch'" in result.stderr
    assert not (venv_python.parent.parent / ".webui-requirements.sha256").exists()


def test_help_and_skip_prepare_environment_install_nothing(tmp_path: Path, venv_python: Path) -> None:
    env = clean_env(TORCH_COMMAND="conda install pytorch", REQS_FILE=str(tmp_path / "missing.txt"))

    helped = launch(venv_python, "--help", "--reinstall-torch", env=env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: launch.py")
    assert "--skip-torch-cuda-test" in helped.stdout and "--exit" in helped.stdout

    skipped = launch(venv_python, "--exit", "--skip-prepare-environment", env=env, cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr


def test_torch_command_runs_when_torch_is_missing(tmp_path: Path) -> None:
    # A venv that sees pip but not torch; TORCH_COMMAND installs a stand-in torch without CUDA.
    pip_only = tmp_path / "pip-only"
    pip_only.mkdir()
    pip_dir = Path(subprocess.run([sys.executable, "-c", "import os, pip; print(os.path.dirname(pip.__file__))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (pip_only / "pip").symlink_to(pip_dir)
    python = make_venv(tmp_path / "venv", [str(pip_only)])
    assert can_import(python, "torch") is None
    fake = build_wheel(tmp_path, "torch", "0.0.1", {"torch/__init__.py": (
        "__version__ = '0.0.1'\n"
        "class cuda:\n"
        "    @staticmethod\n"
        "    def is_available():\n"
        "        return False\n")})
    env = clean_env(TORCH_COMMAND=f"pip install {fake}")

    first = launch(python, "--exit", "--skip-install", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "installing torch (TORCH_COMMAND)" in first.stderr
    assert "CUDA is not available to torch 0.0.1" in first.stderr and "fp32" in first.stderr

    fake.unlink()
    second = launch(python, "--exit", "--skip-install", "--skip-torch-cuda-test", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "TORCH_COMMAND" not in second.stderr
    assert "CUDA" not in second.stderr  # --skip-torch-cuda-test silences the notice


def test_xformers_only_with_the_flag(tmp_path: Path, venv_python: Path) -> None:
    wheel = build_wheel(tmp_path, "xformers", "0.0.1", {"xformers/__init__.py": ""})
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("# nothing\n")
    env = clean_env(REQS_FILE=str(reqs), XFORMERS_PACKAGE=str(wheel))
    assert can_import(venv_python, "xformers") is None

    plain = launch(venv_python, "--exit", "--skip-torch-cuda-test", env=env, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    skip_install = launch(venv_python, "--exit", "--skip-torch-cuda-test", "--xformers", "--skip-install",
                          env=env, cwd=tmp_path)
    assert skip_install.returncode == 0, skip_install.stderr
    assert can_import(venv_python, "xformers") is None

    wanted = launch(venv_python, "--exit", "--skip-torch-cuda-test", env={**env, "COMMANDLINE_ARGS": "--xformers"},
                    cwd=tmp_path)
    assert wanted.returncode == 0, wanted.stderr
    assert "installing xformers" in wanted.stderr
    assert can_import(venv_python, "xformers") is not None

    wheel.unlink()
    again = launch(venv_python, "--exit", "--skip-torch-cuda-test", "--xformers", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "xformers" not in again.stderr


@pytest.mark.slow
def test_run_tests_installs_test_requirements_and_fails_on_no_tests(tmp_path: Path, venv_python: Path) -> None:
    runtime = build_wheel(tmp_path, "tinyruntime", "1.0", {"tinyruntime/__init__.py": ""})
    testing = build_wheel(tmp_path, "tinytesting", "1.0", {"tinytesting/__init__.py": "OK = True\n"})
    (tmp_path / "reqs.txt").write_text(f"{runtime}\n")
    (tmp_path / "test-reqs.txt").write_text(f"{testing}\n")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_it.py").write_text("import tinytesting, tinyruntime\n\ndef test_ok():\n    assert tinytesting.OK\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = clean_env(REQS_FILE=str(tmp_path / "reqs.txt"), TEST_REQS_FILE=str(tmp_path / "test-reqs.txt"),
                    COMMANDLINE_ARGS="--skip-torch-cuda-test")
    pytest_opts = ["-p", "no:cacheprovider"]

    passed = launch(venv_python, "--run-tests", str(suite), "--rootdir", str(suite), *pytest_opts, env=env,
                    cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "1 passed" in passed.stdout
    assert "installing test-reqs.txt" in passed.stderr

    nothing = launch(venv_python, "--run-tests", str(empty), "--rootdir", str(empty), *pytest_opts, env=env,
                     cwd=tmp_path)
    assert nothing.returncode == 5
    assert "collected no tests" in nothing.stderr
    assert "installing" not in nothing.stderr  # both files were recorded by the first run


# --- the browser for the browser tests (run_tests.sh installs Debian's chromium when it is missing) ---------------


def fake_apt(tmp_path: Path, chromium: Path, fail_on: str = "") -> tuple[Path, Path]:
    """An ``apt-get`` stand-in that records its arguments and environment; ``install`` creates ``chromium``."""
    calls = tmp_path / "apt-calls.txt"
    script = tmp_path / "fake-apt-get"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "{calls}"\n'
        f'[ "$1" = "{fail_on}" ] && exit 100\n'
        f'[ "$1" = install ] && touch "{chromium}"\n'
        "exit 0\n")
    script.chmod(0o755)
    return script, calls


def test_chromium_present_means_no_apt(tmp_path: Path) -> None:
    from modules import launch_utils

    browser = tmp_path / "chromium"
    browser.touch()
    script, calls = fake_apt(tmp_path, browser)
    assert launch_utils.ensure_chromium(browser, [str(script)], is_root=True)
    assert not calls.exists()


def test_chromium_is_installed_with_apt_as_root(tmp_path: Path) -> None:
    from modules import launch_utils

    browser = tmp_path / "chromium"
    script, calls = fake_apt(tmp_path, browser)
    assert launch_utils.ensure_chromium(browser, [str(script)], is_root=True)
    assert calls.read_text().splitlines() == ["update DEBIAN_FRONTEND=noninteractive",
                                              "install -y chromium DEBIAN_FRONTEND=noninteractive"]


def test_chromium_missing_without_root_or_with_failing_apt_is_a_warning(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    from modules import launch_utils

    browser = tmp_path / "chromium"
    script, calls = fake_apt(tmp_path, browser, fail_on="update")
    assert not launch_utils.ensure_chromium(browser, [str(script)], is_root=False)
    assert not calls.exists() and "apt-get install chromium" in caplog.text
    caplog.clear()
    assert not launch_utils.ensure_chromium(browser, [str(script)], is_root=True)
    assert calls.read_text().splitlines() == ["update DEBIAN_FRONTEND=noninteractive"]
    assert "failed" in caplog.text and not browser.exists()
    assert not launch_utils.ensure_chromium(browser, [str(tmp_path / "no-such-apt")], is_root=True)


@pytest.mark.slow
def test_run_tests_installs_chromium_when_missing(tmp_path: Path, venv_python: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_it.py").write_text("def test_ok():\n    pass\n")
    browser = tmp_path / "chromium"
    script, calls = fake_apt(tmp_path, browser)
    (tmp_path / "empty-reqs.txt").write_text("")
    env = clean_env(REQS_FILE=str(tmp_path / "empty-reqs.txt"), TEST_REQS_FILE=str(tmp_path / "empty-reqs.txt"),
                    COMMANDLINE_ARGS="--skip-torch-cuda-test", CHROMIUM_PATH=str(browser), APT_GET=str(script))
    result = launch(venv_python, "--run-tests", str(suite), "--rootdir", str(suite), "-p", "no:cacheprovider",
                    env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    if os.geteuid() == 0:
        assert browser.exists() and "install -y chromium" in calls.read_text()
    else:
        assert not calls.exists() and "apt-get install chromium" in result.stderr
    skipped = launch(venv_python, "--run-tests", str(suite), "--rootdir", str(suite), "-p", "no:cacheprovider",
                     env={**env, "COMMANDLINE_ARGS": "--skip-torch-cuda-test --skip-install",
                          "CHROMIUM_PATH": str(tmp_path / "gone")}, cwd=tmp_path)
    assert skipped.returncode == 0 and "chromium" not in skipped.stderr  # --skip-install: no apt, no warning
