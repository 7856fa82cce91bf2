"""The device/precision policy for each flag combination (A1111's meanings), checked without a GPU."""

from __future__ import annotations

import pytest
import torch

from modules import cmd_args
from modules.devices import choose_policy


@pytest.mark.parametrize(("flags", "dtype", "vae_dtype", "mode"), [
    ([], torch.float16, torch.float16, "normal"),
    (["--no-half"], torch.float32, torch.float32, "normal"),
    (["--precision", "full"], torch.float32, torch.float32, "normal"),
    (["--no-half-vae"], torch.float16, torch.float32, "normal"),
    (["--medvram"], torch.float16, torch.float16, "medvram"),
    (["--lowvram", "--no-half-vae"], torch.float16, torch.float32, "lowvram"),
])
def test_cuda_policy(flags: list[str], dtype: torch.dtype, vae_dtype: torch.dtype, mode: str) -> None:
    policy = choose_policy(cmd_args.parse_args(flags), cuda_available=True)
    assert policy.device == torch.device("cuda")
    assert (policy.dtype, policy.vae_dtype, policy.memory_mode) == (dtype, vae_dtype, mode)


def test_device_id_and_upcast() -> None:
    policy = choose_policy(cmd_args.parse_args(["--device-id", "1", "--upcast-sampling"]), cuda_available=True)
    assert policy.device == torch.device("cuda:1") and policy.upcast_sampling and policy.dtype == torch.float16


@pytest.mark.parametrize("flags", [[], ["--use-cpu", "all"], ["--use-cpu", "sd"], ["--medvram"]])
def test_cpu_is_fp32_with_a_notice(flags: list[str], caplog: pytest.LogCaptureFixture) -> None:
    cuda = flags[:1] == ["--use-cpu"]  # --use-cpu wins even where CUDA exists
    policy = choose_policy(cmd_args.parse_args(flags), cuda_available=cuda)
    assert policy.device == torch.device("cpu") and policy.dtype == policy.vae_dtype == torch.float32
    assert policy.memory_mode == "normal"
    assert "Running on the CPU in fp32" in caplog.text


@pytest.mark.parametrize(("flags", "cuda", "backup", "compute", "keep"), [
    ([], True, None, None, True),  # normal mode: beside the weight, on the GPU; LoRA factors stay there too
    (["--medvram"], True, "cpu", "cuda", False),  # masters and originals in RAM, deltas computed on the GPU
    (["--lowvram"], True, "cpu", "cuda", False),
    (["--device-id", "1", "--lowvram"], True, "cpu", "cuda:1", False),
    ([], False, None, None, False),  # the CPU: everything where the weights are
])
def test_patch_devices_per_memory_mode(flags: list[str], cuda: bool, backup: str | None, compute: str | None,
                                       keep: bool) -> None:
    from modules.devices import patch_devices

    got = patch_devices(choose_policy(cmd_args.parse_args(flags), cuda_available=cuda))
    assert got == (None if backup is None else torch.device(backup), None if compute is None else torch.device(compute),
                   keep)
