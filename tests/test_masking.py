"""Inpainting masks as A1111 prepares them: blur (against OpenCV, which A1111 calls), binary masks, the "Only
masked" box, "fill", the latent mask and the overlay. Whole inpainting jobs are in tests/test_img2img.py; the
sampler's blend is checked against k-diffusion in tests/test_samplers_kdiffusion.py -k inpainting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules import masking


def random_mask(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width)) > 0.7).astype(np.uint8) * 255)


@pytest.mark.parametrize(("size", "blur_x", "blur_y"), [
    ((64, 48), 4, 4), ((64, 48), 0, 7), ((33, 17), 2.5, 1), ((7, 5), 4, 4), ((128, 96), 16, 3), ((1, 9), 3, 3),
])
def test_mask_blur_is_opencvs_gaussian_blur_as_a1111_calls_it(size, blur_x, blur_y) -> None:
    """A1111: ``cv2.GaussianBlur(mask, (2·int(2.5·σx + 0.5) + 1, 1), σx)`` then the same vertically with σy —
    equal to the bit (OpenCV's fixed-point arithmetic for 8-bit pictures included)."""
    import cv2

    mask = random_mask(*size, seed=size[0])
    expected = np.asarray(mask)
    if blur_x > 0:
        expected = cv2.GaussianBlur(expected, (2 * int(2.5 * blur_x + 0.5) + 1, 1), blur_x)
    if blur_y > 0:
        expected = cv2.GaussianBlur(expected, (1, 2 * int(2.5 * blur_y + 0.5) + 1), blur_y)
    ours = np.asarray(masking.gaussian_blur(mask, blur_x, blur_y)).astype(np.int16)
    assert np.array_equal(ours, expected.astype(np.int16)), np.abs(ours - expected).max()


def test_binary_mask_takes_alpha_when_there_is_transparency_else_grey() -> None:
    painted = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    for x, alpha in enumerate((0, 128, 129, 255)):
        painted.putpixel((x, 0), (200, 10, 10, alpha))
    # the stroke's colour is ignored; painted means alpha above 128
    assert list(np.asarray(masking.binary_mask(painted)).ravel()) == [0, 0, 255, 255]
    assert list(np.asarray(masking.binary_mask(painted, round_alpha=False)).ravel()) == [0, 128, 129, 255]
    opaque = Image.new("RGBA", (2, 1), (255, 255, 255, 255))
    opaque.putpixel((0, 0), (0, 0, 0, 255))
    assert list(np.asarray(masking.binary_mask(opaque)).ravel()) == [0, 255]  # no transparency: the grey level
    assert list(np.asarray(masking.binary_mask(Image.new("RGB", (1, 1), (255, 0, 0)))).ravel()) == [76]


def test_crop_region_and_its_expansion_to_the_job_aspect_ratio() -> None:
    """Numbers worked by hand from A1111's ``get_crop_region_v2`` and ``expand_crop_region``."""
    mask = Image.new("L", (200, 100))
    ImageDraw.Draw(mask).rectangle((50, 40, 69, 59), fill=255)  # the box (50, 40, 70, 60)
    assert masking.crop_region(mask, 0) == (50, 40, 70, 60)
    assert masking.crop_region(mask, 10) == (40, 30, 80, 70)
    assert masking.crop_region(mask, 500) == (0, 0, 200, 100)  # kept inside the picture
    assert masking.crop_region(Image.new("L", (8, 8)), 4) is None  # empty
    assert masking.expand_crop_region((40, 30, 80, 70), 64, 32, 200, 100) == (20, 30, 100, 70)  # wider, centred
    assert masking.expand_crop_region((40, 30, 80, 70), 32, 64, 200, 100) == (40, 10, 80, 90)  # taller
    assert masking.expand_crop_region((90, 40, 100, 60), 64, 64, 100, 100) == (80, 40, 100, 60)  # shifted inside
    assert masking.expand_crop_region((0, 0, 100, 10), 64, 64, 100, 40) == (0, 0, 100, 40)  # as tall as it can be


def test_fill_paints_the_hole_with_its_surroundings_and_keeps_the_rest() -> None:
    picture = Image.new("RGB", (64, 64), (220, 0, 0))
    picture.paste((0, 0, 220), (32, 0, 64, 64))  # red left, blue right
    hole = Image.new("L", (64, 64))
    ImageDraw.Draw(hole).rectangle((20, 20, 43, 43), fill=255)
    filled = np.asarray(masking.fill(picture, hole)).astype(np.int16)
    original = np.asarray(picture).astype(np.int16)
    outside = np.asarray(hole) == 0
    assert np.abs(filled[outside] - original[outside]).max() <= 1
    left, right = filled[30, 22], filled[30, 41]  # inside the hole, near each side
    assert left[0] > left[2] + 50 and right[2] > right[0] + 50, (left, right)


def test_latent_mask_is_the_rounded_mask_at_latent_size() -> None:
    mask = Image.new("L", (64, 32))
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 31), fill=255)
    redraw = masking.latent_mask(mask, 4, 8)
    assert redraw.shape == (1, 1, 4, 8) and set(redraw.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(redraw[0, 0, :, :4], torch.ones(4, 4)) and torch.equal(redraw[0, 0, :, 4:], torch.zeros(4, 4))
    soft = masking.latent_mask(Image.new("L", (8, 8), 100), 1, 1, round_mask=False)
    assert abs(float(soft) - 100 / 255) < 1e-6


def test_overlay_brings_back_the_unmasked_picture_exactly() -> None:
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    result = Image.new("RGB", (32, 32), (0, 255, 0))
    mask = Image.new("L", (32, 32))
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 31), fill=255)
    laid = np.asarray(masking.apply_overlay(result, None, masking.overlay(picture, mask)))
    assert np.array_equal(laid[:, 16:], np.asarray(picture)[:, 16:])
    assert (laid[:, :16] == (0, 255, 0)).all()
    # "Only masked": the 16×16 result goes back to its box, the rest is the picture
    small = Image.new("RGB", (16, 16), (0, 255, 0))
    put = np.asarray(masking.apply_overlay(small, (0, 8, 16, 16), masking.overlay(picture, mask)))
    assert (put[8:24, :16] == (0, 255, 0)).all() and np.array_equal(put[:, 16:], np.asarray(picture)[:, 16:])
