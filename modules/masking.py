"""Inpainting's masks, as A1111 prepares them for a model without inpainting channels (SD 1.5).

A mask is white (or opaque) where the picture is to be redrawn. In order, as A1111's
``StableDiffusionProcessingImg2Img.init`` does:

1. :func:`binary_mask`: a mask with transparency is its alpha channel (thresholded at 128), else its grey level.
2. *Mask mode* "Inpaint not masked" inverts it; *Mask blur* blurs it, horizontally then vertically
   (:func:`gaussian_blur`, OpenCV's ``GaussianBlur`` with A1111's kernel sizes).
3. *Inpaint area* "Only masked": the masked box, grown by *Only masked padding* and then to the job's aspect
   ratio (:func:`crop_region`, :func:`expand_crop_region`), is cut out of picture and mask and resized to the job's
   size; the result is pasted back into the whole picture at the end (:func:`uncrop`). "Whole picture": mask and
   picture are fitted to the job's size like the picture alone.
4. *Masked content*: "fill" paints the masked part with the colours around it (:func:`fill`) before encoding;
   "original" keeps it; "latent noise" and "latent nothing" replace its latents by the seed's noise or zeros.
5. The latent mask (the mask at latent size, rounded) makes every sampler step keep the picture's latents outside
   the mask (:func:`modules.sampling.denoise`'s ``keep``), and the decoded result is laid over the original picture
   through the blurred mask, so the unmasked part comes back exactly (:func:`overlay`, :func:`apply_overlay`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from modules import img2img

#: A1111's "Masked content" choices, by index (the API's ``inpainting_fill``).
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
#: A1111's "Mask mode" (the API's ``inpainting_mask_invert``) and "Inpaint area" (``inpaint_full_res``) choices.
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")


def binary_mask(mask: Image.Image, round_alpha: bool = True) -> Image.Image:
    """The mask as one grey channel ("L"): a mask with real transparency is its alpha channel (thresholded at 128
    when ``round_alpha``: a painted stroke's soft edge counts as painted or not), any other its grey level."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.split()[-1].convert("L")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return mask.convert("L")


def gaussian_kernel(sigma: float, fraction_bits: int = 8) -> np.ndarray:
    """The 1-D Gaussian A1111 blurs masks with (``2·int(2.5·σ + 0.5) + 1`` taps), as OpenCV applies it to 8-bit
    pictures: in fixed point with ``fraction_bits`` bits, the rounding error carried from the outer taps inwards
    and the centre tap taking what makes the sum exactly one."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(x * x) / (2 * sigma * sigma))
    weights /= weights.sum()
    one = 1 << fraction_bits
    fixed = np.zeros(size, dtype=np.int64)
    carried, total = 0.0, 0
    for i in range(size // 2):
        value = weights[i] * one + carried
        fixed[i] = fixed[size - 1 - i] = int(np.rint(value))
        carried = value - fixed[i]
        total += int(fixed[i])
    fixed[size // 2] = one - 2 * total
    return fixed


def gaussian_blur(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's *Mask blur*: a horizontal Gaussian of σ ``blur_x`` then a vertical one of σ ``blur_y`` (0: none),
    each rounded back to 8 bits, with OpenCV's default border (mirrored without repeating the edge pixel). Equal to
    OpenCV's ``GaussianBlur``, which A1111 calls, to the bit (tests/test_masking.py)."""
    array = np.asarray(mask.convert("L"))
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma > 0:
            array = _blur_axis(array, gaussian_kernel(sigma), axis)
    return Image.fromarray(array)


def _blur_axis(array: np.ndarray, kernel: np.ndarray, axis: int, fraction_bits: int = 8) -> np.ndarray:
    radius = len(kernel) // 2
    size = array.shape[axis]
    index = np.arange(-radius, size + radius)
    while (index < 0).any() or (index >= size).any():  # reflect-101, repeated for kernels wider than the mask
        index = np.where(index < 0, -index, index)
        index = np.where(index >= size, 2 * (size - 1) - index, index)
        if size == 1:
            index = np.zeros_like(index)
    padded = np.take(array.astype(np.int64), index, axis=axis)
    total = np.zeros(array.shape, dtype=np.int64)
    for offset, weight in enumerate(kernel):
        window = [slice(None)] * array.ndim
        window[axis] = slice(offset, offset + size)
        total += int(weight) * padded[tuple(window)]
    return np.clip((total + (1 << (fraction_bits - 1))) >> fraction_bits, 0, 255).astype(np.uint8)


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box ``(x1, y1, x2, y2)`` around the mask's non-black pixels, grown by ``padding`` and kept inside the
    mask; None for an empty mask."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    if not padding:
        return box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_crop_region(region: tuple[int, int, int, int], width: int, height: int, image_width: int,
                       image_height: int) -> tuple[int, int, int, int]:
    """Grow the box on its short side, centred, to the job's aspect ratio (``width``/``height``), shifting it back
    inside the picture where it would leave it (A1111's rule: it may stay smaller than asked at the picture's
    size)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), image_height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def _grow(start: int, end: int, extra: int, limit: int) -> tuple[int, int]:
    start -= extra // 2
    end += extra - extra // 2
    if end >= limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, end - start
    return start, min(end, limit)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked part painted with the picture's colours around it — the unmasked part blurred
    ever less (radius 256 down to 0) and laid on top of itself, so the hole takes its surroundings' colours."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    painted = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            painted.alpha_composite(blurred)
    return painted.convert("RGB")


def overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The picture where it is not masked (transparent where it is): laid over the result at the end."""
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return layer.convert("RGBA")


def uncrop(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """An "Only masked" result put back at its place (``box`` = x, y, w, h) in a transparent picture of ``size``."""
    x, y, w, h = box
    canvas = Image.new("RGBA", size)
    canvas.paste(img2img.resize_image(1, image, w, h), (x, y))
    return canvas


def apply_overlay(image: Image.Image, paste_to: tuple[int, int, int, int] | None,
                  layer: Image.Image | None) -> Image.Image:
    """The decoded result with the original picture laid over its unmasked part (after pasting an "Only masked"
    result back into the picture's frame)."""
    if layer is None:
        return image
    if paste_to is not None:
        image = uncrop(image, layer.size, paste_to)
    result = image.convert("RGBA")
    result.alpha_composite(layer)
    return result.convert("RGB")


def latent_mask(mask: Image.Image, latent_height: int, latent_width: int, round_mask: bool = True) -> torch.Tensor:
    """The mask at latent size, 1 where the sampler redraws (A1111's ``nmask``), ``(1, 1, h, w)`` in fp32: resized
    with PIL's default (bicubic) and, with ``round_mask``, rounded to 0 or 1."""
    small = mask.convert("RGB").resize((latent_width, latent_height))
    values = np.asarray(small, dtype=np.float32)[:, :, 0] / 255.0
    if round_mask:
        values = np.around(values)
    return torch.from_numpy(np.ascontiguousarray(values))[None, None]



@dataclass
class Inpaint:
    """A job's inpainting: what the pictures' latents are masked with, what is laid over the results, and the
    infotext fields (in A1111's order)."""

    mask: Image.Image  # at the job's size (blurred): its latent-size version is the sampler's mask
    overlays: list[Image.Image]  # one per batch image: the original where it is not masked
    paste_to: tuple[int, int, int, int] | None  # "Only masked": (x, y, w, h) of the result in the picture
    fill: int  # MASKED_CONTENT index
    round_mask: bool
    fields: dict[str, object] = field(default_factory=dict)

    def redraw(self, latent_height: int, latent_width: int) -> torch.Tensor:
        return latent_mask(self.mask, latent_height, latent_width, self.round_mask)


def prepare(pictures: list[Image.Image], mask: Image.Image, width: int, height: int, resize_mode: int, blur_x: int,
            blur_y: int, fill_mode: int, full_res: bool, padding: int, invert: bool, round_mask: bool,
            comments: list[str]) -> tuple[list[Image.Image], Inpaint | None]:
    """The pictures (flattened, at their own size) fitted for an inpainting job, and the job's :class:`Inpaint`
    (see the module's docstring). An "Only masked" job with an empty mask has nothing to inpaint: as A1111, it
    runs as plain img2img (None), with a comment saying so."""
    fields: dict[str, object] = {}
    mask = binary_mask(mask, round_mask)
    if pictures and mask.size != pictures[0].size:  # A1111 takes any size; the crop box needs the picture's
        mask = mask.resize(pictures[0].size, Image.Resampling.LANCZOS)
    if invert:
        mask = ImageOps.invert(mask)
        fields["Mask mode"] = MASK_MODES[1]
    mask = gaussian_blur(mask, blur_x, blur_y)
    if (blur_x > 0 or blur_y > 0) and blur_x == blur_y:
        fields["Mask blur"] = blur_x
    region = paste_to = None
    if full_res:
        for_overlay = mask
        region = crop_region(mask, padding)
        if region is None:
            comments.append('Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.')
            return [img2img.resize_image(resize_mode, p, width, height) for p in pictures], None
        region = expand_crop_region(region, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = region
        job_mask = img2img.resize_image(2, mask.crop(region), width, height)
        paste_to = (x1, y1, x2 - x1, y2 - y1)
        fields["Inpaint area"] = INPAINT_AREAS[1]
        fields["Masked area padding"] = padding
    else:
        job_mask = img2img.resize_image(resize_mode, mask, width, height)
        doubled = np.clip(np.asarray(job_mask.convert("L"), dtype=np.float32) * 2, 0, 255).astype(np.uint8)
        for_overlay = Image.fromarray(doubled)
    fitted, overlays = [], []
    for picture in pictures:
        image = picture
        if region is None and resize_mode != img2img.LATENT_RESIZE:
            image = img2img.resize_image(resize_mode, image, width, height)
        if for_overlay.size != image.size:
            for_overlay = img2img.resize_image(resize_mode, for_overlay, image.width, image.height)
        overlays.append(overlay(image, for_overlay))
        if region is not None:
            image = img2img.resize_image(2, image.crop(region), width, height)
        if fill_mode == 0:  # (the latent resize mode keeps the picture's own size)
            image = fill(image, job_mask if job_mask.size == image.size else job_mask.resize(image.size))
        fitted.append(image)
    if fill_mode != 1:
        fields["Masked content"] = MASKED_CONTENT[fill_mode]
    return fitted, Inpaint(job_mask, overlays, paste_to, fill_mode, round_mask, fields)
