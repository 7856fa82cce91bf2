"""The parameters of one txt2img or img2img job, with A1111's names, validated before anything runs.

Every check raises :class:`ParamsError` naming the field, the bad value and what would be accepted, so the UI
and the API can show it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from modules import hires, img2img, samplers

MAX_SIDE = 4096  # pixels; beyond this even a 80 GB GPU runs out of memory in the VAE
MIN_SIDE = 64
MAX_BATCH_SIZE = 64
MAX_N_ITER = 1000
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1


class ParamsError(ValueError):
    """A generation parameter is out of range; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """A txt2img request, or an img2img one when ``init_images`` are given. Field names and defaults are A1111's
    (UI defaults: DPM++ 2M, 20 steps)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0  # "Resize seed from width/height": off unless both are positive
    seed_resize_from_h: int = 0
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int | None = None  # None: the CLIP_stop_at_last_layers setting
    # Hires. fix: a second pass at a larger size, started from the first pass's upscaled result (modules/hires.py)
    enable_hr: bool = False
    denoising_strength: float = 0.75  # A1111's default for txt2img (its page starts at 0.7)
    hr_scale: float = 2.0  # "Upscale by", used when hr_resize_x and hr_resize_y are both 0
    hr_upscaler: str | None = None  # None: "Latent" (A1111's latent_upscale_default_mode), not named in the infotext
    hr_second_pass_steps: int = 0  # 0: as many as the first pass
    hr_resize_x: int = 0  # "Resize width to"; 0 with hr_resize_y 0: hr_scale decides
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None  # None: the job's checkpoint; else one to load for the hires pass
    hr_sampler_name: str | None = None  # None: the first pass's sampler
    hr_scheduler: str | None = None  # None: the first pass's schedule type
    hr_prompt: str = ""  # "": the prompt
    hr_negative_prompt: str = ""  # "": the negative prompt
    # img2img: the pictures to start from (modules/img2img.py); none makes a txt2img job
    init_images: tuple[Image.Image, ...] = ()
    resize_mode: int = 0  # img2img.RESIZE_MODES: Just resize, Crop and resize, Resize and fill, latent upscale
    initial_noise_multiplier: float | None = None  # None: the initial_noise_multiplier setting
    # inpainting (modules/masking.py): a mask, white or opaque where the picture is redrawn; A1111's API defaults
    mask: Image.Image | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0  # masking.MASKED_CONTENT: fill, original, latent noise, latent nothing
    inpaint_full_res: bool = True  # "Only masked" (the page's default is "Whole picture")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0  # 1: "Inpaint not masked"
    mask_round: bool = True
    save_images: bool = True
    override_settings: Mapping[str, object] = field(default_factory=dict)

    def validate(self) -> GenerationParams:
        """Check every field; returns ``self`` so it can be chained.

        Raises:
            ParamsError: the first problem found.
        """
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, MIN_SIDE, MAX_SIDE)
            if value % 8:
                lower, upper = value // 8 * 8, value // 8 * 8 + 8
                raise ParamsError(f"{name} must be a multiple of 8 (the latent is 1/8 of the image); "
                                  f"got {value}, use {lower} or {upper}")
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("n_iter", self.n_iter, 1, MAX_N_ITER)
        _check_int("seed", self.seed, -1, MAX_SEED)
        _check_int("subseed", self.subseed, -1, MAX_SEED)
        _check_int("seed_resize_from_w", self.seed_resize_from_w, -1, MAX_SIDE)
        _check_int("seed_resize_from_h", self.seed_resize_from_h, -1, MAX_SIDE)
        if self.clip_skip is not None:
            _check_int("clip_skip", self.clip_skip, 1, 12)
        if not isinstance(self.cfg_scale, (int, float)) or not math.isfinite(self.cfg_scale) or not 0 <= self.cfg_scale <= 100:
            raise ParamsError(f"cfg_scale must be a number from 0 to 100; got {self.cfg_scale!r}")
        if not isinstance(self.subseed_strength, (int, float)) or not 0 <= self.subseed_strength <= 1:
            raise ParamsError(f"subseed_strength must be from 0 to 1; got {self.subseed_strength!r}")
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ParamsError(f"{name} must be text; got {type(getattr(self, name)).__name__}")
        try:
            samplers.split_sampler_and_schedule(self.sampler_name, self.scheduler)
        except samplers.SamplerError as e:
            raise ParamsError(str(e)) from None
        if self.enable_hr:
            if self.init_images:
                raise ParamsError("Hires. fix is a txt2img feature; an img2img job cannot use it (enable_hr)")
            self._validate_hires()
        if self.init_images:
            self._validate_img2img()
        return self

    def _validate_img2img(self) -> None:
        self._check_strength()
        _check_int("resize_mode", self.resize_mode, 0, len(img2img.RESIZE_MODES) - 1)
        if not all(isinstance(image, Image.Image) for image in self.init_images):
            raise ParamsError("init_images must be pictures")
        multiplier = self.initial_noise_multiplier
        if multiplier is not None and (isinstance(multiplier, bool) or not isinstance(multiplier, (int, float))
                                       or not 0 <= multiplier <= 1.5):
            raise ParamsError(f"initial_noise_multiplier must be from 0 to 1.5; got {multiplier!r}")
        try:
            img2img.check_pictures(self.init_images, self.batch_size, self.resize_mode, MAX_SIDE)
        except img2img.Img2ImgError as e:
            raise ParamsError(str(e)) from None
        if self.mask is not None:
            if not isinstance(self.mask, Image.Image):
                raise ParamsError("mask must be a picture")
            _check_int("mask_blur_x", self.mask_blur_x, 0, 64)
            _check_int("mask_blur_y", self.mask_blur_y, 0, 64)
            _check_int("inpainting_fill", self.inpainting_fill, 0, 3)
            _check_int("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, MAX_SIDE)
            _check_int("inpainting_mask_invert", int(self.inpainting_mask_invert), 0, 1)

    def _check_strength(self) -> None:
        if not isinstance(self.denoising_strength, (int, float)) or isinstance(self.denoising_strength, bool) or \
                not 0 <= self.denoising_strength <= 1:
            raise ParamsError(f"denoising_strength must be from 0 to 1; got {self.denoising_strength!r}")

    def _validate_hires(self) -> None:
        self._check_strength()
        scale = self.hr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or \
                not 0 < scale <= 8:
            raise ParamsError(f"hr_scale (Upscale by) must be a number above 0, at most 8; got {self.hr_scale!r}")
        _check_int("hr_second_pass_steps", self.hr_second_pass_steps, 0, MAX_STEPS)
        _check_int("hr_resize_x", self.hr_resize_x, 0, MAX_SIDE)
        _check_int("hr_resize_y", self.hr_resize_y, 0, MAX_SIDE)
        if self.hr_checkpoint_name is not None and not isinstance(self.hr_checkpoint_name, str):
            raise ParamsError(f"hr_checkpoint_name must be a checkpoint's name; got {self.hr_checkpoint_name!r}")
        for name in ("hr_prompt", "hr_negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ParamsError(f"{name} must be text; got {type(getattr(self, name)).__name__}")
        if self.hr_upscaler is not None and self.hr_upscaler not in hires.UPSCALERS:
            raise ParamsError(f"hr_upscaler {self.hr_upscaler!r} is not available here; use one of: "
                              f"{', '.join(hires.UPSCALERS)}")
        try:
            samplers.split_sampler_and_schedule(self.hr_sampler_name or self.sampler_name,
                                                self.hr_scheduler or self.scheduler)
        except samplers.SamplerError as e:
            raise ParamsError(f"hires pass: {e}") from None
        target = hires.target_size(self)
        for name, value in (("width", target.width), ("height", target.height)):
            if not MIN_SIDE <= value <= MAX_SIDE:
                raise ParamsError(f"the hires pass would make the {name} {value} pixels; it must be from {MIN_SIDE} "
                                  f"to {MAX_SIDE}: change Upscale by (hr_scale) or Resize width/height to")
        if max(target.upscale_width, target.upscale_height) > MAX_SIDE:  # before the crop to the asked size
            raise ParamsError(f"the hires pass would upscale to {target.upscale_width}x{target.upscale_height} "
                              f"before cropping to {target.width}x{target.height} (at most {MAX_SIDE} a side): "
                              "ask for a size closer to the first pass's aspect ratio")

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def job_count(self) -> int:
        """The batches the job's progress counts: A1111 counts a Hires. fix pass as one more."""
        return self.n_iter * (2 if self.enable_hr else 1)

    @property
    def mode(self) -> str:
        """``"img2img"`` when the job starts from pictures, else ``"txt2img"`` (job names, output folders)."""
        return "img2img" if self.init_images else "txt2img"


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{name} must be a whole number; got {value!r}")
    if not low <= value <= high:
        raise ParamsError(f"{name} must be from {low} to {high}; got {value}")
