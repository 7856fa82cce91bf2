"""Inpainting checkpoints (9-channel UNets) on a tiny one made in the real single-file format: loading, A1111's
image conditioning (checked against its formula computed here and against diffusers' own
``StableDiffusionInpaintPipeline``), the setting, infotext, hires, LoRAs and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from modules import demo_model, img2img, infotext, inpaint_model, model_loading, samplers
from modules.paths import CONFIGS_DIR
from modules.processing import process
from modules.processing_params import GenerationParams
from test_img2img import encode_mean, picture, pixels

BASE = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=8, width=64, height=64,
            seed=1234, save_images=False, sampler_name="Euler")


@pytest.fixture
def state(make_state, tmp_path):
    """A state whose checkpoint is a tiny *inpainting* model (written with its sidecar .yaml)."""
    built = make_state(load=False)
    path = demo_model.write_checkpoint(built.models.ckpt_dir / "tiny-inpainting.safetensors",
                                       demo_model.TinySpec(in_channels=9), seed=7)
    built.models.refresh()
    info = built.models.find(path.name)
    built.opts.set("sd_model_checkpoint", info.title, run_callbacks=False)
    built.models.load(info)
    assert inpaint_model.is_inpainting(built.models.current.pipe.unet)
    return built


def diffusers_inpaint(state, params: GenerationParams, init: Image.Image, mask: Image.Image,
                      run: int) -> Image.Image:
    """diffusers' ``StableDiffusionInpaintPipeline`` on the same modules, fed the picture's and the blanked picture's
    latents (posterior means, as we encode; diffusers would sample the posterior) and a strength that runs ``run``
    of ``params.steps`` steps."""
    from diffusers import StableDiffusionInpaintPipeline

    from test_processing import encode

    pipe = state.models.current.pipe
    sampler, schedule = samplers.split_sampler_and_schedule(params.sampler_name, params.scheduler)
    vanilla = StableDiffusionInpaintPipeline(**{**pipe.components, "scheduler": samplers.create_scheduler(
        sampler, schedule, pipe.scheduler.config)})
    vanilla.set_progress_bar_config(disable=True)
    binary = np.asarray(mask.convert("L")) >= 128
    blanked = Image.fromarray((np.asarray(init.convert("RGB")) * ~binary[..., None]).astype(np.uint8))
    blanked_latents = encode_mean(pipe, blanked) if binary.any() else encode_mean(pipe, init)
    if binary.all():  # all blanked: the VAE sees zeros (mid-grey), which no uint8 picture is exactly
        with torch.no_grad():
            blanked_latents = pipe.vae.encode(torch.zeros(1, 3, init.height, init.width)).latent_dist.mean \
                * pipe.vae.config.scaling_factor
    return vanilla(prompt_embeds=encode(pipe, [params.prompt]), negative_prompt_embeds=encode(pipe, [
        params.negative_prompt]), image=encode_mean(pipe, init), mask_image=mask, masked_image_latents=blanked_latents,
        strength=run / params.steps, num_inference_steps=params.steps, guidance_scale=params.cfg_scale,
        height=init.height, width=init.width, generator=torch.Generator().manual_seed(params.seed)).images[0]


# ------------------------------------------------------------------------------------------------------ loading

def test_a_9_channel_file_without_its_yaml_gets_the_inpainting_config() -> None:
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    weight = torch.zeros(320, 9, 3, 3)
    config = model_loading.default_config({model_loading.UNET_PREFIX + "input_blocks.0.0.weight": weight})
    assert config["model"]["params"]["unet_config"]["params"]["in_channels"] == 9
    assert create_unet_diffusers_config_from_ldm(config, {})["in_channels"] == 9  # diffusers reads it so
    assert model_loading.default_config({model_loading.UNET_PREFIX + "input_blocks.0.0.weight":
                                         torch.zeros(320, 4, 3, 3)}) is None
    # the same architecture as v1-inference.yaml but for the UNet's input and the conditioning
    plain = yaml.safe_load((CONFIGS_DIR / "v1-inference.yaml").read_text())["model"]
    inpainting = config["model"]
    assert inpainting["target"].endswith("LatentInpaintDiffusion") and inpainting["params"]["conditioning_key"] == "hybrid"
    for section in (plain, inpainting):
        section.pop("target")
        section["params"].pop("conditioning_key")
        section["params"]["unet_config"]["params"].pop("in_channels")
        section["params"].pop("use_ema", None)
        section["params"].pop("finetune_keys", None)
    assert plain == inpainting


def test_instruct_pix2pix_and_odd_channels_are_refused() -> None:
    base = {model_loading.UNET_PREFIX + "input_blocks.0.0.weight": None,
            model_loading.CLIP_PREFIX + "embeddings.token_embedding.weight": torch.zeros(1)}
    for channels, said in ((8, "instruct-pix2pix"), (5, "takes 5 input channels")):
        base[model_loading.UNET_PREFIX + "input_blocks.0.0.weight"] = torch.zeros(32, channels, 3, 3)
        with pytest.raises(model_loading.ModelFileError, match=said):
            model_loading.check_sd1(base, "odd.safetensors")
    base[model_loading.UNET_PREFIX + "input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    model_loading.check_sd1(base, "inpainting.safetensors")  # accepted


# --------------------------------------------------------------------------------------------- the conditioning

def test_the_conditioning_is_a1111s_formula(state) -> None:
    """Mask rounded and shrunk with ``nearest`` (every 8th pixel), the picture blanked by the weight under it."""
    vae = state.models.current.pipe.vae
    init = picture()
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 20:60] = 200  # rounds to 1
    mask[40:48, :] = 100  # rounds to 0
    cond = inpaint_model.picture_conditioning(vae, [init], Image.fromarray(mask), 0.75, 0, 64, 64)
    assert cond.shape == (1, 5, 8, 8)
    assert torch.equal(cond[0, 0], torch.from_numpy((mask[::8, ::8] >= 128).astype(np.float32)))
    src = torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    keep = torch.from_numpy((mask < 128).astype(np.float32))[None, None]
    blanked = src * (1 - 0.75 * (1 - keep))  # lerp(src, src·(1−m), w) = src·(1 − w·m)
    with torch.no_grad():
        expected = vae.encode(blanked).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(cond[:, 1:], expected, atol=1e-5)
    full = inpaint_model.full_mask_conditioning(vae, 2, 64, 64)
    assert full.shape == (2, 5, 8, 8) and torch.all(full[:, 0] == 1)
    plain = inpaint_model.picture_conditioning(vae, [init], None, 1.0, 0, 64, 64)
    assert torch.allclose(plain, full[:1], atol=1e-6)  # img2img at weight 1: everything blanked, as txt2img


def test_txt2img_equals_diffusers_inpaint_pipeline_with_everything_masked(state) -> None:
    """A1111's txt2img conditioning (all to make, grey picture) is diffusers' inpaint pipeline at strength 1 with a
    white mask: the same 9-channel input at every step."""
    params = GenerationParams(**BASE)
    ours = process(state, params)
    white = Image.new("L", (64, 64), 255)
    expected = diffusers_inpaint(state, params, picture(), white, run=params.steps)
    assert np.abs(pixels(ours.images[0]) - pixels(expected)).max() <= 1
    fields = infotext.parse(ours.infotexts[0])
    assert fields["Conditional mask weight"] == "1.0" and ours.info()["is_using_inpainting_conditioning"] is True


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_whole_picture_inpainting_equals_diffusers_inpaint_pipeline(state, sampler: str) -> None:
    """A white mask (no blur): A1111's per-step blend changes nothing, so the job is diffusers' pipeline from the
    picture's latents at the same strength; plain img2img at weight 1 gives the same picture."""
    init, white = picture(), Image.new("L", (64, 64), 255)
    common = {**BASE, "sampler_name": sampler, "init_images": (init,), "denoising_strength": 0.5}
    ours = process(state, GenerationParams(**common, mask=white, mask_blur_x=0, mask_blur_y=0, inpainting_fill=1,
                                           inpaint_full_res=False))
    expected = diffusers_inpaint(state, GenerationParams(**common), init, white, run=5)  # int(0.5 · 8) + 1
    assert np.abs(pixels(ours.images[0]) - pixels(expected)).max() <= 1
    plain = process(state, GenerationParams(**common))
    assert np.array_equal(pixels(plain.images[0]), pixels(ours.images[0]))


def test_the_mask_weight_setting_reaches_the_model(state) -> None:
    common = {**BASE, "init_images": (picture(),), "denoising_strength": 0.6}
    full = process(state, GenerationParams(**common))
    none = process(state, GenerationParams(**common, override_settings={"inpainting_mask_weight": 0.0}))
    assert np.abs(pixels(full.images[0]) - pixels(none.images[0])).max() > 0
    assert infotext.parse(none.infotexts[0])["Conditional mask weight"] == "0.0"


def test_a_partial_mask_keeps_the_rest_and_hires_and_loras_work(state) -> None:
    from test_lora import kohya_state_dict, write_lora

    init = picture()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    result = process(state, GenerationParams(**{**BASE, "init_images": (init,), "denoising_strength": 0.9,
                                                "mask": mask, "mask_blur_x": 0, "mask_blur_y": 0,
                                                "inpaint_full_res": False}))
    kept = pixels(result.images[0])[:, 40:]
    assert np.array_equal(kept, pixels(init)[:, 40:])  # the unmasked side is the picture itself
    for weight in (1.0, 0.5):  # a hires pass: grey conditioning, or the upscaled first pass blanked by the weight
        hr = process(state, GenerationParams(**{**BASE, "enable_hr": True, "denoising_strength": 0.5},
                                             override_settings={"inpainting_mask_weight": weight}))
        assert hr.images[0].size == (128, 128)
    write_lora(state, "ink", kohya_state_dict(state.models.current.pipe, seed=3))
    plain = process(state, GenerationParams(**BASE))
    tagged = process(state, GenerationParams(**{**BASE, "prompt": BASE["prompt"] + " <lora:ink:1>"}))
    assert np.abs(pixels(tagged.images[0]) - pixels(plain.images[0])).max() > 0 and not tagged.comments
    again = process(state, GenerationParams(**BASE))
    assert np.array_equal(pixels(again.images[0]), pixels(plain.images[0]))


def test_training_on_an_inpainting_model_is_refused(state) -> None:
    from modules.training.runner import TrainingError, model_to_train_on

    with pytest.raises(TrainingError, match="is an inpainting model; train on the txt2img checkpoint"):
        model_to_train_on(state)


def test_latent_resize_mode_conditioning_has_the_latents_size(state) -> None:
    vae = state.models.current.pipe.vae
    cond = inpaint_model.picture_conditioning(vae, [picture(96, 96)], Image.new("L", (64, 64), 255), 1.0,
                                              img2img.LATENT_RESIZE, 64, 64)
    assert cond.shape == (1, 5, 8, 8)
