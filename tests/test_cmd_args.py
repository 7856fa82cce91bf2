"""A1111's flags, COMMANDLINE_ARGS order and splitting, and the clear error for unknown flags."""

from __future__ import annotations

import pytest

from modules import cmd_args

A1111_FLAGS = ["--data-dir", "--ckpt", "--ckpt-dir", "--vae-dir", "--lora-dir", "--hypernetwork-dir", "--embeddings-dir",
               "--listen", "--port", "--api", "--nowebui", "--api-auth", "--gradio-auth", "--lowvram", "--medvram",
               "--xformers", "--opt-sdp-attention", "--no-half", "--no-half-vae", "--precision", "--upcast-sampling",
               "--use-cpu", "--device-id", "--skip-torch-cuda-test", "--no-download-sd-model", "--autolaunch",
               "--freeze-settings", "--demo"]


def test_every_required_flag_exists() -> None:
    known = {option for action in cmd_args.build_parser()._actions for option in action.option_strings}
    assert set(A1111_FLAGS) <= known


def test_commandline_args_come_after_the_command_line() -> None:
    argv = cmd_args.full_argv(["--port", "7000"], {"COMMANDLINE_ARGS": '--port 7001 --ckpt-dir "/my models"'})
    assert argv == ["--port", "7000", "--port", "7001", "--ckpt-dir", "/my models"]
    args = cmd_args.parse_args(argv)
    assert args.port == 7001 and args.ckpt_dir == "/my models"  # argparse: the last one wins, as in A1111


def test_values_and_defaults() -> None:
    args = cmd_args.parse_args(["--use-cpu", "SD", "Interrogate", "--precision", "full", "--device-id", "1"])
    assert args.use_cpu == ["sd", "interrogate"] and args.precision == "full" and args.device_id == "1"
    defaults = cmd_args.parse_args([])
    assert defaults.port is None and defaults.precision == "autocast" and not defaults.api


def test_windows_paths_keep_their_backslashes() -> None:
    assert cmd_args.split_commandline_args(r'--ckpt-dir D:\models --vae-dir "C:\My VAEs"', windows=True) == \
        ["--ckpt-dir", "D:\\models", "--vae-dir", "C:\\My VAEs"]
    assert cmd_args.split_commandline_args(r"--ckpt-dir D:\models", windows=False) == ["--ckpt-dir", "D:models"]


def test_unknown_flag_names_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cmd_args.parse_args(["--api", "--medvarm"])
    assert exit_info.value.code == 2
    assert "unknown command-line argument(s): --medvarm" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--medvram", "--lowvram"], ["--precision", "half", "--no-half"]])
def test_contradicting_flags(flags: list[str]) -> None:
    with pytest.raises(SystemExit):
        cmd_args.parse_args(flags)


def test_a1111_only_flags_are_accepted() -> None:
    args = cmd_args.parse_args(["--opt-split-attention", "--no-gradio-queue", "--disable-safe-unpickle"])
    assert args.opt_split_attention and args.disable_safe_unpickle
