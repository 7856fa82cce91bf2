"""The one orchestrator of a txt2img or img2img job. Read it top to bottom: each numbered step calls one module.

``process(state, params)`` must run on the job queue's worker (``state.queue``): it owns the model while it
runs. It returns a :class:`Processed` with the images, their infotexts and A1111's ``info`` fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from modules import (INFOTEXT_VERSION, conditioning, extra_networks, hires, images, img2img, infotext,
                     inpaint_model, masking, prompt_encoder, rng, samplers, sampling)
from modules.processing_params import GenerationParams
from modules.sd_models import CheckpointInfo, LoadedModel, ModelManager
from modules.state import AppState

logger = logging.getLogger(__name__)

VAE_TILING_PIXELS = 1536 * 1536  # "Auto" tiles the VAE decode of images larger than this


@dataclass(frozen=True, slots=True)
class JobSetup:
    """What every image of a job shares: the resolved model, sampler, schedule and settings."""

    params: GenerationParams
    model: LoadedModel
    sampler: samplers.SamplerInfo
    schedule: str
    clip_skip: int
    ensd: int
    opts: dict[str, object]
    mask_weight: float | None = None  # an inpainting model's "Conditional mask weight" (None: not one)

    @classmethod
    def of(cls, params: GenerationParams, model: LoadedModel, opts: dict[str, object]) -> JobSetup:
        """The job's sampler and schedule (A1111's names resolved), its clip skip (the job's, else the setting) and
        ENSD (for the samplers that use it)."""
        sampler, schedule = samplers.split_sampler_and_schedule(params.sampler_name, params.scheduler)
        return cls(params, model, sampler, schedule, clip_skip=params.clip_skip or int(opts["CLIP_stop_at_last_layers"]),
                   ensd=int(opts["eta_noise_seed_delta"]) if sampler.uses_ensd else 0, opts=opts,
                   mask_weight=float(opts["inpainting_mask_weight"])  # type: ignore[arg-type]
                   if inpaint_model.is_inpainting(model.pipe.unet) else None)

    def noise(self, shape: tuple[int, ...], seeds: list[int], subseeds: list[int],
              device: torch.device) -> tuple[torch.Tensor, list[torch.Generator]]:
        """The images' initial noise and their generators (:func:`rng.initial_noise`) with this job's variation
        strength, RNG source, ENSD and seed resize: the same for a first pass and its hires pass."""
        p = self.params
        return rng.initial_noise(shape, seeds, subseeds, p.subseed_strength, device, str(self.opts["randn_source"]),
                                 self.ensd, (p.seed_resize_from_w, p.seed_resize_from_h))

    @property
    def denoiser_calls(self) -> int:
        """The steps prompt editing counts: A1111 counts each of a second-order sampler's two calls."""
        return self.params.steps * (2 if self.sampler.second_order else 1)


@dataclass(frozen=True, slots=True)
class HiresSetup:
    """The hires pass of a job: its sampler, schedule and step count (as a :class:`JobSetup` whose ``steps``
    are the pass's), the size it goes to, and where in its schedule it starts."""

    setup: JobSetup
    target: hires.Target
    plan: hires.StepPlan
    checkpoint: CheckpointInfo | None = None  # A1111's "Hires checkpoint": another model for the pass

    @classmethod
    def of(cls, first: JobSetup, models: ModelManager) -> HiresSetup:
        """Raises CheckpointNotFoundError for a hires checkpoint that is not there (before anything runs)."""
        params = first.params
        steps = params.hr_second_pass_steps or params.steps
        second = dataclasses.replace(params, steps=steps, sampler_name=params.hr_sampler_name or params.sampler_name,
                                     scheduler=params.hr_scheduler or params.scheduler)
        checkpoint = None
        if params.hr_checkpoint_name not in (None, "", hires.SAME_CHECKPOINT):
            checkpoint = models.find(str(params.hr_checkpoint_name))
            if checkpoint.path == first.model.info.path:
                checkpoint = None
        return cls(JobSetup.of(second, first.model, first.opts), hires.target_size(params),
                   hires.step_plan(steps, float(params.denoising_strength)), checkpoint)

    def fields(self, first: JobSetup, checkpoint_title: str | None) -> dict[str, object]:
        """The job's hires infotext fields (:func:`hires.infotext_fields`)."""
        return hires.infotext_fields(first.params, first.sampler.name, first.schedule, self.setup.sampler.name,
                                     self.setup.schedule, checkpoint_title)


@dataclass(frozen=True, slots=True)
class Img2ImgSetup:
    """An img2img job's start: its pictures fitted to the job's size (one per batch image), the steps that run,
    the noise multiplier (the job's, else the ``initial_noise_multiplier`` setting) and, with a mask, the
    inpainting (:mod:`modules.masking`)."""

    pictures: list[Image.Image]
    plan: hires.StepPlan
    noise_multiplier: float
    inpaint: masking.Inpaint | None = None

    @classmethod
    def of(cls, params: GenerationParams, opts: dict[str, object], comments: list[str]) -> Img2ImgSetup:
        p, background = params, str(opts["img2img_background_color"])
        inpaint = None
        if p.mask is None:
            pictures = img2img.batch_pictures(p.init_images, p.batch_size, p.width, p.height, p.resize_mode,
                                              background)
        else:
            flat = [img2img.flatten(image, background) for image in p.init_images]
            fitted, inpaint = masking.prepare(flat, p.mask, p.width, p.height, p.resize_mode, p.mask_blur_x,
                                              p.mask_blur_y, p.inpainting_fill, p.inpaint_full_res,
                                              p.inpaint_full_res_padding, bool(p.inpainting_mask_invert),
                                              p.mask_round, comments)
            pictures = img2img.for_batch(fitted, p.batch_size)
            if inpaint is not None:
                inpaint.overlays = img2img.for_batch(inpaint.overlays, p.batch_size)
        multiplier = p.initial_noise_multiplier
        return cls(pictures, img2img.step_plan(p.steps, float(p.denoising_strength), bool(opts["img2img_fix_steps"])),
                   float(opts["initial_noise_multiplier"] if multiplier is None else multiplier), inpaint)


@dataclass
class Processed:
    """What a job produced. ``images[index_of_first_image:]`` are the samples; a grid may come first."""

    images: list[Image.Image]
    infotexts: list[str]
    params: GenerationParams
    seed: int
    subseed: int
    all_seeds: list[int]
    all_subseeds: list[int]
    all_prompts: list[str]
    all_negative_prompts: list[str]
    sd_model_name: str
    sd_model_hash: str | None
    sd_vae_name: str | None
    sd_vae_hash: str | None
    clip_skip: int
    sampler_name: str
    schedule: str
    job_timestamp: str
    index_of_first_image: int = 0
    comments: list[str] = field(default_factory=list)
    saved_paths: list[Path] = field(default_factory=list)
    extra_generation_params: dict[str, object] = field(default_factory=dict)  # the first batch's extra fields
    inpainting_conditioning: bool = False  # the model was an inpainting one (A1111's is_using_inpainting_conditioning)

    def info(self) -> dict[str, object]:
        """A1111's ``Processed.js()`` fields (the API's ``info`` JSON)."""
        p = self.params
        return {
            "prompt": p.prompt, "all_prompts": self.all_prompts, "negative_prompt": p.negative_prompt,
            "all_negative_prompts": self.all_negative_prompts, "seed": self.seed, "all_seeds": self.all_seeds,
            "subseed": self.subseed, "all_subseeds": self.all_subseeds, "subseed_strength": p.subseed_strength,
            "width": p.width, "height": p.height, "sampler_name": self.sampler_name, "cfg_scale": p.cfg_scale,
            "steps": p.steps, "batch_size": p.batch_size, "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": self.sd_model_name, "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name, "sd_vae_hash": self.sd_vae_hash,
            "seed_resize_from_w": p.seed_resize_from_w, "seed_resize_from_h": p.seed_resize_from_h,
            "denoising_strength": p.denoising_strength if p.enable_hr or p.init_images else None,
            # A1111's dict: hires fields, Lora/TI hashes, Emphasis..., and the schedule type the sampler set
            "extra_generation_params": {**({"Denoising strength": p.denoising_strength}
                                           if p.enable_hr or p.init_images else {}),
                                        **self.extra_generation_params, "Schedule type": self.schedule},
            "index_of_first_image": self.index_of_first_image, "infotexts": self.infotexts, "styles": [],
            "job_timestamp": self.job_timestamp, "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.inpainting_conditioning, "version": INFOTEXT_VERSION,
            "comments": "\n".join(self.comments),
        }


def process(state: AppState, params: GenerationParams) -> Processed:
    """Generate ``params.n_iter`` batches of ``params.batch_size`` images (from ``params.init_images`` if any)."""
    params.validate()
    if params.init_images:  # A1111: several init pictures make a batch of that many images
        params = dataclasses.replace(params, batch_size=img2img.batch_size_for(params.init_images, params.batch_size))
    opts = state.opts.snapshot(params.override_settings)

    # 1. The model this job asks for (a per-job override may name another checkpoint), with its VAE.
    model = _model_for_job(state, opts)
    pipe = model.pipe
    setup = JobSetup.of(params, model, opts)
    sampler, schedule = setup.sampler, setup.schedule
    hr = HiresSetup.of(setup, state.models) if params.enable_hr else None
    comments: list[str] = []
    i2i = Img2ImgSetup.of(params, opts, comments) if params.init_images else None  # fitted before the job starts

    # 2. Seeds: seed + i per image (A1111), or one seed and subseed + i with a variation strength.
    seed, subseed = rng.fix_seed(params.seed), rng.fix_seed(params.subseed)
    all_seeds, all_subseeds = rng.seeds_for(seed, subseed, params.subseed_strength, params.image_count)
    all_prompts = [params.prompt] * params.image_count
    all_negative = [params.negative_prompt] * params.image_count
    all_hr_prompts = [params.hr_prompt or params.prompt] * params.image_count
    all_hr_negative = [params.hr_negative_prompt or params.negative_prompt] * params.image_count

    state.job.begin(params.mode, params.job_count)
    samples: list[Image.Image] = []
    texts: list[str] = []
    saved: list[Path] = []
    job_extra: dict[str, object] = {}
    held = contextlib.ExitStack()
    try:
        if hr is not None and hr.checkpoint is not None:
            held.enter_context(state.models.two_at_once())  # switch back and forth without re-reading files
        # 2b. img2img: the fitted pictures VAE-encoded once; every batch starts from them. Inpainting: the mask at
        #     latent size (1 where redrawn), and "latent noise"/"latent nothing" put into the masked latents.
        init_latents = _encode_init(state, model, params, i2i) if i2i is not None else None
        redraw = None
        if i2i is not None and i2i.inpaint is not None:
            redraw, init_latents = _inpaint_latents(state, setup, i2i.inpaint, init_latents, all_seeds)
        image_cond = _image_conditioning(state, setup, i2i)  # an inpainting model's mask + picture (else None)
        for n in range(params.n_iter):
            if state.job.interrupted:
                break
            batch = slice(n * params.batch_size, (n + 1) * params.batch_size)
            seeds, subseeds = all_seeds[batch], all_subseeds[batch]

            # 3. Extra networks named in the batch's first prompt; CLIP sees the prompts without their tags.
            #    (Weights are patched only while every offloaded part holds its master weights.)
            prompts, network_data = extra_networks.parse_prompts(all_prompts[batch])
            ctx = extra_networks.ActivationContext(model=model, opts=opts)
            _release(model)
            with state.networks.activated(ctx, network_data):
                # 4. Conditioning, after the networks (a LoRA changes the text encoder).
                with _on_device(model, "text_encoder"):
                    guidance, extra = guidance_for(state, setup, prompts, all_negative[batch])

                # 5. Initial noise from per-image generators; the sampler keeps drawing from them.
                shape = (pipe.vae.config.latent_channels, params.height // 8, params.width // 8)
                noise, generators = setup.noise(shape, seeds, subseeds, state.policy.device)

                # 6. Denoise: the whole schedule, or (img2img) its last steps from the init latents noised.
                plan = i2i.plan if i2i is not None else hires.StepPlan(params.steps, 0)
                if i2i is not None and i2i.noise_multiplier != 1.0:
                    noise = noise * i2i.noise_multiplier
                run = samplers.create_run(sampler, schedule, pipe.scheduler.config, seeds, generators)
                if plan.run == 0:  # img2img at strength 0 with img2img_fix_steps: the pictures as they are
                    latents = init_latents
                else:
                    with tqdm(total=plan.run, desc=f"Batch {n + 1}/{params.n_iter}", leave=False) as bar, \
                            _on_device(model, "unet"), _unet_compilation(state, ctx):
                        latents = sampling.denoise(pipe.unet, run, noise, guidance, plan.total,
                                                   callback=_step_callback(state, bar), init=init_latents,
                                                   skip=plan.skip, redraw=redraw, image_cond=image_cond)
            comments.extend(c for c in ctx.comments if c not in comments)
            _check_nans(state, latents)
            if i2i is not None:  # A1111's order: the networks' fields, the inpainting ones, then the sampler's
                extra = {**ctx.infotext, **(i2i.inpaint.fields if i2i.inpaint else {}), **extra,
                         **img2img.infotext_fields(i2i.noise_multiplier)}
            else:
                extra = {**ctx.infotext, **extra}

            # 7. Hires. fix: upscale, then a second pass at the new size with the hires prompts and their networks,
            #    on the hires checkpoint if one is named (whose VAE then decodes, as in A1111) — unless the batch
            #    was skipped or the job interrupted: then the first pass is the result.
            pictures = None
            if hr is not None:
                state.job.next_pass()
                hr_title = hr.checkpoint.short_title if hr.checkpoint else None
                if not state.job.should_stop_batch:
                    # a picture upscaler starts from the first pass decoded by the job's VAE (before any switch)
                    start = latents if hires.is_latent(params.hr_upscaler) else _decode(state, model, latents, comments)
                    if params.save_images and opts["samples_save"] and opts["save_images_before_highres_fix"]:
                        saved.extend(_save_first_pass(state, setup, start, {**hr.fields(setup, hr_title), **extra},
                                                      seeds, subseeds, comments))
                    with _hires_model(state, hr, model, opts) as hr_model:
                        latents, hr_infotext = _hires_pass(state, setup, hr, hr_model, start, all_hr_prompts[batch],
                                                           all_hr_negative[batch], seeds, subseeds, ctx.infotext,
                                                           comments)
                        _check_nans(state, latents)
                        pictures = _decode(state, hr_model, latents, comments)
                        hr_title = hr_model.info.short_title if hr.checkpoint else None  # hashed once loaded
                    extra.update(hr_infotext)
                extra = {**hr.fields(setup, hr_title), **extra}

            # 8. Decode, write the infotext (the prompt keeps its tags, as in A1111), save.
            job_extra = job_extra or extra
            if pictures is None:
                pictures = _decode(state, model, latents, comments)
            if i2i is not None and i2i.inpaint is not None:  # the unmasked part of the picture laid back on top
                pictures = [masking.apply_overlay(picture, i2i.inpaint.paste_to, i2i.inpaint.overlays[i])
                            for i, picture in enumerate(pictures)]
            for i, image in enumerate(pictures):
                index = n * params.batch_size + i
                text = create_infotext(setup, extra, all_prompts[index], all_negative[index], all_seeds[index],
                                       all_subseeds[index])
                if params.save_images and opts["samples_save"]:
                    saved.append(_save(state, opts, image, all_seeds[index], text, mode=params.mode))
                samples.append(image)
                texts.append(text)
            state.job.next_batch()
    finally:
        held.close()
        _release(model)  # A1111 sends everything back to the CPU after each job in the low-memory modes
        state.job.end()

    # 9. A grid in front when there is more than one image (A1111's return_grid / grid_save).
    output, first = list(samples), 0
    if len(samples) > 1 and (opts["return_grid"] or opts["grid_save"]):
        grid = images.image_grid(samples)
        grid_text = texts[0]
        if opts["grid_save"] and params.save_images:
            folder = output_folder(state, opts, f"outdir_{params.mode}_grids")
            saved.append(images.save_image(grid, folder, seed, grid_text if opts["enable_pnginfo"] else None, grid=True))
        if opts["return_grid"]:
            output, first = [grid, *samples], 1
            texts = [grid_text, *texts]

    return Processed(
        images=output, infotexts=texts, params=params, seed=seed, subseed=subseed, all_seeds=all_seeds,
        all_subseeds=all_subseeds, all_prompts=all_prompts, all_negative_prompts=all_negative,
        sd_model_name=model.info.name_for_extra, sd_model_hash=model.info.shorthash,
        sd_vae_name=model.vae.path.name if model.vae.path else None,
        sd_vae_hash=model.vae.sha256[:10] if model.vae.sha256 else None, clip_skip=setup.clip_skip,
        sampler_name=sampler.name, schedule=schedule, job_timestamp=state.job.job_timestamp,
        index_of_first_image=first, comments=comments, saved_paths=saved, extra_generation_params=job_extra,
        inpainting_conditioning=setup.mask_weight is not None,
    )


@contextlib.contextmanager
def _hires_model(state: AppState, hr: HiresSetup, model: LoadedModel, opts: dict[str, object]):
    """The model the hires pass runs on: the job's, or the hires checkpoint made current for the pass (with the
    VAE setting applied), after which the job's model is current again, even when the pass fails."""
    if hr.checkpoint is None:
        yield model
        return
    other = state.models.load(hr.checkpoint)  # a checkpoint that cannot load raises here; nothing changed
    try:
        _apply_vae(state, other, opts)
        yield other
    finally:
        state.models.load(model.info)  # from the cache (two_at_once): the same object, its weights as they were


def _hires_pass(state: AppState, first: JobSetup, hr: HiresSetup, model: LoadedModel,
                first_pass: torch.Tensor | list[Image.Image], prompts: list[str], negatives: list[str],
                seeds: list[int], subseeds: list[int], first_infotext: dict[str, str],
                comments: list[str]) -> tuple[torch.Tensor, dict[str, str]]:
    """A1111's second pass, on ``model``: the first pass's result (latents, or pictures for a picture upscaler)
    upscaled to the target size, the seeds' noise at that size, the hires prompts' networks and conditioning, and
    the last ``hr.plan.run`` steps of a schedule stretched to ``hr.plan.total`` (img2img). Returns the latents
    and the networks' infotext fields (Lora hashes kept from the first pass and extended, as in A1111)."""
    params, setup = first.params, dataclasses.replace(hr.setup, model=model)
    pipe = model.pipe
    if isinstance(first_pass, torch.Tensor):
        start = hires.upscale_latents(first_pass, params.hr_upscaler, hr.target)
    else:
        pictures = hires.upscale_images(first_pass, str(params.hr_upscaler), hr.target)
        with _on_device(model, "vae"):
            start = sampling.encode(pipe.vae, pictures, tiled=_vae_tiled(state, hr.target.width, hr.target.height))
    start = hires.truncate(start.to(state.policy.device), hr.target)
    noise, generators = setup.noise(tuple(start.shape[1:]), seeds, subseeds, state.policy.device)
    texts, network_data = extra_networks.parse_prompts(prompts)
    ctx = extra_networks.ActivationContext(model=model, opts=first.opts, infotext=dict(first_infotext))
    _release(model)
    with state.networks.activated(ctx, network_data):
        with _on_device(model, "text_encoder"):
            guidance, _ = guidance_for(state, setup, texts, negatives, hires_of=first)
        if hr.plan.run > 0:  # denoising strength 0: the upscaled first pass as it is
            image_cond = _hires_conditioning(state, setup, start)
            run = samplers.create_run(setup.sampler, setup.schedule, pipe.scheduler.config, seeds, generators)
            with tqdm(total=hr.plan.run, desc="Hires", leave=False) as bar, \
                    _on_device(model, "unet"), _unet_compilation(state, ctx):
                start = sampling.denoise(pipe.unet, run, noise, guidance, hr.plan.total,
                                         callback=_step_callback(state, bar), init=start, skip=hr.plan.skip,
                                         image_cond=image_cond)
    comments.extend(c for c in ctx.comments if c not in comments)
    return start, ctx.infotext


def _encode_init(state: AppState, model: LoadedModel, params: GenerationParams, i2i: Img2ImgSetup) -> torch.Tensor:
    """img2img's start: the fitted pictures encoded by the job's VAE (tiled as its decode would be at that size),
    then, for the latent resize mode, resized in latent space to the job's size."""
    width, height = i2i.pictures[0].size
    with _on_device(model, "vae"):
        latents = sampling.encode(model.pipe.vae, i2i.pictures, tiled=_vae_tiled(state, width, height))
    return img2img.resize_latents(latents.to(state.policy.device), params.resize_mode, params.width, params.height)


def _inpaint_latents(state: AppState, setup: JobSetup, inpaint: masking.Inpaint, init: torch.Tensor,
                     all_seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's mask (1 where redrawn) at the latents' size, and the latents to start from: with "latent
    noise" the masked part is the first batch's seeds' plain noise (A1111 takes those seeds for every batch),
    with "latent nothing" zeros."""
    redraw = inpaint.redraw(init.shape[-2], init.shape[-1]).to(init.device)
    if inpaint.fill == 2:
        seeds = all_seeds[:init.shape[0]]
        noise, _ = rng.initial_noise(tuple(init.shape[1:]), seeds, seeds, 0.0, init.device,
                                     str(setup.opts["randn_source"]), 0, (0, 0))
        init = init * (1 - redraw) + noise * redraw
    elif inpaint.fill == 3:
        init = init * (1 - redraw)
    return redraw, init


def _image_conditioning(state: AppState, setup: JobSetup, i2i: Img2ImgSetup | None) -> torch.Tensor | None:
    """An inpainting model's image conditioning for the job (:mod:`modules.inpaint_model`), made once: the whole
    picture to make (txt2img), or the job's pictures blanked under the mask by the mask weight (img2img)."""
    if setup.mask_weight is None:
        return None
    p, model = setup.params, setup.model
    tiled = _vae_tiled(state, p.width, p.height)
    with _on_device(model, "vae"):
        if i2i is None:
            return inpaint_model.full_mask_conditioning(model.pipe.vae, p.batch_size, p.width, p.height, tiled)
        mask = i2i.inpaint.mask if i2i.inpaint is not None else None
        return inpaint_model.picture_conditioning(model.pipe.vae, i2i.pictures, mask, setup.mask_weight,
                                                  p.resize_mode, p.width, p.height, tiled)


def _hires_conditioning(state: AppState, setup: JobSetup, start: torch.Tensor) -> torch.Tensor | None:
    """An inpainting model's conditioning for a hires pass (A1111's): the whole picture to make at full mask
    weight, else the upscaled first pass (decoded) blanked by the weight."""
    model = setup.model  # the hires checkpoint's, if the pass has one
    if not inpaint_model.is_inpainting(model.pipe.unet):
        return None
    weight = float(setup.opts["inpainting_mask_weight"])  # type: ignore[arg-type]
    height, width = start.shape[-2] * hires.LATENT_FACTOR, start.shape[-1] * hires.LATENT_FACTOR
    tiled = _vae_tiled(state, width, height)
    if weight >= 1.0:
        with _on_device(model, "vae"):
            return inpaint_model.full_mask_conditioning(model.pipe.vae, start.shape[0], width, height, tiled)
    pictures = _decode(state, model, start, [])
    with _on_device(model, "vae"):
        return inpaint_model.picture_conditioning(model.pipe.vae, pictures, None, weight, 0, width, height, tiled)


def guidance_for(state: AppState, setup: JobSetup, prompts: list[str], negatives: list[str],
                 embeddings: object | None = None,
                 hires_of: JobSetup | None = None) -> tuple[sampling.Guidance, dict[str, object]]:
    """Encode the batch's prompts, and the infotext fields this produces (TI hashes, Emphasis).

    ``embeddings``: the textual inversions to use instead of the database's (a training preview passes the ones
    being trained); its encodings are not cached. ``hires_of``: ``setup`` is the hires pass of that job, so
    prompt editing follows A1111's hires timing (steps counted on from the first pass's).
    """
    model, opts = setup.model, setup.opts
    pipe = model.pipe
    cache: conditioning.ConditioningCache | None = None
    if embeddings is None:
        embeddings, cache = state.embeddings, model.cond_cache
        if state.embeddings is not None:
            state.embeddings.refresh(pipe.text_encoder.config.hidden_size)
    options = prompt_encoder.EncoderOptions(clip_skip=setup.clip_skip, emphasis=str(opts["emphasis"]),
                                            comma_padding_backtrack=int(opts["comma_padding_backtrack"]))
    encoder = prompt_encoder.PromptEncoder(pipe.text_encoder, pipe.tokenizer, embeddings, options)
    steps, hires_steps = (setup.denoiser_calls, None) if hires_of is None else (hires_of.denoiser_calls,
                                                                                  setup.denoiser_calls)
    # Cached encodings are valid for these options, text-encoder weights (LoRAs) and embeddings.
    key = (options, model.text_encoder_state, state.embeddings.revision if state.embeddings is not None else 0)
    old = bool(opts["use_old_scheduling"])
    multicond = conditioning.multicond_learned_conditioning(encoder, prompts, steps, cache, key, old, hires_steps)
    uncond = conditioning.learned_conditioning(encoder, negatives, steps, cache, key, old, hires_steps)
    extra: dict[str, object] = {}
    used = [e for e in multicond.embeddings + conditioning.embeddings_of(uncond)  # positive ones, then negative
            if getattr(e, "shorthash", None)]  # (one being trained has no file, so no hash yet)
    if used and opts["textual_inversion_add_hashes_to_infotext"]:
        extra["TI hashes"] = ", ".join(f"{e.name.replace(':', '').replace(',', '')}: {e.shorthash}" for e in used)
    if options.emphasis != "Original" and any("(" in t or "[" in t for t in prompts + negatives):
        extra["Emphasis"] = options.emphasis
    return sampling.Guidance(multicond, uncond, float(setup.params.cfg_scale)), extra


def _on_device(model: LoadedModel, component: str):
    """The memory mode's placement for one stage (a no-op in the normal mode)."""
    return model.offload.use(component) if model.offload is not None else contextlib.nullcontext()


def _unet_compilation(state: AppState, ctx: extra_networks.ActivationContext):
    """Leave a compiled UNet (--opt-compile) compiled, unless a network changed how its modules compute for this
    job (``ctx.eager_unet``: hypernetwork attention processors, new objects per job). torch.compile would then
    recompile for every job until it hits its recompile limit and drops the UNet to eager for good, the jobs
    without those networks included; running this one job eagerly keeps the compiled graph for the others."""
    if not (state.policy.compile and ctx.eager_unet):
        return contextlib.nullcontext()
    logger.info("This job's UNet runs uncompiled: a hypernetwork replaces its attention processors")
    return torch.compiler.set_stance("force_eager")


def _release(model: LoadedModel) -> None:
    if model.offload is not None:
        model.offload.release()


class NansError(RuntimeError):
    """The UNet produced NaNs (A1111's NansException), with what to try."""


def _check_nans(state: AppState, latents: torch.Tensor) -> None:
    if not state.args.disable_nan_check and torch.isnan(latents).any():
        raise NansError("The UNet produced NaNs: the model or the precision cannot represent this picture. Try "
                        "--no-half (or --upcast-sampling), another sampler or CFG scale; --disable-nan-check "
                        "turns this check off.")


def _vae_tiled(state: AppState, width: int, height: int) -> bool:
    """Whether the VAE works in tiles on an image of this size (the ``vae_tiling`` setting)."""
    tile = str(state.opts["vae_tiling"])
    return tile == "Always" or (tile == "Auto" and width * height > VAE_TILING_PIXELS)


def _decode(state: AppState, model: LoadedModel, latents: torch.Tensor, comments: list[str]) -> list[Image.Image]:
    """Decode with the VAE; on NaNs from a half-precision VAE, switch it to fp32 and retry (A1111's default)."""
    vae = model.pipe.vae
    tiled = _vae_tiled(state, latents.shape[-1] * hires.LATENT_FACTOR, latents.shape[-2] * hires.LATENT_FACTOR)
    with _on_device(model, "vae"):
        decoded = sampling.decode(vae, latents, tiled=tiled)
    if decoded.nan_found and next(vae.parameters()).dtype != torch.float32 and state.opts["auto_vae_precision"]:
        message = "The VAE produced NaNs in half precision; it now runs in fp32 (as --no-half-vae would)."
        logger.warning(message)
        comments.append(message)
        state.models.upcast_vae(model)
        with _on_device(model, "vae"):
            decoded = sampling.decode(vae, latents, tiled=tiled)
    return decoded.images


def _model_for_job(state: AppState, opts: dict[str, object]) -> LoadedModel:
    """Load the checkpoint the job's settings name if it is not the current one (or bring the current one back
    from RAM), and apply the VAE setting."""
    wanted = str(opts["sd_model_checkpoint"] or "")
    current = state.models.current
    if current is None or (wanted and not current.info.matches(wanted)):
        if not wanted:
            raise RuntimeError("no checkpoint is loaded; put a .safetensors file in models/Stable-diffusion")
        current = state.models.load(state.models.find(wanted))
    elif current.parked:  # unloaded to RAM (/sdapi/v1/unload-checkpoint): back to its device
        current = state.models.in_use()
    _apply_vae(state, current, opts)
    return current


def _apply_vae(state: AppState, model: LoadedModel, opts: dict[str, object]) -> None:
    """The VAE the ``sd_vae`` setting (or ``--vae-path``) asks for, on ``model``."""
    forced = Path(state.args.vae_path) if state.args.vae_path else None
    state.models.apply_vae(model, str(opts["sd_vae"]), forced)


def _step_callback(state: AppState, bar: tqdm) -> sampling.StepCallback:
    every = int(state.opts["show_progress_every_n_steps"])  # live preview period; 0 = off

    def callback(step: int, total: int, latents: torch.Tensor) -> bool:
        state.job.set_step(step + 1, total)
        if every > 0 and (step + 1) % every == 0:
            state.job.set_latent(latents.detach().clone())  # decoded only when /progress asks for it
        bar.total = total
        bar.update(1)
        return state.job.should_stop_batch
    return callback


def create_infotext(setup: JobSetup, extra: dict[str, object], prompt: str, negative_prompt: str, seed: int,
                    subseed: int) -> str:
    """A1111's infotext for one image: prompt, ``Negative prompt:``, then the parameters in A1111's order."""
    params, model, opts = setup.params, setup.model, setup.opts
    strength = params.subseed_strength
    fixed: dict[str, object | None] = {
        "Steps": params.steps, "Sampler": setup.sampler.name, "Schedule type": setup.schedule,
        "CFG scale": params.cfg_scale,
        "Seed": seed, "Size": f"{params.width}x{params.height}",
        "Model hash": model.info.shorthash if opts["add_model_hash_to_info"] else None,
        "Model": model.info.name_for_extra if opts["add_model_name_to_info"] else None,
        "VAE hash": model.vae.sha256[:10] if model.vae.sha256 and opts["add_vae_hash_to_info"] else None,
        "VAE": model.vae.path.stem if model.vae.path and opts["add_vae_name_to_info"] else None,
        "Variation seed": subseed if strength else None,
        "Variation seed strength": strength if strength else None,
        "Seed resize from": (f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
                             if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0 else None),
        "Denoising strength": params.denoising_strength if params.enable_hr or params.init_images else None,
        "Conditional mask weight": setup.mask_weight,
        "Clip skip": setup.clip_skip if setup.clip_skip > 1 else None,
        "ENSD": setup.ensd or None,
        "RNG": opts["randn_source"] if opts["randn_source"] != "GPU" else None,
    }
    version = INFOTEXT_VERSION if opts["add_version_to_infotext"] else None
    return infotext.build(prompt, negative_prompt, infotext.ordered_params(fixed, extra, version))


def output_folder(state: AppState, opts: dict[str, object], key: str) -> Path:
    base = Path(str(opts["outdir_samples"] or opts[key]))
    if not base.is_absolute():
        base = state.paths.data_dir / base
    return images.dated_folder(base, opts["directories_filename_pattern"] == "[date]")


def _save_first_pass(state: AppState, setup: JobSetup, first_pass: torch.Tensor | list[Image.Image],
                     extra: dict[str, object], seeds: list[int], subseeds: list[int],
                     comments: list[str]) -> list[Path]:
    """A1111's "Save a copy of image before applying highres fix": the first pass's pictures (decoded here when
    the upscaler is a latent one), with the job's infotext, as ``NNNNN-SEED-before-highres-fix.png``."""
    p = setup.params
    pictures = _decode(state, setup.model, first_pass, comments) if isinstance(first_pass, torch.Tensor) \
        else first_pass
    return [_save(state, setup.opts, picture, seed,
                  create_infotext(setup, extra, p.prompt, p.negative_prompt, seed, subseed), "-before-highres-fix")
            for picture, seed, subseed in zip(pictures, seeds, subseeds)]


def _save(state: AppState, opts: dict[str, object], image: Image.Image, seed: int, text: str,
          suffix: str = "", mode: str = "txt2img") -> Path:
    folder = output_folder(state, opts, f"outdir_{mode}_samples")
    start = time.perf_counter()
    path = images.save_image(image, folder, seed, text if opts["enable_pnginfo"] else None, suffix=suffix)
    logger.debug("Saved %s in %.3fs", path, time.perf_counter() - start)
    return path
