"""img2img's own parts: the init pictures brought to the job's size, the steps that run, and the infotext fields.

As in A1111 (``StableDiffusionProcessingImg2Img``): transparent parts of a picture are flattened onto the
``img2img_background_color`` setting, the picture is fitted to the job's size by one of four resize modes, one
picture serves the whole batch (or one picture per image, at most ``batch_size``), the batch is VAE-encoded once
per job, and the sampler starts part-way into its schedule, from those latents noised to that point. How far in is
the *denoising strength*: A1111 runs ``int(min(strength, 0.999) · steps) + 1`` of the ``steps`` (one step even at
strength 0), or, with the ``img2img_fix_steps`` setting, exactly ``steps`` of a schedule stretched as for the hires
pass (:func:`modules.hires.step_plan`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageColor

from modules import hires

#: A1111's resize modes, by index (the API's ``resize_mode``) and label (the page's radio).
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LATENT_RESIZE = 3  # the picture is encoded at its own size and its latents are resized


class Img2ImgError(ValueError):
    """The init pictures cannot make this job; the message says what to change."""


def flatten(image: Image.Image, background: str) -> Image.Image:
    """An RGB picture; transparency is composed over ``background`` (a CSS colour such as ``#ffffff``)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        try:
            color = ImageColor.getrgb(background or "#ffffff")
        except ValueError:
            color = (255, 255, 255)
        canvas = Image.new("RGBA", rgba.size, (*color[:3], 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit ``image`` to ``width`` × ``height`` as A1111's resize mode ``mode`` does (Lanczos resampling):

    0 *Just resize*: stretched. 1 *Crop and resize*: scaled to cover the size, centred, the overflow cut.
    2 *Resize and fill*: scaled to fit inside, centred, and the empty bands filled by stretching the picture's
    outermost row (or column) of pixels across them. 3 is *Just resize (latent upscale)*: the picture is left as it
    is here (its latents are resized, :func:`resize_latents`).
    """
    if mode == LATENT_RESIZE:
        return image
    if mode == 0:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    ratio, source_ratio = width / height, image.width / image.height
    if mode == 1:
        fit_width = width if ratio > source_ratio else image.width * height // image.height
        fit_height = height if ratio <= source_ratio else image.height * width // image.width
    elif mode == 2:
        fit_width = width if ratio < source_ratio else image.width * height // image.height
        fit_height = height if ratio >= source_ratio else image.height * width // image.width
    else:
        raise Img2ImgError(f"resize_mode must be 0 to 3 ({', '.join(RESIZE_MODES)}); got {mode!r}")
    scaled = image.resize((fit_width, fit_height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    left, top = width // 2 - fit_width // 2, height // 2 - fit_height // 2
    canvas.paste(scaled, box=(left, top))
    if mode == 2 and ratio < source_ratio and top > 0:  # bands above and below
        canvas.paste(scaled.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
        canvas.paste(scaled.resize((width, top), box=(0, fit_height, width, fit_height)), box=(0, top + fit_height))
    elif mode == 2 and ratio > source_ratio and left > 0:  # bands left and right
        canvas.paste(scaled.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
        canvas.paste(scaled.resize((left, height), box=(fit_width, 0, fit_width, height)), box=(left + fit_width, 0))
    return canvas


def batch_pictures(images: Sequence[Image.Image], batch_size: int, width: int, height: int, mode: int,
                   background: str) -> list[Image.Image]:
    """The ``batch_size`` pictures a batch starts from: one picture repeated, or one per image (A1111 lets fewer
    pictures than ``batch_size`` shrink the batch; :func:`batch_size_for` says to what).

    Raises:
        Img2ImgError: what :func:`check_pictures` refuses, or a bad mode.
    """
    check_pictures(images, batch_size, mode)
    return for_batch([resize_image(mode, flatten(image, background), width, height) for image in images], batch_size)


def for_batch(items: list, batch_size: int) -> list:
    """One item per batch image: a single one repeated, several as they are (A1111)."""
    return items * batch_size if len(items) == 1 else list(items)


def batch_size_for(images: Sequence[Image.Image], batch_size: int) -> int:
    """A1111: several init pictures make the batch that many images; a single one fills ``batch_size``."""
    return batch_size if len(images) <= 1 else min(len(images), batch_size)


def check_pictures(images: Sequence[Image.Image], batch_size: int, mode: int, max_side: int = 4096) -> None:
    """What init pictures a job can start from: at least one, at most ``batch_size``; for *Just resize (latent
    upscale)*, which encodes them at their own size, all of one size and each side from 8 to ``max_side`` pixels (as
    the job's size is bounded).

    Raises:
        Img2ImgError: saying which rule the pictures break and what to do.
    """
    if not images:
        raise Img2ImgError("img2img needs an init image (init_images is empty)")
    if len(images) > batch_size:
        raise Img2ImgError(f"{len(images)} init images were sent for a batch of {batch_size}; send one image, or "
                           f"at most batch_size ({batch_size})")
    if mode != LATENT_RESIZE:
        return
    for image in images:
        if max(image.size) > max_side or min(image.size) < 8:
            raise Img2ImgError(f"with Just resize (latent upscale) the init image is encoded at its own size, "
                               f"{image.width}x{image.height}; each side must be from 8 to {max_side} pixels: "
                               "resize it first or pick another resize mode")
    if len({image.size for image in images}) > 1:
        raise Img2ImgError("with Just resize (latent upscale) the init images must all have one size; got "
                           + ", ".join(f"{image.width}x{image.height}" for image in images))


def resize_latents(latents: torch.Tensor, mode: int, width: int, height: int) -> torch.Tensor:
    """For *Just resize (latent upscale)*: the encoded pictures' latents to the job's latent size (bilinear, as
    A1111); other modes' latents already have it."""
    size = (height // hires.LATENT_FACTOR, width // hires.LATENT_FACTOR)
    if mode != LATENT_RESIZE or tuple(latents.shape[-2:]) == size:
        return latents
    return torch.nn.functional.interpolate(latents, size=size, mode="bilinear")


def step_plan(steps: int, strength: float, fix_steps: bool) -> hires.StepPlan:
    """Which steps of the schedule run (see the module's docstring)."""
    if fix_steps:
        return hires.step_plan(steps, strength)
    run = int(min(strength, 0.999) * steps) + 1
    return hires.StepPlan(steps, steps - run)


def infotext_fields(noise_multiplier: float) -> dict[str, object]:
    """img2img's extra infotext fields (``Denoising strength`` has its fixed place among the others)."""
    return {"Noise multiplier": noise_multiplier} if noise_multiplier != 1.0 else {}
