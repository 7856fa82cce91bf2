"""img2img on the tiny model: A1111's resize modes and step counts, and whole jobs against diffusers' own
``StableDiffusionImg2ImgPipeline``.

The sampler arithmetic of a mid-schedule start is measured against k-diffusion (A1111's sampler library) in
``tests/test_samplers_kdiffusion.py -k img2img``; the API in ``test_api_compat.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import img2img, infotext, samplers
from modules.processing import process
from modules.processing_params import GenerationParams, ParamsError

BASE = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=8, width=64, height=64,
            seed=1234, save_images=False, sampler_name="Euler")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth picture with some structure (a gradient and a disc), as a photo would have."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(width, height) * 0.25) ** 2
    rgb = np.stack([x / width * 200, y / height * 180, np.full_like(x, 40.0 + seed)], axis=-1)
    rgb[disc] = (230, 40, 30)
    return Image.fromarray(rgb.astype(np.uint8))


def halves(width: int, height: int, split: str) -> Image.Image:
    """Red then blue: top/bottom halves (``split="rows"``) or left/right (``"columns"``)."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    box = (0, height // 2, width, height) if split == "rows" else (width // 2, 0, width, height)
    image.paste((0, 0, 255), box)
    return image


@pytest.fixture
def state(make_state):
    return make_state()


# ----------------------------------------------------------------------------------- A1111's resize modes

def test_just_resize_stretches() -> None:
    source = picture(300, 100)
    assert np.array_equal(pixels(img2img.resize_image(0, source, 128, 96)),
                          pixels(source.resize((128, 96), Image.Resampling.LANCZOS)))


@pytest.mark.parametrize(("size", "scaled", "crop"), [
    ((300, 100), (384, 128), (128, 0, 256, 128)),  # wide: scaled to the height, the sides cut
    ((100, 300), (128, 384), (0, 128, 128, 256)),  # tall: scaled to the width, top and bottom cut
])
def test_crop_and_resize_covers_then_cuts_the_centre(size, scaled, crop) -> None:
    """Numbers from A1111's ``resize_image`` mode 1 for a 128×128 job: the picture is scaled to cover it and
    centred (pasted at ``128 // 2 - scaled // 2``)."""
    source = picture(*size)
    expected = source.resize(scaled, Image.Resampling.LANCZOS).crop(crop)
    assert np.array_equal(pixels(img2img.resize_image(1, source, 128, 128)), pixels(expected))


@pytest.mark.parametrize("split", ["rows", "columns"])
def test_resize_and_fill_stretches_the_edges_over_the_bands(split: str) -> None:
    """Mode 2 for a 128×128 job: the picture is scaled to fit (300×100 → 128×42, pasted 43 px down), and the bands
    take the picture's outermost pixels — here the red top (left) and the blue bottom (right)."""
    wide = split == "rows"
    source = halves(300, 100, split) if wide else halves(100, 300, split)
    out = pixels(img2img.resize_image(2, source, 128, 128))
    inner = pixels(source.resize((128, 42) if wide else (42, 128), Image.Resampling.LANCZOS))
    middle = out[43:85] if wide else out[:, 43:85]
    first_band, last_band = (out[:43], out[85:]) if wide else (out[:, :43], out[:, 85:])
    assert np.array_equal(middle, inner)
    assert np.abs(first_band - [255, 0, 0]).max() <= 1 and np.abs(last_band - [0, 0, 255]).max() <= 1


def test_latent_upscale_mode_keeps_the_picture_and_resizes_latents() -> None:
    source = picture(40, 32)
    assert img2img.resize_image(3, source, 64, 64) is source
    latents = torch.randn(1, 4, 4, 5)
    resized = img2img.resize_latents(latents, 3, 64, 48)
    assert resized.shape == (1, 4, 6, 8)
    assert torch.equal(resized, torch.nn.functional.interpolate(latents, size=(6, 8), mode="bilinear"))
    assert img2img.resize_latents(latents, 0, 64, 48) is latents


def test_transparency_is_flattened_onto_the_background_setting() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (200, 200, 200, 0))  # fully transparent
    flat = img2img.flatten(rgba, "#00ff00")
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (0, 255, 0) and flat.getpixel((1, 1)) == (10, 20, 30)


@pytest.mark.parametrize(("steps", "strength", "fix", "total", "run"), [
    (20, 0.75, False, 20, 16),  # int(0.75 · 20) + 1
    (20, 1.0, False, 20, 20),  # int(0.999 · 20) + 1
    (20, 0.0, False, 20, 1),  # A1111 runs one step even at strength 0
    (4, 0.3, False, 4, 2),
    (20, 0.5, True, 40, 20),  # "do exactly the amount of steps the slider specifies": the hires plan
    (20, 0.0, True, 0, 0),
])
def test_step_plan_is_a1111s(steps, strength, fix, total, run) -> None:
    plan = img2img.step_plan(steps, strength, fix)
    assert (plan.total, plan.run) == (total, run)


def test_batches_from_one_or_several_pictures() -> None:
    one, two = [picture()], [picture(), picture(seed=9)]
    assert len(img2img.batch_pictures(one, 3, 64, 64, 0, "#fff")) == 3
    assert img2img.batch_size_for(two, 4) == 2 and img2img.batch_size_for(one, 4) == 4
    with pytest.raises(img2img.Img2ImgError, match="3 init images were sent for a batch of 2"):
        img2img.batch_pictures([*two, picture()], 2, 64, 64, 0, "#fff")
    with pytest.raises(img2img.Img2ImgError, match="must all have one size"):
        img2img.batch_pictures([picture(64, 64), picture(32, 64)], 2, 64, 64, 3, "#fff")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"denoising_strength": 1.5}, "denoising_strength must be from 0 to 1"),
    ({"resize_mode": 4}, "resize_mode must be from 0 to 3"),
    ({"initial_noise_multiplier": 2.0}, "initial_noise_multiplier must be from 0 to 1.5"),
    ({"enable_hr": True}, "Hires. fix is a txt2img feature"),
    ({"init_images": (picture(), picture(), picture())}, "3 init images were sent for a batch of 1"),
    ({"init_images": (picture(5000, 64),), "resize_mode": 3}, "each side must be from 8 to 4096"),
    ({"init_images": ("not a picture",)}, "init_images must be pictures"),
])
def test_impossible_img2img_values_are_refused_naming_the_field(change: dict, fragment: str) -> None:
    with pytest.raises(ParamsError, match=None) as caught:
        GenerationParams(**{**BASE, "init_images": (picture(),), **change}).validate()
    assert fragment in str(caught.value)


# ---------------------------------------------------------------------------------------- whole jobs

def encode_mean(pipe, image: Image.Image) -> torch.Tensor:
    """The picture's latents by the VAE's own API (posterior mean, scaled)."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (255.0 * ((out[0] + 1) / 2).clamp(0, 1)).permute(1, 2, 0).numpy().astype(np.uint8).astype(np.int16)


def diffusers_img2img(state, params: GenerationParams, init: Image.Image, run: int) -> Image.Image:
    """diffusers' ``StableDiffusionImg2ImgPipeline`` on the same components, fed the picture's latents (the
    posterior mean, as we encode; diffusers would sample the posterior) and a strength that makes it run ``run`` of
    ``params.steps`` steps (it runs ``int(steps · strength)``), with the seed's noise."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from test_processing import encode  # our prompt encoding (its parity with diffusers is tested there)

    pipe = state.models.current.pipe
    sampler, schedule = samplers.split_sampler_and_schedule(params.sampler_name, params.scheduler)
    vanilla = StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": samplers.create_scheduler(
        sampler, schedule, pipe.scheduler.config)})
    vanilla.set_progress_bar_config(disable=True)
    return vanilla(prompt_embeds=encode(pipe, [params.prompt]), negative_prompt_embeds=encode(pipe, [
        params.negative_prompt]), image=encode_mean(pipe, init), strength=run / params.steps,
        num_inference_steps=params.steps, guidance_scale=params.cfg_scale,
        generator=torch.Generator().manual_seed(params.seed)).images[0]


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_img2img_job_equals_diffusers_img2img_pipeline(state, sampler: str) -> None:
    """Strength 0.5 of 8 steps: A1111 runs int(0.5 · 8) + 1 = 5 of them; diffusers runs 5 with strength 5/8."""
    init = picture()
    params = GenerationParams(**{**BASE, "sampler_name": sampler, "init_images": (init,), "denoising_strength": 0.5})
    ours = process(state, params)
    expected = diffusers_img2img(state, params, init, run=5)
    assert np.abs(pixels(ours.images[0]) - pixels(expected)).max() <= 1  # diffusers rounds, A1111 truncates
    txt2img = process(state, GenerationParams(**{**BASE, "sampler_name": sampler}))
    assert np.abs(pixels(ours.images[0]) - pixels(txt2img.images[0])).mean() > 5  # it did start from the picture


def test_no_step_run_is_the_picture_round_tripped_through_the_vae(state) -> None:
    """With "do exactly the amount of steps the slider specifies" and strength 0 nothing runs: the result is the
    fitted picture encoded and decoded by the VAE's own API — for the latent resize mode, with the latents resized
    in between."""
    pipe = state.models.current.pipe
    state.opts.set("img2img_fix_steps", True, run_callbacks=False)
    source = picture(96, 64)
    cropped = process(state, GenerationParams(**{**BASE, "init_images": (source,), "denoising_strength": 0.0,
                                                 "resize_mode": 1}))
    fitted = img2img.resize_image(1, source, 64, 64)
    assert np.abs(pixels(cropped.images[0]) - decode(pipe, encode_mean(pipe, fitted))).max() <= 1
    small = picture(32, 32)
    latent = process(state, GenerationParams(**{**BASE, "init_images": (small,), "denoising_strength": 0.0,
                                                "resize_mode": 3}))
    upscaled = torch.nn.functional.interpolate(encode_mean(pipe, small), size=(8, 8), mode="bilinear")
    assert latent.images[0].size == (64, 64)
    assert np.abs(pixels(latent.images[0]) - decode(pipe, upscaled)).max() <= 1


def test_batch_of_one_picture_follows_the_seeds_and_several_pictures_set_the_batch(state) -> None:
    common = {**BASE, "sampler_name": "Euler a", "denoising_strength": 0.6}
    batch = process(state, GenerationParams(**{**common, "init_images": (picture(),), "batch_size": 2}))
    alone = process(state, GenerationParams(**{**common, "init_images": (picture(),), "seed": BASE["seed"] + 1}))
    assert np.abs(pixels(batch.images[batch.index_of_first_image + 1]) - pixels(alone.images[0])).max() <= 1
    two = process(state, GenerationParams(**{**common, "init_images": (picture(), picture(seed=200)),
                                             "batch_size": 4}))
    assert two.params.batch_size == 2 and len(two.all_seeds) == 2 and len(two.images) == 3  # grid + 2
    other = process(state, GenerationParams(**{**common, "init_images": (picture(seed=200),),
                                               "seed": BASE["seed"] + 1}))
    assert np.abs(pixels(two.images[2]) - pixels(other.images[0])).max() <= 1  # picture 2 with seed + 1


def test_infotext_noise_multiplier_and_output_folder(state) -> None:
    common = {**BASE, "init_images": (picture(),), "denoising_strength": 0.5}
    plain = process(state, GenerationParams(**{**common, "save_images": True}))
    line = plain.infotexts[0].splitlines()[-1]
    assert line.index("Model: tiny") < line.index("Denoising strength: 0.5") < line.index("Version")
    assert "Noise multiplier" not in line and plain.info()["denoising_strength"] == 0.5
    assert plain.saved_paths[0].parent.parent.name == "img2img-images"
    assert state.job.job == ""
    quieter = process(state, GenerationParams(**{**common, "initial_noise_multiplier": 0.5}))
    assert "Noise multiplier: 0.5" in quieter.infotexts[0]
    assert np.abs(pixels(quieter.images[0]) - pixels(plain.images[0])).max() > 0
    parsed = infotext.parse(quieter.infotexts[0])
    assert parsed["Noise multiplier"] == "0.5" and parsed["Denoising strength"] == "0.5"
    state.opts.set("initial_noise_multiplier", 0.5, run_callbacks=False)  # the setting, when the job names none
    from_setting = process(state, GenerationParams(**common))
    assert np.array_equal(pixels(from_setting.images[0]), pixels(quieter.images[0]))


# ------------------------------------------------------------------------------------------- inpainting

def left_mask(width: int = 64, height: int = 64, right: int = 27) -> Image.Image:
    mask = Image.new("L", (width, height))
    mask.paste(255, (0, 0, right + 1, height))
    return mask


def test_inpainting_keeps_the_unmasked_picture_and_writes_a1111s_fields(state) -> None:
    source = picture()
    common = {**BASE, "init_images": (source,), "denoising_strength": 0.8, "mask": left_mask(),
              "inpaint_full_res": False, "inpainting_fill": 1}
    result = process(state, GenerationParams(**common))
    ours, original = pixels(result.images[0]), pixels(source)
    assert np.array_equal(ours[:, 40:], original[:, 40:])  # beyond the blurred edge: the picture itself
    assert np.abs(ours[:, :20] - original[:, :20]).mean() > 5
    line = result.infotexts[0].splitlines()[-1]
    assert "Denoising strength: 0.8, Mask blur: 4, Version" in line
    inverted = process(state, GenerationParams(**{**common, "inpainting_mask_invert": 1}))
    flipped = pixels(inverted.images[0])
    assert np.array_equal(flipped[:, :12], original[:, :12]) and np.abs(flipped[:, 44:] - original[:, 44:]).mean() > 5
    assert "Mask mode: Inpaint not masked, Mask blur: 4" in inverted.infotexts[0]
    contents = {}
    for fill in (0, 2, 3):
        job = process(state, GenerationParams(**{**common, "inpainting_fill": fill}))
        assert f"Masked content: {('fill', 'original', 'latent noise', 'latent nothing')[fill]}" in job.infotexts[0]
        contents[fill] = pixels(job.images[0])
        assert np.array_equal(contents[fill][:, 40:], original[:, 40:])
    assert all(np.abs(contents[f][:, :20] - ours[:, :20]).max() > 0 for f in contents)  # each starts elsewhere
    sharp = process(state, GenerationParams(**{**common, "mask_blur_x": 0, "mask_blur_y": 0}))
    assert np.array_equal(pixels(sharp.images[0])[:, 28:], original[:, 28:]) and "Mask blur" not in sharp.infotexts[0]


def test_only_masked_redraws_the_box_at_the_job_size_and_pastes_it_back(state) -> None:
    """"Only masked": the masked box (grown by the padding, then to the job's aspect ratio) is redrawn at the
    job's size and pasted back; the result has the picture's size and is the picture outside the box."""
    source = picture(128, 96)
    mask = Image.new("L", (128, 96))
    mask.paste(255, (60, 30, 80, 50))
    params = GenerationParams(**{**BASE, "init_images": (source,), "denoising_strength": 0.9, "mask": mask,
                                 "inpaint_full_res": True, "inpaint_full_res_padding": 6, "mask_blur_x": 0,
                                 "mask_blur_y": 0, "inpainting_fill": 1})
    result = process(state, params)
    ours, original = pixels(result.images[0]), pixels(source)
    assert result.images[0].size == (128, 96)
    # box (54, 24, 86, 56): 32×32, already square like the 64×64 job
    outside = np.ones((96, 128), dtype=bool)
    outside[24:56, 54:86] = False
    assert np.array_equal(ours[outside], original[outside])
    assert np.abs(ours[30:50, 60:80] - original[30:50, 60:80]).mean() > 5
    assert "Inpaint area: Only masked, Masked area padding: 6" in result.infotexts[0]
    assert "Size: 64x64" in result.infotexts[0]  # the size the sampler worked at, as A1111 writes
    empty = process(state, GenerationParams(**{**BASE, "init_images": (source,), "denoising_strength": 0.9,
                                               "mask": Image.new("L", (128, 96)), "inpaint_full_res": True}))
    plain = process(state, GenerationParams(**{**BASE, "init_images": (source,), "denoising_strength": 0.9}))
    assert 'Unable to perform "Inpaint Only mask" because mask is blank' in " ".join(empty.comments)
    assert np.array_equal(pixels(empty.images[0]), pixels(plain.images[0]))


# ------------------------------------------------------------------------------------- on the demo model

@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory):
    """The shipped demo model (trained: its VAE round-trips pictures, its UNet follows prompts)."""
    from modules.training import demo_networks as dn
    from scripts.evaluate_demo_networks import open_demo_state

    state = open_demo_state(dn.DEMO_CHECKPOINT, dn.NETWORKS_DIR, tmp_path_factory.mktemp("demo-img2img"))
    yield state
    state.queue.shutdown()


def test_on_the_demo_model_the_same_prompt_keeps_the_picture_and_another_repaints_it(demo_state) -> None:
    """What a user sees: img2img of a red circle on blue with its own prompt gives the picture back (at strength
    0.5 as at 0.1), and with another prompt at strength 1 gives what txt2img makes of that prompt (its colours).
    Measured 2026-11-23: same prompt 1.9–2.2 levels off; strength 1 mean colour within 1 level of txt2img's."""
    common = dict(width=64, height=64, cfg_scale=5, steps=20, seed=7, save_images=False, sampler_name="Euler")
    red, green = "a red circle on a blue background", "a green square on a yellow background"
    source = process(demo_state, GenerationParams(prompt=red, **common)).images[0]
    for strength in (0.1, 0.5):
        kept = process(demo_state, GenerationParams(prompt=red, init_images=(source,), denoising_strength=strength,
                                                    **common)).images[0]
        assert np.abs(pixels(kept) - pixels(source)).mean() < 6, strength
    repainted = process(demo_state, GenerationParams(prompt=green, init_images=(source,), denoising_strength=1.0,
                                                     **common)).images[0]
    target = process(demo_state, GenerationParams(prompt=green, **common)).images[0]
    assert np.abs(pixels(repainted) - pixels(source)).mean() > 60
    assert np.abs(pixels(repainted).reshape(-1, 3).mean(0) - pixels(target).reshape(-1, 3).mean(0)).max() < 15


def test_on_the_demo_model_inpainting_repaints_only_the_masked_half(demo_state) -> None:
    """Red circle on blue, the left half masked, redrawn as "a green square on a yellow background": the right half
    stays the picture to the pixel, the left half takes the new prompt's colours (more red and green than blue)."""
    common = dict(width=64, height=64, cfg_scale=5, steps=20, seed=7, save_images=False, sampler_name="Euler")
    source = process(demo_state, GenerationParams(prompt="a red circle on a blue background", **common)).images[0]
    result = process(demo_state, GenerationParams(
        prompt="a green square on a yellow background", init_images=(source,), mask=left_mask(), denoising_strength=1.0,
        inpaint_full_res=False, inpainting_fill=1, **common)).images[0]
    ours, original = pixels(result), pixels(source)
    assert np.array_equal(ours[:, 40:], original[:, 40:])
    left = ours[:, :20].reshape(-1, 3).mean(0)
    before = original[:, :20].reshape(-1, 3).mean(0)
    assert before[2] > before[1] + 50 and left[1] > left[2] + 50, (before, left)  # blue → yellow/green
