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
from typing import Literal, NamedTuple

import torch

logger = logging.getLogger(__name__)

MemoryMode = Literal["normal", "medvram", "lowvram"]
Attention = Literal["sdpa", "xformers", "sliced"]


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """The device and dtypes every model load and every job uses."""

    device: torch.device
    dtype: torch.dtype  # UNet and text-encoder weights
    vae_dtype: torch.dtype
    memory_mode: MemoryMode = "normal"
    upcast_sampling: bool = False
    attention: Attention = "sdpa"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"  # tests use "aot_eager": same graph capture and guards, no C++ codegen

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
                f"memory={self.memory_mode} attention={self.attention}"
                + (" channels-last" if self.channels_last else "") + (" compiled" if self.compile else ""))


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
        compile_ = bool(args.opt_compile)
        if compile_ and mode != "normal":
            logger.warning("--opt-compile is ignored with --%s: the offloading hooks break the compiled graph.", mode)
            compile_ = False
        return DevicePolicy(device, dtype, vae_dtype, mode, upcast_sampling=bool(args.upcast_sampling),
                            attention=choose_attention(args), channels_last=bool(args.opt_channelslast),
                            compile=compile_)

    reason = "--use-cpu" if use_cpu else "CUDA is not available"
    logger.warning("Running on the CPU in fp32 (%s): generation is slow; use a CUDA GPU for real work.", reason)
    if args.lowvram or args.medvram:
        logger.warning("--lowvram/--medvram have no effect on the CPU.")
    if args.precision == "half":
        logger.warning("--precision half is ignored on the CPU: fp16 is not supported well there.")
    return DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, "normal")


class PatchPlacement(NamedTuple):
    """Where network patching keeps things (see :class:`modules.patching.WeightPatcher`)."""

    backup: torch.device | None  # the original weights (None: beside the weight)
    compute: torch.device | None  # where a patched weight is computed (None: where the weight is)
    keep_staged: bool  # keep network tensors' device copies between switches


def patch_devices(policy: DevicePolicy) -> PatchPlacement:
    """Where network patching keeps the original weights, computes patched ones, and whether network tensors stay
    on the GPU between switches.

    Normal mode: originals and computation beside the weight, the fastest; on a GPU the network tensors of the
    last two sets stay there too (``WeightPatcher.stage``), so switching back moves nothing from host memory. ``--medvram``/``--lowvram``: originals in RAM, since VRAM is what these modes save; the master
    weights live in RAM too, so on CUDA the patched weights are computed on the GPU and copied back rather than
    computed by the CPU, and network tensors are copied for each switch and not kept.
    """
    if policy.memory_mode == "normal":
        return PatchPlacement(None, None, policy.is_cuda)
    return PatchPlacement(torch.device("cpu"), policy.device if policy.is_cuda else None, False)


def choose_attention(args: argparse.Namespace) -> Attention:
    """A1111's flags: ``--xformers`` (when installed), the memory-saving ``--opt-split-attention`` /
    ``--opt-sub-quad-attention`` (sliced attention), else PyTorch's scaled-dot-product attention."""
    if args.xformers or args.force_enable_xformers:
        import importlib.util

        if importlib.util.find_spec("xformers") is not None:
            return "xformers"
        logger.warning("--xformers: the xformers package is not installed; using PyTorch SDPA attention.")
    if args.opt_split_attention or args.opt_split_attention_v1 or args.opt_sub_quad_attention:
        return "sliced"
    return "sdpa"


def apply_attention(unet: torch.nn.Module, policy: DevicePolicy) -> None:
    """Set the UNet's attention backend through diffusers' public switches."""
    if policy.attention == "xformers":
        try:
            unet.enable_xformers_memory_efficient_attention()
            return
        except (ModuleNotFoundError, ValueError, RuntimeError) as e:  # no CUDA build / unsupported GPU
            logger.warning("xformers attention is unavailable (%s); using PyTorch SDPA.", e)
    if policy.attention == "sliced":
        unet.set_attention_slice("auto")


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_gc() -> None:
    """Give cached GPU memory back to the driver after a model is dropped."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
