"""The denoising loop over ``pipe.unet`` and a diffusers scheduler, with A1111's classifier-free guidance.

An explicit loop rather than ``StableDiffusionPipeline.__call__``, because A1111's semantics need it: cond
and uncond of different lengths (long prompts) run as two UNet passes instead of one padded batch, the
conditioning can change at a given step (prompt editing), and the job can be interrupted or skipped between
steps. Everything else is what the diffusers pipeline does, and ``tests/test_processing.py`` checks that
the two give the same latents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules.samplers import SamplerRun

#: Called after every step with ``(step index, total steps, latents)``; returns True to stop early.
StepCallback = Callable[[int, int, torch.Tensor], bool]


@dataclass(frozen=True, slots=True)
class Guidance:
    """What the UNet is conditioned on. Shapes: ``cond (B, 77·k, C)``, ``uncond (B, 77·m, C)``."""

    cond: torch.Tensor
    uncond: torch.Tensor
    cfg_scale: float


@torch.no_grad()
def denoise(unet: torch.nn.Module, run: SamplerRun, noise: torch.Tensor, guidance: Guidance, steps: int,
            callback: StepCallback | None = None) -> torch.Tensor:
    """Run the sampler from unit-variance ``noise`` (B, 4, h, w) and return the final latents in fp32.

    Latents stay fp32 between steps (the scheduler's arithmetic), the UNet runs in its own dtype.
    """
    scheduler = run.scheduler
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps
    latents = run.initial_latents(noise)
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        eps = _guided_prediction(unet, model_input, t, guidance)
        latents = scheduler.step(eps, t, latents, **run.step_kwargs(index, latents), return_dict=False)[0]
        if callback is not None and callback(index, len(timesteps), latents):
            break
    return latents


def _guided_prediction(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, guidance: Guidance) -> torch.Tensor:
    """``uncond + scale·(cond − uncond)``; one batched UNet call when both have the same length."""
    dtype = unet.dtype
    cond, uncond = guidance.cond.to(dtype), guidance.uncond.to(dtype)
    x = x.to(dtype)
    if guidance.cfg_scale == 1.0:  # the uncond term cancels out: skip its UNet pass
        return unet(x, t, encoder_hidden_states=cond, return_dict=False)[0].float()
    if cond.shape[1] == uncond.shape[1]:
        both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
        eps_uncond, eps_cond = both.float().chunk(2)
    else:
        eps_uncond = unet(x, t, encoder_hidden_states=uncond, return_dict=False)[0].float()
        eps_cond = unet(x, t, encoder_hidden_states=cond, return_dict=False)[0].float()
    return eps_uncond + guidance.cfg_scale * (eps_cond - eps_uncond)


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> list[Image.Image]:
    """Latents → RGB images, one image at a time (as A1111, to bound VAE memory).

    Pixel values are truncated to uint8 the way A1111 does (``astype(uint8)`` of ``255·x``), so images match.
    """
    images = []
    for latent in latents:
        sample = vae.decode(latent.unsqueeze(0).to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        pixels = ((sample[0].float() + 1.0) / 2.0).clamp(0.0, 1.0)  # (3, H, W) in [0, 1]
        array = (255.0 * np.moveaxis(pixels.cpu().numpy(), 0, 2)).astype(np.uint8)
        images.append(Image.fromarray(array))
    return images
