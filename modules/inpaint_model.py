"""Inpainting checkpoints (sd-v1-5-inpainting and merges of it): UNets with 9 input channels.

Such a UNet sees, beside the 4 noisy latent channels, A1111's "image conditioning": a mask channel (1 where the
picture is to be made) and the 4 latent channels of the picture with that part blanked. A1111 builds it so:

* txt2img (and a Hires. fix pass at full *Conditional mask weight*): the whole picture is to be made, so the mask is
  all ones and the picture mid-grey (0 in the VAE's −1…1 range).
* img2img: the picture in −1…1, blanked where the mask is (``lerp(picture, picture·(1 − mask), weight)`` with the
  *Inpainting conditioning mask strength* setting as ``weight``; plain img2img has a mask of ones, so at weight 1 the
  model sees grey and at 0 the picture itself). The mask is rounded to 0/1 and shrunk to the latents' size with
  ``nearest`` (``torch.nn.functional.interpolate``'s default), as A1111 and diffusers' inpaint pipeline do.

The conditioning is made once per job (VAE-encoded with the posterior mean, as every encode here) and concatenated
to the scaled latents at every UNet call (:func:`modules.sampling.denoise`). A1111's sampler blend, which keeps the
picture outside the mask at every step, applies to these models too.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modules import img2img, sampling

IN_CHANNELS = 9


def is_inpainting(unet: torch.nn.Module) -> bool:
    """Whether the UNet takes A1111's image conditioning (9 input channels)."""
    return int(unet.config.in_channels) == IN_CHANNELS


def full_mask_conditioning(vae: torch.nn.Module, count: int, width: int, height: int,
                           tiled: bool = False) -> torch.Tensor:
    """txt2img's conditioning: a mask of ones and the latents of a mid-grey picture, ``(count, 5, h, w)``."""
    latents = _encode_pixels(vae, torch.zeros(1, 3, height, width), tiled)
    return _with_mask(torch.ones(1, 1, *latents.shape[-2:]), latents).expand(count, -1, -1, -1).contiguous()


def picture_conditioning(vae: torch.nn.Module, pictures: list[Image.Image], mask: Image.Image | None, weight: float,
                         resize_mode: int, width: int, height: int, tiled: bool = False) -> torch.Tensor:
    """img2img's conditioning for each picture (already fitted to the job): ``mask`` (None: the whole picture)
    rounded, the picture blanked there by ``weight``, VAE-encoded; ``(len(pictures), 5, h, w)``."""
    pixels = torch.stack([_to_tensor(p) for p in pictures])  # (B, 3, H, W) in -1..1
    if mask is None:
        blank = torch.ones(1, 1, *pixels.shape[-2:])
    else:
        if mask.size != pictures[0].size:  # the latent-resize mode keeps the pictures at their own size
            mask = mask.resize(pictures[0].size, Image.Resampling.NEAREST)
        blank = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None].round()
    blanked = torch.lerp(pixels, pixels * (1.0 - blank), float(weight))
    latents = img2img.resize_latents(_encode_pixels(vae, blanked, tiled), resize_mode, width, height)
    small = torch.nn.functional.interpolate(blank, size=tuple(latents.shape[-2:]))
    return _with_mask(small.expand(latents.shape[0], -1, -1, -1), latents)


def _with_mask(mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    return torch.cat([mask.to(latents), latents], dim=1)


def _to_tensor(picture: Image.Image) -> torch.Tensor:
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


@torch.no_grad()
def _encode_pixels(vae: torch.nn.Module, pixels: torch.Tensor, tiled: bool) -> torch.Tensor:
    """Pictures in −1…1 ``(B, 3, H, W)`` → scaled latents in fp32 on the CPU (the posterior mean, as
    :func:`modules.sampling.encode`)."""
    parameter = next(vae.parameters())
    with sampling.tiling(vae, tiled):
        out = [vae.encode(x[None].to(parameter.device, parameter.dtype)).latent_dist.mean.float()
               * vae.config.scaling_factor for x in pixels]
    return torch.cat(out).cpu()
