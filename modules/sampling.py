"""The denoising loop over ``pipe.unet`` and a diffusers scheduler, with A1111's classifier-free guidance.

An explicit loop rather than ``StableDiffusionPipeline.__call__``, because A1111's semantics need it: cond
and uncond of different lengths (long prompts) run as two UNet passes instead of one padded batch, the
conditioning can change at a given step (prompt editing), and the job can be interrupted or skipped between
steps. Everything else is what the diffusers pipeline does, and ``tests/test_processing.py`` checks that
the two give the same latents.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules import conditioning
from modules.samplers import SamplerRun

#: Called after every step with ``(step index, total steps, latents)``; returns True to stop early.
StepCallback = Callable[[int, int, torch.Tensor], bool]


@dataclass(frozen=True)
class StepConds:
    """The tensors one denoiser call needs, in the UNet's dtype: built once per schedule change, not per step."""

    cond: torch.Tensor  # (N, 77·k, C): every AND part of every image
    conds_list: list[list[tuple[int, float]]]  # per image: (row in cond, weight)
    uncond: torch.Tensor  # (B, 77·m, C)
    repeats: torch.Tensor  # (B,) AND parts per image
    both: torch.Tensor | None  # cat([uncond, cond]) when they have the same length (one UNet call)
    plain: bool  # one part of weight 1 per image


@dataclass
class Guidance:
    """What the UNet is conditioned on, step by step.

    ``multicond`` holds each image's ``AND`` parts with their weights, ``uncond`` each image's negative prompt;
    both may change at a given step (prompt editing, alternation). The stacked tensors are rebuilt only when
    the schedule entries in use change.
    """

    multicond: conditioning.Multicond
    uncond: list[conditioning.ScheduledCond]
    cfg_scale: float
    _key: tuple | None = None
    _conds: StepConds | None = None

    @classmethod
    def fixed(cls, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> Guidance:
        """Guidance from plain ``(B, L, C)`` / ``(B, M, C)`` tensors that do not change during sampling."""
        never = (1 << 62,)
        rows = tuple(((conditioning.ScheduledCond(never, c.unsqueeze(0)), 1.0),) for c in cond)
        negatives = [conditioning.ScheduledCond(never, u.unsqueeze(0)) for u in uncond]
        return cls(conditioning.Multicond(rows), negatives, cfg_scale)

    def at(self, step: int, dtype: torch.dtype) -> StepConds:
        """The conditioning at denoiser call ``step`` (0-based)."""
        key = (conditioning.schedule_key(self.multicond, self.uncond, step), dtype)
        if key != self._key or self._conds is None:
            cond, conds_list = self.multicond.at(step)
            cond = cond.to(dtype)
            uncond = conditioning.uncond_at(self.uncond, step).to(dtype)
            repeats = torch.tensor([len(parts) for parts in conds_list], device=cond.device)
            both = torch.cat([uncond, cond]) if cond.shape[1] == uncond.shape[1] else None
            plain = all(len(parts) == 1 and parts[0][1] == 1.0 for parts in conds_list)
            self._key, self._conds = key, StepConds(cond, conds_list, uncond, repeats, both, plain)
        return self._conds


@torch.no_grad()
def denoise(unet: torch.nn.Module, run: SamplerRun, noise: torch.Tensor, guidance: Guidance, steps: int,
            callback: StepCallback | None = None, init: torch.Tensor | None = None, skip: int = 0,
            redraw: torch.Tensor | None = None, image_cond: torch.Tensor | None = None) -> torch.Tensor:
    """Run the sampler from unit-variance ``noise`` (B, 4, h, w) and return the final latents in fp32.

    With ``init`` latents (img2img, the hires pass) the schedule still has ``steps`` steps but its first
    ``skip`` are not run: the sampler starts from ``init`` noised to the level of step ``skip``. Prompt-editing
    steps count from the first step run, as in A1111. Latents stay fp32 between steps (the scheduler's
    arithmetic), the UNet runs in its own dtype.

    ``redraw`` (inpainting; 1 where the picture is redrawn, 0 where it is kept, broadcast over the latents): as
    A1111's sampler does, every model call's prediction of the clean latents is ``init`` outside the mask
    (:func:`_keep_outside`), and so are the final latents.

    ``image_cond`` (an inpainting model's mask and blanked-picture latents, ``(B, 5, h, w)``,
    :mod:`modules.inpaint_model`) goes beside the scaled latents into every UNet call.
    """
    scheduler = run.scheduler
    scheduler.set_timesteps(steps, device=noise.device)
    latents = run.initial_latents(noise) if init is None else run.start_from(init, noise, skip)
    timesteps = scheduler.timesteps[run.begin:]
    dtype = next(unet.parameters()).dtype  # not unet.dtype: diffusers walks every submodule for that
    if image_cond is not None:
        image_cond = image_cond.to(latents.device, latents.dtype)
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        if image_cond is not None:
            model_input = torch.cat([model_input, image_cond], dim=1)
        eps = _guided_prediction(unet, model_input.to(dtype), t, guidance.at(index, dtype), guidance.cfg_scale)
        if redraw is not None:
            eps = _keep_outside(scheduler, t, run.begin + index, latents, eps, init, redraw)
        latents = scheduler.step(eps, t, latents, **run.step_kwargs(index, latents), return_dict=False)[0]
        if callback is not None and callback(index, len(timesteps), latents):
            break
    if redraw is not None:
        latents = latents * redraw + init * (1 - redraw)
    return latents


def _keep_outside(scheduler, t: torch.Tensor, index: int, x: torch.Tensor, eps: torch.Tensor, init: torch.Tensor,
                  redraw: torch.Tensor) -> torch.Tensor:
    """The noise prediction whose clean-latent prediction is ``init`` outside the mask and the model's inside.

    Every scheduler here predicts the clean latents as ``x0 = (x − b·ε) / a`` at a model call: ``a = 1`` and
    ``b = σ`` for the σ-parametrised (k-diffusion) ones, whose σ for this call is read back from how
    :meth:`scale_model_input` scaled (``1/√(σ² + 1)``; it differs from the schedule's σ on second-order calls);
    ``a = α``, ``b = √(1 − α²)`` for the others, from the schedule's σ at the step (DPM-Solver++, UniPC) or
    ``ᾱ_t`` (DDIM, PLMS, LCM). So ``ε' = ε·m + (x − a·init)/b · (1 − m)``.
    """
    scale = float(scheduler.scale_model_input(torch.ones(1, dtype=torch.float64, device=x.device), t).item())
    if scale < 1.0:  # σ-parametrised: the model's input was x / √(σ² + 1)
        a, b = 1.0, math.sqrt(max(1.0 / (scale * scale) - 1.0, 0.0))
    elif getattr(scheduler, "sigmas", None) is not None and hasattr(scheduler, "step_index"):
        step = scheduler.step_index if scheduler.step_index is not None else index
        sigma = float(scheduler.sigmas[step])
        a = 1.0 / math.sqrt(sigma * sigma + 1.0)
        b = sigma * a
    else:
        alpha_bar = float(scheduler.alphas_cumprod[int(t)])
        a, b = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if b == 0.0:
        return eps
    return eps * redraw + (x - a * init) / b * (1 - redraw)


def _guided_prediction(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, conds: StepConds,
                       scale: float) -> torch.Tensor:
    """A1111's CFG with composable ``AND``: ``uncond + Σ_k w_k·scale·(cond_k − uncond)`` per image, in fp32.

    Every ``AND`` part is its own batch entry; cond and uncond share one UNet call when their token lengths
    match, and run as two calls when they do not (A1111 does not pad them).
    """
    x_cond = x if conds.cond.shape[0] == x.shape[0] else torch.repeat_interleave(x, conds.repeats, dim=0)
    if scale == 1.0 and conds.plain:  # the uncond term cancels out: skip its UNet pass
        return unet(x_cond, t, encoder_hidden_states=conds.cond, return_dict=False)[0].float()
    if conds.both is not None:
        out = unet(torch.cat([x, x_cond]), t, encoder_hidden_states=conds.both, return_dict=False)[0].float()
        eps_uncond, eps_cond = out[: x.shape[0]], out[x.shape[0]:]
    else:
        eps_uncond = unet(x, t, encoder_hidden_states=conds.uncond, return_dict=False)[0].float()
        eps_cond = unet(x_cond, t, encoder_hidden_states=conds.cond, return_dict=False)[0].float()
    if conds.plain:
        return eps_uncond + scale * (eps_cond - eps_uncond)
    result = eps_uncond.clone()
    for image, parts in enumerate(conds.conds_list):
        for row, weight in parts:
            result[image] += (eps_cond[row] - eps_uncond[image]) * (weight * scale)
    return result


@dataclass(frozen=True)
class Decoded:
    """Decoded images, and whether the VAE produced NaNs (then the images are black where they are)."""

    images: list[Image.Image]
    nan_found: bool


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor, tiled: bool = False) -> Decoded:
    """Latents → RGB images, one image at a time (as A1111, to bound VAE memory).

    Pixel values are truncated to uint8 the way A1111 does (``astype(uint8)`` of ``255·x``), so images match.
    ``tiled`` decodes in overlapping tiles (diffusers' VAE tiling) for images too large for the device.
    """
    images, nan_found = [], False
    dtype = next(vae.parameters()).dtype
    with tiling(vae, tiled):
        for latent in latents:
            sample = vae.decode(latent.unsqueeze(0).to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
            nan_found = nan_found or bool(torch.isnan(sample).any())
            pixels = ((sample[0].float() + 1.0) / 2.0).clamp(0.0, 1.0).nan_to_num(0.0)  # (3, H, W) in [0, 1]
            array = (255.0 * np.moveaxis(pixels.cpu().numpy(), 0, 2)).astype(np.uint8)
            images.append(Image.fromarray(array))
    return Decoded(images, nan_found)


@torch.no_grad()
def encode(vae: torch.nn.Module, images: list[Image.Image], tiled: bool = False) -> torch.Tensor:
    """RGB pictures (all one size) → latents ``(B, 4, h, w)`` in fp32, scaled as the UNet sees them.

    The VAE's posterior mean is used. A1111 draws a sample from the posterior, whose spread for SD's VAE is
    orders of magnitude below the mean's precision in fp16; the mean keeps a hires pass reproducible.
    """
    parameter = next(vae.parameters())
    latents = []
    with tiling(vae, tiled):
        for image in images:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
            x = (pixels.permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0).to(device=parameter.device, dtype=parameter.dtype)
            latents.append(vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor)
    return torch.cat(latents)


@contextlib.contextmanager
def tiling(vae: torch.nn.Module, on: bool) -> Iterator[None]:
    """diffusers' VAE tiling switched on for the block when ``on`` (and off again, even on error)."""
    if not on:
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()

