"""Routes that run or follow jobs: txt2img, img2img, progress (with the live preview), interrupt, skip,
/internal/progress.

A txt2img or img2img request is prepared in this order, as A1111 does: the ``infotext`` field fills what the request
did not set, styles are applied to the prompts, every name is checked against its library
(:mod:`modules.api.resolve`), then the job goes into the one queue under its id (``force_task_id`` or ``task(n)``).
The infotext and ``all_prompts`` carry the styled prompt; ``info.prompt`` is the prompt as sent. A ``script_name``
(:mod:`modules.scripts`: X/Y/Z plot, Prompts from file or textbox) makes the job several, every one checked before
it is queued.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from modules import hires, infotext, previews, processing, scripts, styles
from modules.api import models, paste, resolve
from modules.api.safety import check_name
from modules.options import OPTIONS
from modules.processing_params import GenerationParams, ParamsError
from modules.state import AppState

MAX_TASK_ID = 256
_NO_CHECKPOINT = ("", None, hires.SAME_CHECKPOINT)
_SAME = ("", None, hires.SAME_SAMPLER, hires.SAME_SCHEDULER)  # the page's "same as the first pass" entries
#: (field, predicate on its value, what to say): accepted A1111 fields this server does not act on.
UNSUPPORTED: tuple[tuple[str, object, str], ...] = (
    ("restore_faces", lambda v: bool(v), "face restoration is not supported"),
    ("tiling", lambda v: bool(v), "tiling is not supported"),
    ("eta", lambda v: v is not None, "eta is not supported (the sampler's default is used)"),
    ("s_churn", lambda v: v is not None, "sigma churn is not supported"),
    ("s_noise", lambda v: v is not None, "sigma noise is not supported"),
    ("s_tmin", lambda v: v is not None, "sigma tmin is not supported"),
    ("s_tmax", lambda v: v is not None, "sigma tmax is not supported"),
    ("s_min_uncond", lambda v: v is not None, "NGMS (s_min_uncond) is not supported"),
    ("refiner_checkpoint", lambda v: bool(v), "the refiner is not supported"),
    ("disable_extra_networks", lambda v: bool(v), "disable_extra_networks is not supported; networks were applied"),
)


def encode_png(image: Image.Image, text: str | None) -> str:
    """Base64 PNG carrying the infotext as its ``parameters`` chunk (what A1111's API returns)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=infotext.add_to_png(text) if text else None)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def params_from_request(request: models.Txt2ImgRequest) -> tuple[GenerationParams, list[str]]:
    """Turn an A1111 txt2img request into our parameters, listing what is accepted but not supported."""
    comments: list[str] = []
    overrides = dict(request.override_settings or {})
    unknown = sorted(k for k in overrides if k not in OPTIONS)
    if unknown:
        comments.append(f"override_settings ignored (not settings here): {', '.join(unknown)}")
    for field, applies, message in UNSUPPORTED:
        if applies(getattr(request, field, None)):  # type: ignore[operator]
            comments.append(f"{field}: {message}")
    if request.alwayson_scripts:
        comments.append(f"scripts are not supported: {', '.join(str(k) for k in request.alwayson_scripts)}")
    width, height = request.width, request.height
    if request.enable_hr and (request.firstphase_width or request.firstphase_height):
        # the pre-1.0 API's first-pass size; A1111 now sizes the hires pass with hr_scale or hr_resize_x/y
        width, height = request.firstphase_width or width, request.firstphase_height or height
    params = GenerationParams(
        prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        sampler_name=request.sampler_name or request.sampler_index, scheduler=request.scheduler or "Automatic",
        cfg_scale=request.cfg_scale, width=width, height=height, seed=request.seed,
        subseed=request.subseed, subseed_strength=request.subseed_strength,
        seed_resize_from_w=request.seed_resize_from_w, seed_resize_from_h=request.seed_resize_from_h,
        batch_size=request.batch_size,
        n_iter=request.n_iter, save_images=request.save_images and not request.do_not_save_samples,
        override_settings={k: v for k, v in overrides.items() if k in OPTIONS},
        enable_hr=bool(request.enable_hr),
        denoising_strength=0.75 if request.denoising_strength is None else request.denoising_strength,
        hr_scale=request.hr_scale, hr_upscaler=request.hr_upscaler or None,
        hr_second_pass_steps=request.hr_second_pass_steps, hr_resize_x=request.hr_resize_x,
        hr_resize_y=request.hr_resize_y,
        hr_checkpoint_name=None if request.hr_checkpoint_name in _NO_CHECKPOINT else request.hr_checkpoint_name,
        hr_sampler_name=None if request.hr_sampler_name in _SAME else request.hr_sampler_name,
        hr_scheduler=None if request.hr_scheduler in _SAME else request.hr_scheduler,
        hr_prompt=request.hr_prompt, hr_negative_prompt=request.hr_negative_prompt,
    )
    return params.validate(), comments


@dataclass(frozen=True)
class Prepared:
    params: GenerationParams
    comments: list[str]
    prompt: str  # as sent (after the infotext filled it), before styles
    negative_prompt: str
    script: tuple[scripts.Script, object] | None = None  # script_name: the script and its settings


def script_settings(name: str | None, args: list[object]) -> tuple[scripts.Script, object] | None:
    """The script a request names (A1111 matches its title without case) with its ``script_args`` read.

    Raises:
        ParamsError: a script that is not here, or arguments it cannot use.
    """
    if not name:
        return None
    check_name("script_name", name)
    script = scripts.find(name)
    try:
        return script, script.settings(args)
    except ValueError as e:
        raise ParamsError(f"script_args: {e}") from None


def prepare_txt2img(state: AppState, request: models.Txt2ImgRequest, hires_allowed: bool = True) -> Prepared:
    """Infotext, styles, name checks, parameters — everything that can refuse a request before it is queued.
    ``hires_allowed=False`` (img2img) keeps Hires. fix off even when a pasted infotext had it on."""
    if request.force_task_id is not None and len(request.force_task_id) > MAX_TASK_ID:
        raise ParamsError(f"force_task_id is longer than {MAX_TASK_ID} characters")
    paste.apply_to_request(state, request)
    if not hires_allowed:
        request.enable_hr = False
    prompt, negative = request.prompt, request.negative_prompt
    if request.styles:
        names = [check_name("styles", name) for name in request.styles]
        request.prompt, request.negative_prompt = styles.for_state(state).apply(prompt, negative, names)
    resolve.settings(state, request.override_settings or {})
    resolve.prompt_networks(state, [request.prompt, request.hr_prompt])
    if request.hr_checkpoint_name not in _NO_CHECKPOINT:  # a path-shaped name is refused even when unused
        check_name("hr_checkpoint_name", request.hr_checkpoint_name)
        if request.enable_hr:
            resolve.checkpoint(state, request.hr_checkpoint_name, "hr_checkpoint_name")
    if request.refiner_checkpoint not in _NO_CHECKPOINT:
        check_name("refiner_checkpoint", request.refiner_checkpoint)
    script = script_settings(request.script_name, request.script_args)
    params, comments = params_from_request(request)
    return Prepared(params, comments, prompt, negative, script)


def prepare_img2img(state: AppState, request: models.Img2ImgRequest) -> Prepared:
    """:func:`prepare_txt2img` plus the init pictures (decoded here, so a bad one is refused before queueing), the
    resize mode, the noise multiplier and, for inpainting, the mask and its settings (A1111's API defaults:
    "Only masked", no padding, "fill"). A separate ``latent_mask`` is refused with what to do instead."""
    if request.latent_mask:
        raise ParamsError("latent_mask is not supported; the mask (mask) is also used for the latents")
    if not request.init_images:
        raise ParamsError("init_images is empty: img2img needs at least one picture (base64 PNG, JPEG or WEBP)")
    pictures = tuple(paste.read_picture(encoded, f"init_images[{i}]") for i, encoded in enumerate(request.init_images))
    prepared = prepare_txt2img(state, request, hires_allowed=False)
    if request.image_cfg_scale is not None:
        prepared.comments.append("image_cfg_scale: only instruct-pix2pix models use it; ignored")
    strength = 0.75 if request.denoising_strength is None else request.denoising_strength
    mask = paste.read_picture(request.mask, "mask") if request.mask else None
    blur_x, blur_y = (request.mask_blur, request.mask_blur) if request.mask_blur is not None else (
        request.mask_blur_x, request.mask_blur_y)
    params = dataclasses.replace(
        prepared.params, init_images=pictures, resize_mode=request.resize_mode, denoising_strength=strength,
        initial_noise_multiplier=request.initial_noise_multiplier, mask=mask, mask_blur_x=blur_x, mask_blur_y=blur_y,
        inpainting_fill=request.inpainting_fill, inpaint_full_res=bool(request.inpaint_full_res),
        inpaint_full_res_padding=request.inpaint_full_res_padding,
        inpainting_mask_invert=request.inpainting_mask_invert, mask_round=request.mask_round)
    return dataclasses.replace(prepared, params=params.validate())


def run_generation(state: AppState, params: GenerationParams) -> processing.Processed:
    """The job itself, on the queue's worker: embeddings named in the prompts are checked once they are listed."""
    _check_embeddings(state, [params])
    return processing.process(state, params)


def _check_embeddings(state: AppState, jobs: list[GenerationParams]) -> None:
    """Refresh the embeddings, then hold those the jobs' prompts (and hires prompts) name to the library's rules."""
    resolve.refresh_embeddings(state)
    resolve.prompt_embeddings(state, [text for job in jobs for text in (
        job.prompt, job.negative_prompt, *((job.hr_prompt, job.hr_negative_prompt) if job.enable_hr else ()))])


def plan_script(state: AppState, params: GenerationParams, script: scripts.Script, settings: object) -> object:
    """Every job of the script made and checked (its ``plan``), and the names the jobs brought in (networks from
    Prompt S/R or a list's prompts, checkpoints, VAEs) held to the same rules as a request's own."""
    plan = script.plan(state, params, settings)
    for job in scripts.jobs_of(plan):
        resolve.settings(state, job.override_settings)
        resolve.prompt_networks(state, [job.prompt, job.hr_prompt])
    return plan


def run_script(state: AppState, script: scripts.Script, plan: object) -> processing.Processed:
    """A script's job on the queue's worker: :func:`run_generation`'s embedding checks over every job's prompts,
    then the script."""
    _check_embeddings(state, scripts.jobs_of(plan))
    return script.run(state, plan)


class PreviewCache:
    """The running job's live preview as base64 PNG, decoded once per new latent (``id_live_preview``)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._cached: tuple[int, str] | None = None

    def get(self) -> tuple[str | None, int]:
        """``(base64 PNG or None, id_live_preview)``."""
        latent, preview_id = self.state.job.live_latent()
        if latent is None:
            return None, preview_id
        with self._lock:
            if self._cached is None or self._cached[0] != preview_id:
                self._cached = (preview_id, previews.png_base64(previews.preview_image(latent)))  # type: ignore[arg-type]
            return self._cached[1], preview_id


def add_routes(router: APIRouter, state: AppState, run_job) -> None:
    """txt2img, img2img, progress, interrupt and skip on ``router``."""
    preview = PreviewCache(state)

    @router.post("/txt2img", response_model=models.ImageResponse)
    async def txt2img(request: models.Txt2ImgRequest) -> models.ImageResponse:
        prepared = await run_in_threadpool(prepare_txt2img, state, request)
        return await respond(request, prepared, request.model_dump())

    @router.post("/img2img", response_model=models.ImageResponse)
    async def img2img(request: models.Img2ImgRequest) -> models.ImageResponse:
        prepared = await run_in_threadpool(prepare_img2img, state, request)
        parameters = request.model_dump()
        if not request.include_init_images:  # A1111 sends the pictures back only when asked
            parameters.update(init_images=None, mask=None)
        return await respond(request, prepared, parameters)

    async def respond(request: models.Txt2ImgRequest, prepared: Prepared,
                      parameters: dict[str, object]) -> models.ImageResponse:
        """Run the prepared job in the queue and answer as A1111 does."""
        if prepared.script is not None:  # every job of the script checked before it is queued
            script, settings = prepared.script
            plan = await run_in_threadpool(plan_script, state, prepared.params, script, settings)
            processed = await run_job(run_script, state, script, plan, task_id=request.force_task_id)
        else:
            processed = await run_job(run_generation, state, prepared.params, task_id=request.force_task_id)
        processed.comments.extend(prepared.comments)
        if not request.override_settings_restore_afterwards:
            for key, value in prepared.params.override_settings.items():
                await run_job(state.opts.set, key, value)
        images = None
        if request.send_images:
            images = [encode_png(image, text) for image, text in zip(processed.images, processed.infotexts)]
        info = processed.info()
        info.update(prompt=prepared.prompt, negative_prompt=prepared.negative_prompt, styles=list(request.styles or []))
        return models.ImageResponse(images=images, parameters=parameters, info=json.dumps(info))

    @router.get("/progress", response_model=models.ProgressResponse)
    def progress(skip_current_image: bool = False) -> models.ProgressResponse:
        job = state.job
        value, eta = job.progress()
        progress_state = models.ProgressState(
            skipped=job.skipped, interrupted=job.interrupted, job=job.job, job_count=job.job_count,
            job_timestamp=job.job_timestamp, job_no=job.job_no, sampling_step=job.sampling_step,
            sampling_steps=job.sampling_steps)
        image = None
        if job.job_count and not skip_current_image:
            image, _ = preview.get()
        return models.ProgressResponse(progress=value, eta_relative=eta, state=progress_state,
                                       current_image=image, textinfo=job.textinfo)

    @router.post("/interrupt")
    def interrupt() -> None:
        state.job.interrupt()

    @router.post("/skip")
    def skip() -> None:
        state.job.skip()


def add_internal_routes(router: APIRouter, state: AppState) -> None:
    """A1111's ``POST /internal/progress`` and ``GET /internal/pending-tasks``."""
    preview = PreviewCache(state)

    @router.post("/progress", response_model=models.InternalProgressResponse)
    def internal_progress(request: models.InternalProgressRequest) -> models.InternalProgressResponse:
        task = request.id_task or ""
        running, place, waiting, finished = state.queue.status(task)
        if not running:
            textinfo = f"In queue: {place + 1}/{waiting}" if place is not None else "Waiting..."
            return models.InternalProgressResponse(active=False, queued=place is not None, completed=finished,
                                                   id_live_preview=-1, textinfo=textinfo)
        job = state.job
        value, eta = _a1111_ui_progress(job)
        live, preview_id = None, request.id_live_preview
        if request.live_preview and int(state.opts["show_progress_every_n_steps"]) > 0:
            image, latest = preview.get()
            if image is not None and latest != request.id_live_preview:
                live, preview_id = f"data:image/png;base64,{image}", latest
        return models.InternalProgressResponse(active=True, queued=False, completed=False, progress=value, eta=eta,
                                               live_preview=live, id_live_preview=preview_id, textinfo=job.textinfo)

    @router.get("/pending-tasks", response_model=models.PendingTasksResponse)
    def pending_tasks() -> models.PendingTasksResponse:
        waiting = state.queue.waiting
        return models.PendingTasksResponse(size=len(waiting), tasks=waiting)


def _a1111_ui_progress(job) -> tuple[float, float | None]:
    """``/internal/progress``'s numbers: like /sdapi's but without the 0.01 head start, eta None at 0."""
    job_count, job_no = job.job_count, job.job_no
    steps, step, start = job.sampling_steps, job.sampling_step, job.time_start
    value = 0.0
    if job_count > 0:
        value += job_no / job_count
        if steps > 0:
            value += step / steps / job_count
    value = min(value, 1.0)
    if start is None or value <= 0:
        return value, None
    elapsed = time.time() - start
    return value, elapsed / value - elapsed
