"""Hires. fix on the tiny model: A1111's sizes and step plan, and the whole second pass against diffusers' own
txt2img → latent upscale → img2img pipelines.

The sampler arithmetic of the mid-schedule start is measured against k-diffusion (A1111's sampler library) in
``tests/test_samplers_kdiffusion.py -k img2img``; the API and the page are tested in ``test_api_compat.py`` and
``test_browser_ui.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import hires, infotext, samplers
from modules.processing import process
from modules.processing_params import GenerationParams, ParamsError

BASE = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=4, width=64, height=64,
            seed=1234, save_images=False, sampler_name="Euler")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture
def state(make_state):
    return make_state()


# ------------------------------------------------------------------------------------------ sizes and steps

@pytest.mark.parametrize(("size", "scale", "resize", "upscale_to", "final"), [
    ((512, 512), 2.0, (0, 0), (1024, 1024), (1024, 1024)),
    ((512, 768), 1.5, (0, 0), (768, 1152), (768, 1152)),
    ((512, 512), 1.3, (0, 0), (665, 665), (664, 664)),  # int(665.6); the latent is 83 cells
    ((512, 768), 2.0, (1024, 0), (1024, 1536), (1024, 1536)),  # height keeps the aspect ratio
    ((512, 768), 2.0, (0, 1024), (682, 1024), (680, 1024)),  # 1024·512 // 768
    # both: cover the asked size with the first pass's aspect ratio, then crop the latent to it
    ((512, 768), 2.0, (1024, 1024), (1024, 1536), (1024, 1024)),
    ((768, 512), 2.0, (1024, 1024), (1536, 1024), (1024, 1024)),
    ((512, 512), 2.0, (1024, 768), (1024, 1024), (1024, 768)),
])
def test_target_size_is_a1111s(size, scale, resize, upscale_to, final) -> None:
    """Numbers worked by hand from A1111's ``calculate_target_resolution``."""
    params = GenerationParams(width=size[0], height=size[1], enable_hr=True, hr_scale=scale, hr_resize_x=resize[0],
                              hr_resize_y=resize[1])
    target = hires.target_size(params)
    assert (target.upscale_width, target.upscale_height) == upscale_to
    assert (target.width, target.height) == final


def test_truncate_cuts_half_from_each_side_the_odd_one_at_the_end() -> None:
    target = hires.Target(1024, 1536, truncate_x=0, truncate_y=64)
    latents = torch.arange(192, dtype=torch.float32).view(1, 1, 192, 1).expand(1, 4, 192, 128)
    cut = hires.truncate(latents, target)
    assert cut.shape == (1, 4, 128, 128) and cut[0, 0, 0, 0] == 32 and cut[0, 0, -1, 0] == 159
    odd = hires.truncate(latents, hires.Target(1024, 1536, truncate_y=3))
    assert odd.shape[2] == 189 and odd[0, 0, 0, 0] == 1 and odd[0, 0, -1, 0] == 189


@pytest.mark.parametrize(("steps", "strength", "total", "skip"), [
    (20, 0.7, 28, 8), (20, 0.75, 26, 6), (20, 1.0, 20, 0), (10, 0.5, 20, 10), (4, 0.3, 13, 9), (20, 0.0, 0, 0),
])
def test_step_plan_is_a1111s_img2img_with_steps_given(steps, strength, total, skip) -> None:
    """``setup_img2img_steps`` with ``steps`` given: ``int(steps / min(strength, 0.999))`` scheduled, the last
    ``steps`` run (strength 1 runs the whole schedule; 0 runs nothing)."""
    plan = hires.step_plan(steps, strength)
    assert (plan.total, plan.skip) == (total, skip)
    assert plan.run == (steps if strength else 0)


@pytest.mark.parametrize(("change", "fragment"), [
    ({"denoising_strength": 1.2}, "denoising_strength must be from 0 to 1"),
    ({"hr_upscaler": "ESRGAN_4x"}, "hr_upscaler 'ESRGAN_4x' is not available here; use one of: Latent"),
    ({"hr_scale": 9.0}, "hr_scale"),
    ({"hr_scale": 0.5, "width": 64}, "would make the width 32 pixels"),
    ({"hr_resize_x": 8192}, "hr_resize_x must be from 0 to 4096"),
    ({"height": 512, "hr_resize_x": 4096, "hr_resize_y": 64}, "would upscale to 4096x32768 before cropping to "
                                                              "4096x64"),
    ({"hr_sampler_name": "Restart"}, "hires pass: "),
    ({"hr_scheduler": "Polyexponential"}, "hires pass: "),
    ({"hr_second_pass_steps": -1}, "hr_second_pass_steps"),
])
def test_impossible_hires_values_are_refused_naming_the_field(change: dict, fragment: str) -> None:
    with pytest.raises(ParamsError) as caught:
        GenerationParams(**{**BASE, "enable_hr": True, **change}).validate()
    assert fragment in str(caught.value)
    GenerationParams(**{**BASE, "enable_hr": False, **change}).validate()  # off: the hires fields are not used


# ---------------------------------------------------------------------------------------- the whole job

def vanilla_chain(state, params: GenerationParams, hires_sampler: str, hires_schedule: str,
                  hires_pipe=None) -> Image.Image:
    """What the hires job must equal, built from diffusers' own pipelines: ``StableDiffusionPipeline`` for the
    first pass (Euler: our loop equals it, tests/test_processing.py), ``interpolate`` to twice the latent size
    (the "Latent" upscaler), and ``StableDiffusionImg2ImgPipeline`` (on ``hires_pipe``'s components when given:
    a hires checkpoint, whose VAE also decodes) with ``strength = run / total`` over a ``total``-step schedule,
    from the seed's noise at the new size."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from test_processing import encode  # our prompt encoding (its parity with diffusers is tested there)

    pipe = state.models.current.pipe
    hires_pipe = hires_pipe or pipe
    cond, uncond = encode(pipe, [params.prompt]), encode(pipe, [params.negative_prompt])
    first_sampler, first_schedule = samplers.split_sampler_and_schedule(params.sampler_name, params.scheduler)
    txt2img = StableDiffusionPipeline(**{**pipe.components, "scheduler": samplers.create_scheduler(
        first_sampler, first_schedule, pipe.scheduler.config)})
    txt2img.set_progress_bar_config(disable=True)
    latents = txt2img(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=params.steps,
                      guidance_scale=params.cfg_scale, height=params.height, width=params.width,
                      generator=torch.Generator().manual_seed(params.seed), output_type="latent").images
    upscaled = torch.nn.functional.interpolate(latents, scale_factor=2, mode="bilinear")

    sampler, schedule = samplers.split_sampler_and_schedule(hires_sampler, hires_schedule)
    plan = hires.step_plan(params.hr_second_pass_steps or params.steps, params.denoising_strength)
    img2img = StableDiffusionImg2ImgPipeline(**{**hires_pipe.components, "scheduler": samplers.create_scheduler(
        sampler, schedule, hires_pipe.scheduler.config)})
    img2img.set_progress_bar_config(disable=True)
    if hires_pipe is not pipe:
        cond, uncond = encode(hires_pipe, [params.prompt]), encode(hires_pipe, [params.negative_prompt])
    return img2img(prompt_embeds=cond, negative_prompt_embeds=uncond, image=upscaled, strength=plan.run / plan.total,
                   num_inference_steps=plan.total, guidance_scale=params.cfg_scale,
                   generator=torch.Generator().manual_seed(params.seed)).images[0]


@pytest.mark.parametrize("hires_sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_hires_job_equals_diffusers_txt2img_upscale_img2img(state, hires_sampler: str) -> None:
    # 5 of int(5 / 0.625) = 8 steps: diffusers' img2img runs int(8 · 0.625) = 5 of 8 as well
    params = GenerationParams(**{**BASE, "enable_hr": True, "denoising_strength": 0.625, "hr_second_pass_steps": 5,
                                 "hr_sampler_name": None if hires_sampler == "Euler" else hires_sampler})
    ours = process(state, params).images[0]
    assert ours.size == (128, 128)
    expected = vanilla_chain(state, params, hires_sampler, "Automatic")
    # diffusers rounds to uint8 where A1111 (and we) truncate: at most 1 apart
    assert np.abs(pixels(ours) - pixels(expected)).max() <= 1


def test_hires_checkpoint_runs_the_second_pass_and_the_job_model_comes_back(state) -> None:
    """A1111's Hires checkpoint: the second pass (its text encoder, UNet and, for the final picture, VAE) runs on
    the other checkpoint, the infotext names it by its short title, and afterwards the job's checkpoint is current
    again with its weights untouched."""
    import hashlib

    from modules import demo_model, model_loading

    path = state.models.ckpt_dir / "other.safetensors"
    demo_model.write_checkpoint(path, seed=5)
    state.models.refresh()
    job_model = state.models.current
    weights = {k: v.clone() for k, v in job_model.pipe.unet.state_dict().items()}
    common = {**BASE, "enable_hr": True, "denoising_strength": 0.625, "hr_second_pass_steps": 5}
    params = GenerationParams(**{**common, "hr_checkpoint_name": "other"})
    result = process(state, params)
    assert state.models.current is job_model
    assert all(torch.equal(v, weights[k]) for k, v in job_model.pipe.unet.state_dict().items())
    other = model_loading.build_pipeline(model_loading.read_state_dict(path), model_loading.read_sidecar_config(path),
                                         "other")  # read here, apart from the model manager
    expected = vanilla_chain(state, params, "Euler", "Automatic", hires_pipe=other)
    assert np.abs(pixels(result.images[0]) - pixels(expected)).max() <= 1
    short_title = f"other [{hashlib.sha256(path.read_bytes()).hexdigest()[:10]}]"
    assert f"Hires checkpoint: {short_title}, " in result.infotexts[0] and "Model: tiny" in result.infotexts[0]
    same = process(state, GenerationParams(**common))
    assert np.abs(pixels(same.images[0]) - pixels(result.images[0])).max() > 10
    with pytest.raises(LookupError, match="'ghost' not found"):
        process(state, GenerationParams(**{**common, "hr_checkpoint_name": "ghost"}))
    assert state.models.current is job_model


def test_strength_zero_image_upscaler_is_the_first_pass_resized_and_round_tripped(state) -> None:
    """With an image upscaler the first pass is decoded, resized with PIL and encoded again; at strength 0 no step
    runs, so the result is that round trip of the plain txt2img image (done here with the VAE's own API)."""
    plain = process(state, GenerationParams(**BASE)).images[0]
    job = process(state, GenerationParams(**{**BASE, "enable_hr": True, "denoising_strength": 0.0,
                                             "hr_upscaler": "Nearest"}))
    vae = state.models.current.pipe.vae
    resized = plain.resize((128, 128), Image.Resampling.NEAREST)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        decoded = vae.decode(vae.encode(x).latent_dist.mean, return_dict=False)[0]
    expected = (255.0 * ((decoded[0] + 1) / 2).clamp(0, 1)).permute(1, 2, 0).numpy().astype(np.uint8)
    assert job.images[0].size == (128, 128)
    assert np.abs(pixels(job.images[0]) - expected.astype(np.int16)).max() <= 1
    text = job.infotexts[0]
    assert "Denoising strength: 0.0, Hires upscale: 2.0, Hires upscaler: Nearest" in text


def test_infotext_fields_order_and_round_trip(state) -> None:
    params = GenerationParams(**{**BASE, "enable_hr": True, "denoising_strength": 0.5, "hr_second_pass_steps": 3,
                                 "hr_upscaler": "Latent (nearest-exact)", "hr_sampler_name": "DPM++ 2M",
                                 "hr_prompt": "a [red:green:6] circle, on blue", "hr_negative_prompt": "dull"})
    text = process(state, params).infotexts[0]
    line = text.splitlines()[-1]
    order = ["Size", "Model", "Denoising strength", "Hires sampler", "Hires prompt", "Hires negative prompt",
             "Hires upscale", "Hires steps", "Hires upscaler", "Hires schedule type", "Version"]
    positions = [line.index(f"{key}: ") for key in order]
    assert positions == sorted(positions), line
    parsed = infotext.parse(text)
    assert parsed["Hires prompt"] == "a [red:green:6] circle, on blue" and parsed["Hires negative prompt"] == "dull"
    assert (parsed["Hires sampler"], parsed["Hires schedule type"]) == ("DPM++ 2M", "Karras")
    assert (parsed["Hires upscaler"], parsed["Hires steps"], parsed["Denoising strength"]) == (
        "Latent (nearest-exact)", "3", "0.5")
    plain = process(state, GenerationParams(**BASE)).infotexts[0]
    assert "Hires" not in plain and "Denoising strength" not in plain


def test_hires_prompt_editing_counts_on_from_the_first_pass(state) -> None:
    """A1111's hires timing: ``[a:b:N]`` switches at step N − (first-pass steps) of the hires pass. A switch at
    first-pass step 2 (of 4) is over before the hires pass starts, so the hires pass sees only ``b``."""
    common = {**BASE, "enable_hr": True, "denoising_strength": 0.6, "hr_second_pass_steps": 4}
    edited = process(state, GenerationParams(**{**common, "hr_prompt": "[a red circle:a green square:2]"}))
    only_b = process(state, GenerationParams(**{**common, "hr_prompt": "a green square"}))
    late = process(state, GenerationParams(**{**common, "hr_prompt": "[a red circle:a green square:6]"}))
    assert np.array_equal(pixels(edited.images[0]), pixels(only_b.images[0]))
    assert np.abs(pixels(late.images[0]) - pixels(only_b.images[0])).max() > 0


def test_hires_prompt_networks_and_missing_ones(state) -> None:
    from safetensors.torch import save_file

    from test_lora import kohya_state_dict

    pipe = state.models.current.pipe
    state.paths.lora_dir.mkdir(parents=True, exist_ok=True)
    save_file(kohya_state_dict(pipe, seed=3), str(state.paths.lora_dir / "ink.safetensors"))
    state.libraries["lora"].refresh()
    common = {**BASE, "enable_hr": True, "denoising_strength": 0.6}
    plain = process(state, GenerationParams(**common))
    tagged = process(state, GenerationParams(**{**common, "hr_prompt": BASE["prompt"] + " <lora:ink:1>"}))
    assert np.abs(pixels(tagged.images[0]) - pixels(plain.images[0])).max() > 10
    assert 'Lora hashes: "ink: ' in tagged.infotexts[0] and "Hires prompt" in tagged.infotexts[0]
    save_file(kohya_state_dict(pipe, seed=4), str(state.paths.lora_dir / "paper.safetensors"))
    state.libraries["lora"].refresh()
    both = process(state, GenerationParams(**{**common, "prompt": BASE["prompt"] + " <lora:ink:1>"}))
    assert both.infotexts[0].count("ink: ") == 1  # the first pass's, not repeated by the second
    two = process(state, GenerationParams(**{**common, "prompt": BASE["prompt"] + " <lora:ink:1>",
                                             "hr_prompt": BASE["prompt"] + " <lora:paper:1>"}))
    hashes = infotext.parse(two.infotexts[0])["Lora hashes"]
    assert [item.split(": ")[0] for item in hashes.split(", ")] == ["ink", "paper"]  # kept, then extended (A1111)
    missing = process(state, GenerationParams(**{**common, "hr_prompt": "x <lora:ghost:1>"}))
    assert "Networks not found: ghost" in missing.comments and missing.images[0].size == (128, 128)


def test_batch_seeds_and_skip_all_follow_the_image(state) -> None:
    """Image i of a hires batch is the same as its seed run alone (the noise of both passes is per image)."""
    common = {**BASE, "enable_hr": True, "denoising_strength": 0.5, "sampler_name": "Euler a"}
    batch = process(state, GenerationParams(**{**common, "batch_size": 2}))
    second = batch.images[batch.index_of_first_image + 1]
    alone = process(state, GenerationParams(**{**common, "seed": BASE["seed"] + 1})).images[0]
    assert np.abs(pixels(second) - pixels(alone)).max() <= 1
    assert batch.images[0].size == (256, 128)  # the grid of two 128 px images


def test_interrupt_in_the_first_pass_keeps_the_first_pass(state) -> None:
    """A1111 returns the first pass when the job is interrupted before the hires pass."""
    seen: list[int] = []
    original = state.job.set_step

    def interrupt_at_first_step(step: int, steps: int) -> None:
        original(step, steps)
        seen.append(state.job.job_no)
        state.job.interrupt()

    state.job.set_step = interrupt_at_first_step  # an instance attribute of our own JobState, not a library
    result = process(state, GenerationParams(**{**BASE, "enable_hr": True}))
    assert result.images[0].size == (64, 64) and seen == [0]


def test_hires_job_counts_two_passes(state) -> None:
    counts: list[tuple[int, int]] = []
    original = state.job.set_step

    def record(step: int, steps: int) -> None:
        original(step, steps)
        counts.append((state.job.job_no, state.job.job_count))

    state.job.set_step = record
    process(state, GenerationParams(**{**BASE, "enable_hr": True, "n_iter": 2, "hr_second_pass_steps": 2}))
    assert sorted(set(counts)) == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_medvram_hires_equals_normal(make_state) -> None:
    """The second pass's VAE encode and UNet follow the memory mode's placement like the first pass."""
    params = GenerationParams(**{**BASE, "enable_hr": True, "denoising_strength": 0.5, "hr_upscaler": "Lanczos"})
    normal = process(make_state(), params).images[0]
    medvram = process(make_state("--medvram"), params).images[0]
    assert np.array_equal(pixels(normal), pixels(medvram))


def test_hires_checkpoint_is_read_once_per_job_and_the_cache_limit_holds_after(state, caplog) -> None:
    """With ``sd_checkpoints_limit`` 1, a two-batch job switches four times but reads the other checkpoint once
    and the job's not at all (both stay cached for the job); afterwards only the job's model is kept."""
    import logging

    from modules import demo_model

    demo_model.write_checkpoint(state.models.ckpt_dir / "other.safetensors", seed=5)
    state.models.refresh()
    params = GenerationParams(**{**BASE, "enable_hr": True, "n_iter": 2, "hr_checkpoint_name": "other"})

    def loads() -> list[str]:
        return [r.getMessage().split("title=")[1].split(" ")[0] for r in caplog.records
                if r.getMessage().startswith("Loaded checkpoint: ")]

    with caplog.at_level(logging.INFO, logger="modules.sd_models"):
        process(state, params)
        assert loads() == ["other.safetensors"]
        process(state, params)  # the limit dropped it after the first job
        assert loads() == ["other.safetensors", "other.safetensors"]
    assert any("Unloaded checkpoint from cache: other.safetensors" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_save_a_copy_before_highres_fix(state, upscaler: str) -> None:
    """A1111's "Save a copy of image before applying highres fix": the first pass is saved beside the image as
    ``NNNNN-SEED-before-highres-fix.png`` with the job's infotext; it is the plain txt2img image of that seed."""
    common = {**BASE, "enable_hr": True, "hr_upscaler": upscaler, "save_images": True}
    off = process(state, GenerationParams(**common))
    assert [p.name.endswith("-before-highres-fix.png") for p in off.saved_paths] == [False]
    state.opts.set("save_images_before_highres_fix", True, run_callbacks=False)
    on = process(state, GenerationParams(**{**common, "batch_size": 2}))
    before = [p for p in on.saved_paths if p.name.endswith("-before-highres-fix.png")]
    assert [p.name.split("-", 1)[1] for p in before] == ["1234-before-highres-fix.png", "1235-before-highres-fix.png"]
    plain = process(state, GenerationParams(**{**BASE, "seed": 1235})).images[0]
    with Image.open(before[1]) as saved:
        # (image 2 of a batch equals its seed run alone to batch-size float noise: at most 1 level)
        assert saved.size == (64, 64) and np.abs(pixels(saved) - pixels(plain)).max() <= 1
        text = infotext.read_from_image(saved) or ""
    assert "Seed: 1235" in text and "Denoising strength: 0.75" in text and f"Hires upscaler: {upscaler}" in text
    finals = [p for p in on.saved_paths if p not in before and p.name.endswith(".png") and "grid" not in p.name]
    assert [Image.open(p).size for p in finals] == [(128, 128), (128, 128)]
