"""Hires. fix: what the second pass of a txt2img job starts from, and at which size and step it starts.

A1111's hires fix makes the image at the first-pass size, upscales it, and runs img2img on the result: the
upscaled latents get the seed's noise at the new size, scaled to a point part way down the sampler's schedule, and
the sampler runs the remaining steps. This module holds the pure parts of that (the sizes, the upscalers, the
step plan); :mod:`modules.processing` runs the pass.

Upscalers, by A1111's names:

* latent ones (``Latent``, ``Latent (antialiased)``, ``Latent (bicubic)``, ...): ``torch.nn.functional.interpolate``
  of the first pass's latents, in A1111's modes;
* image ones (``None``, ``Lanczos``, ``Nearest``): the first pass is decoded, each picture resized with PIL, and
  encoded again with the VAE. The model-based upscalers (ESRGAN, R-ESRGAN, SwinIR, ...) need weights that are not
  shipped here; they are not listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

if TYPE_CHECKING:
    from modules.processing_params import GenerationParams

#: A1111's latent upscale modes: name → (interpolate mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# The page's "as the first pass" entries (and what A1111's infotext parser fills in when the fields are absent)
SAME_CHECKPOINT = "Use same checkpoint"
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
DEFAULT_UPSCALER = "Latent"  # A1111's latent_upscale_default_mode: what an unnamed upscaler (API null) means
#: Image upscalers: name → PIL resampling. A1111's "None" upscaler leaves the picture as it is and its final
#: resize to the target size is Lanczos, so it resizes as "Lanczos" does.
IMAGE_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
UPSCALERS: tuple[str, ...] = (*LATENT_MODES, *IMAGE_UPSCALERS)  # the page's list, in A1111's order
LATENT_FACTOR = 8  # pixels per latent cell


@dataclass(frozen=True, slots=True)
class Target:
    """Where the hires pass goes: the size the first pass is upscaled to, and the latent rows/columns cut off
    afterwards (A1111 crops to the asked aspect ratio when both "Resize width to" and "height to" are given)."""

    upscale_width: int
    upscale_height: int
    truncate_x: int = 0  # latent columns removed, half on each side (the odd one on the right)
    truncate_y: int = 0

    @property
    def width(self) -> int:
        """The final image width (what A1111's page shows as "to WxH")."""
        return (self.upscale_width // LATENT_FACTOR - self.truncate_x) * LATENT_FACTOR

    @property
    def height(self) -> int:
        return (self.upscale_height // LATENT_FACTOR - self.truncate_y) * LATENT_FACTOR


def target_size(params: GenerationParams) -> Target:
    """A1111's hires target for a first pass of ``params.width`` x ``params.height``.

    * neither resize given: ``int(side * hr_scale)``;
    * one given: that one, and the other keeping the first pass's aspect ratio (integer division);
    * both given: upscaled to cover the asked size with the first pass's aspect ratio, then cropped to it.
    """
    w, h, rx, ry = params.width, params.height, params.hr_resize_x, params.hr_resize_y
    if rx == 0 and ry == 0:
        return Target(int(w * params.hr_scale), int(h * params.hr_scale))
    if ry == 0:
        return Target(rx, rx * h // w)
    if rx == 0:
        return Target(ry * w // h, ry)
    if w / h < rx / ry:  # the asked size is wider: match the width, crop the height
        up_w, up_h = rx, rx * h // w
    else:
        up_w, up_h = ry * w // h, ry
    return Target(up_w, up_h, (up_w - rx) // LATENT_FACTOR, (up_h - ry) // LATENT_FACTOR)


def is_latent(upscaler: str | None) -> bool:
    """Whether ``upscaler`` (None: the default) works on latents, so the first pass needs no decode."""
    return (upscaler or DEFAULT_UPSCALER) in LATENT_MODES


def upscale_latents(latents: torch.Tensor, upscaler: str | None, target: Target) -> torch.Tensor:
    """The first pass's latents (B, 4, h, w) interpolated to the target's latent size, as A1111 does."""
    mode, antialias = LATENT_MODES[upscaler or DEFAULT_UPSCALER]
    size = (target.upscale_height // LATENT_FACTOR, target.upscale_width // LATENT_FACTOR)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)


def upscale_images(images: Sequence[Image.Image], upscaler: str, target: Target) -> list[Image.Image]:
    """The first pass's pictures resized to the target's upscale size with the named image upscaler."""
    resample = IMAGE_UPSCALERS[upscaler]
    size = (target.upscale_width, target.upscale_height)
    return [image if image.size == size else image.resize(size, resample=resample) for image in images]


def truncate(latents: torch.Tensor, target: Target) -> torch.Tensor:
    """Cut the target's extra latent rows and columns, half from each side (the odd one from the end)."""
    ty, tx = target.truncate_y, target.truncate_x
    return latents[:, :, ty // 2: latents.shape[2] - (ty + 1) // 2, tx // 2: latents.shape[3] - (tx + 1) // 2]


@dataclass(frozen=True, slots=True)
class StepPlan:
    """An img2img pass: a schedule of ``total`` steps of which the first ``skip`` are not run."""

    total: int
    skip: int

    @property
    def run(self) -> int:
        return self.total - self.skip


def step_plan(steps: int, denoising_strength: float) -> StepPlan:
    """A1111's img2img steps for a hires pass of ``steps`` steps: the schedule is stretched to
    ``int(steps / min(strength, 0.999))`` steps and only its last ``steps`` run, so the pass starts where the
    schedule's noise level matches the strength. Strength 0 runs nothing."""
    if denoising_strength <= 0:
        return StepPlan(0, 0)
    total = int(steps / min(denoising_strength, 0.999))
    return StepPlan(total, total - steps)


def infotext_fields(params: GenerationParams, first_sampler: str, first_schedule: str, hires_sampler: str,
                    hires_schedule: str, checkpoint: str | None = None) -> dict[str, object]:
    """The hires fields of the infotext's extra part, in A1111's order (before Lora hashes). ``Denoising
    strength`` is not among them: it has its own place among the fixed keys. ``checkpoint``: the hires
    checkpoint's short title, when the pass ran on another one."""
    fields: dict[str, object] = {}
    if checkpoint:
        fields["Hires checkpoint"] = checkpoint
    if params.hr_sampler_name and hires_sampler != first_sampler:
        fields["Hires sampler"] = hires_sampler
    if params.hr_prompt and params.hr_prompt != params.prompt:
        fields["Hires prompt"] = params.hr_prompt
    if params.hr_negative_prompt and params.hr_negative_prompt != params.negative_prompt:
        fields["Hires negative prompt"] = params.hr_negative_prompt
    if params.hr_resize_x == 0 and params.hr_resize_y == 0:
        fields["Hires upscale"] = params.hr_scale
    else:
        fields["Hires resize"] = f"{params.hr_resize_x}x{params.hr_resize_y}"
    if params.hr_second_pass_steps:
        fields["Hires steps"] = params.hr_second_pass_steps
    if params.hr_upscaler is not None:
        fields["Hires upscaler"] = params.hr_upscaler
    if hires_schedule != first_schedule:
        fields["Hires schedule type"] = hires_schedule
    return fields
