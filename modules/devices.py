"""Where the model runs and in which precision: the one place for that policy.

A1111's rules, simplified where A1111 contradicts itself:

* CUDA when available (``--device-id N`` picks ``cuda:N``), unless ``--use-cpu all`` or ``--use-cpu sd``.
* On CUDA the UNet and text encoder are fp16 by default; ``--no-half`` or ``--precision full`` keep them in fp32
  (A1111's ``--precision full`` alone would mix fp16 weights with fp32 inputs; here it implies fp32 weights).
* The VAE follows the model unless ``--no-half-vae`` (fp32).
* ``--upcast-sampling``: fp16 weights, but the sampler's latents stay fp32 between steps.
* On the CPU everything is fp32 (fp16 matmuls are slow or missing there), with a notice in the log.

Nothing is probed at import; :func:`choose_policy` is called once by ``webui.py``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

MemoryMode = Literal["normal", "medvram", "lowvram"]


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """The device and dtypes every model load and every job uses."""

    device: torch.device
    dtype: torch.dtype  # UNet and text-encoder weights
    vae_dtype: torch.dtype
    memory_mode: MemoryMode = "normal"
    upcast_sampling: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def generator_device(self) -> torch.device:
        """Where A1111's default "GPU" random source draws noise: the model's device."""
        return self.device

    def describe(self) -> str:
        """One line for the log and /sdapi/v1/memory."""
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "CPU"
        return (f"device={self.device} ({name}) dtype={_short(self.dtype)} vae={_short(self.vae_dtype)} "
                f"memory={self.memory_mode}")


def choose_policy(args: argparse.Namespace, cuda_available: bool | None = None) -> DevicePolicy:
    """Apply the flags to what the machine has.

    Args:
        args: parsed flags (``modules.cmd_args``).
        cuda_available: override the probe (tests); ``None`` asks torch.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    use_cpu = {"all", "sd"} & set(args.use_cpu or [])
    if cuda_available and not use_cpu:
        device = torch.device(f"cuda:{int(args.device_id)}" if args.device_id is not None else "cuda")
        full = args.no_half or args.precision == "full"
        dtype = torch.float32 if full else torch.float16
        vae_dtype = torch.float32 if (full or args.no_half_vae) else torch.float16
        mode: MemoryMode = "lowvram" if args.lowvram else "medvram" if args.medvram else "normal"
        if mode != "normal":
            logger.warning("--%s is accepted but its offloading is not implemented yet: the whole model stays on "
                           "the GPU.", mode)
        if args.xformers or args.force_enable_xformers:
            logger.warning("--xformers: xformers attention is not wired in yet; PyTorch SDPA attention is used.")
        return DevicePolicy(device, dtype, vae_dtype, mode, upcast_sampling=bool(args.upcast_sampling))

    reason = "--use-cpu" if use_cpu else "CUDA is not available"
    logger.warning("Running on the CPU in fp32 (%s): generation is slow; use a CUDA GPU for real work.", reason)
    if args.lowvram or args.medvram:
        logger.warning("--lowvram/--medvram have no effect on the CPU.")
    if args.precision == "half":
        logger.warning("--precision half is ignored on the CPU: fp16 is not supported well there.")
    return DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, "normal")


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_gc() -> None:
    """Give cached GPU memory back to the driver after a model is dropped."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
