"""The txt2img core on the tiny model: seeds, samplers, parity with vanilla diffusers, infotext, saving."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from modules import infotext, prompt_encoder, rng, samplers, sampling
from modules.processing import process
from modules.processing_params import GenerationParams, ParamsError
from modules.sd_models import CheckpointNotFoundError

BASE = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=4, width=64, height=64,
            seed=1234, save_images=False)


def encode(pipe, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
    options = prompt_encoder.EncoderOptions(clip_skip=clip_skip)
    return prompt_encoder.PromptEncoder(pipe.text_encoder, pipe.tokenizer, None, options).encode(prompts)[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture
def state(make_state):
    return make_state()


def test_same_seed_same_pixels_other_seed_different(state) -> None:
    a = process(state, GenerationParams(**BASE)).images[0]
    b = process(state, GenerationParams(**BASE)).images[0]
    c = process(state, GenerationParams(**{**BASE, "seed": 1235})).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).max() > 10


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE"])
def test_batch_image_equals_its_seed_run_alone(state, sampler: str) -> None:
    """A1111: image i of a batch uses seed+i with its own generator, so it equals that seed run alone."""
    batch = process(state, GenerationParams(**{**BASE, "sampler_name": sampler, "batch_size": 3}))
    assert batch.all_seeds == [1234, 1235, 1236]
    samples = batch.images[batch.index_of_first_image:]
    for i, seed in enumerate(batch.all_seeds):
        alone = process(state, GenerationParams(**{**BASE, "sampler_name": sampler, "seed": seed}))
        assert np.abs(pixels(samples[i]) - pixels(alone.images[0])).max() <= 1, (sampler, i)


def test_n_iter_continues_the_seeds(state) -> None:
    result = process(state, GenerationParams(**{**BASE, "n_iter": 2, "batch_size": 2}))
    assert result.all_seeds == [1234, 1235, 1236, 1237]
    assert result.index_of_first_image == 1 and len(result.images) == 5  # grid first
    assert result.images[0].size == (128, 128)
    assert [t.split("Seed: ")[1].split(",")[0] for t in result.infotexts[1:]] == ["1234", "1235", "1236", "1237"]


def test_our_loop_matches_vanilla_diffusers(state) -> None:
    """Same embeddings, scheduler and per-image generators: our loop and StableDiffusionPipeline agree."""
    pipe = state.models.current.pipe
    cond = encode(pipe, [BASE["prompt"]] * 2)
    uncond = encode(pipe, [BASE["negative_prompt"]] * 2)
    sampler, schedule = samplers.split_sampler_and_schedule("Euler a", None)
    seeds = [7, 8]
    noise, generators = rng.initial_noise((4, 8, 8), seeds, seeds, 0.0, torch.device("cpu"))
    run = samplers.create_run(sampler, schedule, pipe.scheduler.config, seeds, generators)
    ours = sampling.denoise(pipe.unet, run, noise, sampling.Guidance.fixed(cond, uncond, 7.0), 6)

    from diffusers import StableDiffusionPipeline

    vanilla = StableDiffusionPipeline(**{**pipe.components,
                                         "scheduler": samplers.create_scheduler(sampler, schedule, pipe.scheduler.config)})
    vanilla.set_progress_bar_config(disable=True)
    latents = vanilla(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=6, guidance_scale=7.0,
                      height=64, width=64, generator=[torch.Generator().manual_seed(s) for s in seeds],
                      output_type="latent").images
    assert torch.allclose(ours, latents, atol=1e-5, rtol=1e-5), (ours - latents).abs().max()


def test_short_prompt_embeddings_match_diffusers_and_clip_skip_is_a1111_minus_one(state) -> None:
    pipe = state.models.current.pipe
    ours = encode(pipe, [BASE["prompt"]], 1)
    theirs, _ = pipe.encode_prompt(BASE["prompt"], "cpu", 1, False)
    assert torch.allclose(ours, theirs, atol=1e-6)
    # diffusers' own clip_skip path reads ``text_encoder.text_model``, which transformers >= 5.6 removed, so the
    # reference is its documented formula: hidden_states[-(clip_skip + 1)] then the final layer norm.
    ids = pipe.tokenizer(BASE["prompt"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
    for a1111_skip in (2, 3):
        reference = pipe.text_encoder.final_layer_norm(hidden[-((a1111_skip - 1) + 1)])
        ours = encode(pipe, [BASE["prompt"]], a1111_skip)
        assert torch.allclose(ours, reference, atol=1e-6), a1111_skip
        assert not torch.allclose(ours, theirs, atol=1e-3)


def test_long_prompt_is_encoded_in_75_token_chunks_not_truncated(state) -> None:
    pipe = state.models.current.pipe
    long_prompt = ", ".join(f"word{i}" for i in range(60))  # well over 75 tokens
    encoder = prompt_encoder.PromptEncoder(pipe.text_encoder, pipe.tokenizer)
    used, available = encoder.token_count(long_prompt)
    assert used > 75 and available == 75 * ((used + 74) // 75)
    embeds = encoder.encode([long_prompt, "short"])[0]
    assert embeds.shape == (2, 77 * (available // 75), pipe.text_encoder.config.hidden_size)
    # cond (k chunks) and uncond (1 chunk) of different lengths still generate (two UNet passes, as A1111)
    result = process(state, GenerationParams(**{**BASE, "prompt": long_prompt}))
    assert result.images[0].size == (64, 64)


def test_variation_seed_strength_one_gives_the_subseed_noise() -> None:
    """slerp(1, a, b) == b: a full-strength variation is the subseed's own noise (A1111's formula)."""
    shape = (4, 8, 8)
    noise, _ = rng.initial_noise(shape, [5], [99], 1.0, torch.device("cpu"))
    plain, _ = rng.initial_noise(shape, [99], [0], 0.0, torch.device("cpu"))
    assert torch.allclose(noise, plain, atol=1e-5)
    half, _ = rng.initial_noise(shape, [5], [99], 0.5, torch.device("cpu"))
    assert not torch.allclose(half, plain, atol=1e-2)


def test_variation_seed_rules_and_infotext(state) -> None:
    result = process(state, GenerationParams(**{**BASE, "batch_size": 2, "subseed": 50, "subseed_strength": 0.3}))
    assert result.all_seeds == [1234, 1234] and result.all_subseeds == [50, 51]
    fields = infotext.parse(result.infotexts[1])
    assert fields["Variation seed"] == "50" and fields["Variation seed strength"] == "0.3"


@pytest.mark.parametrize("sampler", [s.name for s in samplers.SAMPLERS])
def test_every_listed_sampler_makes_a_valid_image(state, sampler: str) -> None:
    result = process(state, GenerationParams(**{**BASE, "sampler_name": sampler, "steps": 3}))
    image = pixels(result.images[0])
    assert image.shape == (64, 64, 3) and image.std() > 1
    assert f"Sampler: {sampler}," in result.infotexts[0]


@pytest.mark.parametrize(("sampler", "schedule"), [("Euler", "Karras"), ("DPM++ 2M", "Exponential"),
                                                   ("DPM++ 2M", "Beta"), ("Euler", "SGM Uniform")])
def test_schedule_types_change_the_result(state, sampler: str, schedule: str) -> None:
    uniform = process(state, GenerationParams(**{**BASE, "sampler_name": sampler, "scheduler": "Uniform"}))
    other = process(state, GenerationParams(**{**BASE, "sampler_name": sampler, "scheduler": schedule}))
    assert np.abs(pixels(uniform.images[0]) - pixels(other.images[0])).max() > 0
    assert f"Schedule type: {schedule}," in other.infotexts[0]


def test_old_combined_sampler_names_and_errors() -> None:
    sampler, schedule = samplers.split_sampler_and_schedule("DPM++ 2M Karras", None)
    assert (sampler.name, schedule) == ("DPM++ 2M", "Karras")
    assert samplers.split_sampler_and_schedule("k_euler_a", "automatic")[0].name == "Euler a"
    with pytest.raises(samplers.SamplerError, match="unknown sampler 'Eulr'; use one of: DPM\\+\\+ 2M"):
        samplers.find_sampler("Eulr")
    with pytest.raises(samplers.SamplerError, match="'DPM\\+\\+ 2S a' is not available here"):
        samplers.find_sampler("DPM++ 2S a")
    with pytest.raises(samplers.SamplerError, match="does not work with sampler 'DDIM'"):
        samplers.split_sampler_and_schedule("DDIM", "Karras")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("width", 65, "width must be a multiple of 8.*use 64 or 72"), ("height", 32, "height must be from 64"),
    ("steps", 0, "steps must be from 1"), ("sampler_name", "nope", "unknown sampler 'nope'"),
    ("cfg_scale", float("nan"), "cfg_scale must be a number"), ("batch_size", 0, "batch_size must be from 1"),
    ("subseed_strength", 2.0, "subseed_strength must be from 0 to 1"), ("seed", "12", "seed must be a whole number"),
])
def test_bad_parameters_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        GenerationParams(**{**BASE, field: value}).validate()


def test_unknown_checkpoint_in_overrides(state) -> None:
    with pytest.raises(CheckpointNotFoundError, match="'missing' not found"):
        process(state, GenerationParams(**{**BASE, "override_settings": {"sd_model_checkpoint": "missing"}}))
    assert process(state, GenerationParams(**BASE)).images  # still serving


def test_clip_skip_changes_the_image_and_is_written(state) -> None:
    one = process(state, GenerationParams(**BASE))
    two = process(state, GenerationParams(**{**BASE, "clip_skip": 2}))
    assert np.abs(pixels(one.images[0]) - pixels(two.images[0])).max() > 0
    assert "Clip skip" not in one.infotexts[0] and "Clip skip: 2" in two.infotexts[0]


def test_infotext_round_trip_and_saved_png(state) -> None:
    result = process(state, GenerationParams(**{**BASE, "save_images": True, "batch_size": 2}))
    info = state.models.current.info
    sample_paths = [p for p in result.saved_paths if "txt2img-images" in str(p)]
    assert [p.name for p in sample_paths] == ["00000-1234.png", "00001-1235.png"]
    assert any(p.name == "grid-0000.png" and "txt2img-grids" in str(p) for p in result.saved_paths)
    for path, text in zip(sample_paths, result.infotexts[1:]):
        with Image.open(path) as image:
            assert infotext.read_from_image(image) == text
    fields = infotext.parse(result.infotexts[1])
    assert fields["Prompt"] == BASE["prompt"] and fields["Negative prompt"] == BASE["negative_prompt"]
    assert fields["Steps"] == "4" and fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    assert fields["Size-1"] == "64" and fields["Model hash"] == info.shorthash and fields["Model"] == "tiny"
    again = process(state, GenerationParams(**{**BASE, "save_images": True}))
    assert again.saved_paths[0].name == "00002-1234.png"  # numbering continues


def test_interrupt_stops_after_the_current_step(state) -> None:
    params = GenerationParams(**{**BASE, "steps": 40, "n_iter": 3})
    stop = threading.Event()

    def interrupter() -> None:
        while not stop.is_set():
            if state.job.sampling_step >= 3:
                state.job.interrupt()
                return
            stop.wait(0.005)

    thread = threading.Thread(target=interrupter)
    thread.start()
    try:
        result = process(state, params)
    finally:
        stop.set()
        thread.join()
    assert len(result.all_seeds) == 3 and len(result.images) == 1  # one (partial) image, no grid
    full = process(state, GenerationParams(**{**BASE, "steps": 40}))
    assert np.abs(pixels(result.images[0]) - pixels(full.images[0])).max() > 0
    assert state.job.job == "" and not state.job.interrupted or state.job.job == ""


def test_skip_moves_on_to_the_next_batch(state) -> None:
    params = GenerationParams(**{**BASE, "steps": 30, "n_iter": 2})
    done = threading.Event()

    def skipper() -> None:
        while not done.is_set():
            if state.job.job_no == 0 and state.job.sampling_step >= 2:
                state.job.skip()
                return
            done.wait(0.005)

    thread = threading.Thread(target=skipper)
    thread.start()
    try:
        result = process(state, params)
    finally:
        done.set()
        thread.join()
    assert len(result.images) == 3  # grid + both batches: skip only cut the first one short
    second_alone = process(state, GenerationParams(**{**BASE, "steps": 30, "seed": 1235}))
    assert np.array_equal(pixels(result.images[2]), pixels(second_alone.images[0]))


@pytest.mark.parametrize("refresh", ["by the generation", "before it (refresh button, trainer)"])
def test_an_embedding_changed_on_disk_is_used_by_the_next_job(state, refresh: str) -> None:
    """Encoded prompts are cached per model; a changed embedding file must not be served from that cache, however
    the database learned of the change: at the next job's own rescan, or earlier (the Extra Networks refresh
    button, /sdapi/v1/refresh-embeddings, a finished embedding training), which leaves that rescan nothing new."""
    import os

    width = state.models.current.pipe.text_encoder.config.hidden_size
    path = state.paths.embeddings_dir / "swapme.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    params = GenerationParams(prompt="a swapme house", steps=3, width=64, height=64, seed=9, save_images=False)
    images = []
    for seed in (1, 2):
        torch.save({"string_to_param": {"*": torch.randn(2, width, generator=torch.Generator().manual_seed(seed))}},
                   path)
        os.utime(path, ns=(seed * 10**9, seed * 10**9))  # a distinct mtime even on a coarse clock
        if refresh != "by the generation":
            assert state.embeddings.refresh(width)
        images.append(pixels(process(state, params).images[0]))
    state.models.current.cond_cache.clear()
    fresh = pixels(process(state, params).images[0])
    assert np.array_equal(images[1], fresh)
    assert not np.array_equal(images[0], images[1])


@pytest.mark.parametrize(("first", "now"), [((64, 64), (96, 128)), ((128, 96), (64, 64)), ((72, 56), (64, 80))])
def test_seed_resize_centres_the_noise_of_the_size_the_seed_was_found_at(first, now) -> None:
    """"Resize seed from": the seed's noise at the first size, centred in (or cropped to the centre of) the new
    size, where the rest is the seed's noise at the new size — each drawn here with plain torch.randn from a
    generator seeded alike. The sampler then continues from the generator that drew the full-size noise."""
    seed, device = 1234, torch.device("cpu")
    shape = (4, now[1] // 8, now[0] // 8)
    small_shape = (4, first[1] // 8, first[0] // 8)
    noise, generators = rng.initial_noise(shape, [seed], [0], 0.0, device, "CPU", seed_resize=first)
    small = torch.randn(small_shape, generator=torch.Generator().manual_seed(seed))
    reference = torch.Generator().manual_seed(seed)
    full = torch.randn(shape, generator=reference)
    assert torch.equal(generators[0].get_state(), reference.get_state())
    result = noise[0]
    for axis in (1, 2):
        assert result.shape[axis] == shape[axis]
    dy, dx = (shape[1] - small_shape[1]) // 2, (shape[2] - small_shape[2]) // 2
    inside = np.zeros(shape[1:], dtype=bool)
    if dy >= 0 and dx >= 0:  # the small noise, whole, at the centre
        inside[dy:dy + small_shape[1], dx:dx + small_shape[2]] = True
        assert torch.equal(result[:, inside], small[:, :, :].reshape(4, -1))
    elif dy < 0 and dx < 0:  # the centre of the larger noise; A1111 crops 2·offset (odd excess: one more row)
        h, w = small_shape[1] + 2 * dy, small_shape[2] + 2 * dx
        inside[:h, :w] = True
        assert torch.equal(result[:, :h, :w], small[:, -dy:-dy + h, -dx:-dx + w])
    else:  # taller and narrower: the small noise's middle columns at the new noise's middle rows
        h = small_shape[1] if dy >= 0 else small_shape[1] + 2 * dy
        w = small_shape[2] if dx >= 0 else small_shape[2] + 2 * dx
        top, left = max(dy, 0), max(dx, 0)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(result[:, top:top + h, left:left + w],
                           small[:, max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w])
    assert torch.equal(result[:, ~inside], full[:, ~inside])  # the rest: the seed's full-size noise
    off, _ = rng.initial_noise(shape, [seed], [0], 0.0, device, "CPU", seed_resize=(0, first[1]))
    assert torch.equal(off[0], full)  # one side 0: off


def test_seed_resize_is_written_in_the_infotext_and_keeps_the_composition(state) -> None:
    """The job records "Seed resize from: WxH" only when it is on; a seed found at 64x64 and re-run at 64x80 with
    "resize seed from 64x64" is closer to the 64x64 picture (its middle) than the same seed at 64x80 without it."""
    base = dict(prompt="a red circle", steps=6, seed=31, save_images=False, sampler_name="Euler")
    found = pixels(process(state, GenerationParams(**base, width=64, height=64)).images[0])
    plain = process(state, GenerationParams(**base, width=64, height=80))
    resized = process(state, GenerationParams(**base, width=64, height=80, seed_resize_from_w=64,
                                              seed_resize_from_h=64))
    assert "Seed resize from" not in plain.infotexts[0]
    assert "Seed resize from: 64x64" in resized.infotexts[0]
    assert infotext.parse(resized.infotexts[0])["Seed resize from-2"] == "64"
    middle = slice(8, 72)
    near = np.abs(pixels(resized.images[0])[middle] - found).mean()
    far = np.abs(pixels(plain.images[0])[middle] - found).mean()
    assert near < far, (near, far)
    with pytest.raises(ParamsError, match="seed_resize_from_w"):
        GenerationParams(seed_resize_from_w=10**6).validate()


def test_grids_are_numbered_on_and_never_overwritten(tmp_path) -> None:
    """``grid-0000.png``, ``grid-0001.png``, ... (an earlier version wrote every grid over ``grid-0000.png``)."""
    from PIL import Image

    from modules import images

    picture = Image.new("RGB", (8, 8))
    names = [images.save_image(picture, tmp_path, 0, None, grid=True).name for _ in range(3)]
    names.append(images.save_image(picture, tmp_path, 0, None, grid=True, prefix="xyz_grid").name)
    names.append(images.save_image(picture, tmp_path, 5, None).name)
    assert names == ["grid-0000.png", "grid-0001.png", "grid-0002.png", "xyz_grid-0000.png", "00000-5.png"]
