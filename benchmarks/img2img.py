"""img2img against vanilla diffusers' ``StableDiffusionImg2ImgPipeline``: same weights, picture, sampler, seed and
steps, side by side.

Ours is ``modules.processing.process`` with an init picture (Euler, 20 steps, denoising 0.75: A1111 runs
``int(0.75 · 20) + 1 = 16`` of them): fit the picture, VAE-encode it, sample, decode, infotext. Vanilla is what a
diffusers user writes for the same, reproducible picture: the picture VAE-encoded (posterior mean, as we do; the
pipeline itself would sample the posterior) and ``StableDiffusionImg2ImgPipeline`` over the same modules with a
``strength`` that runs the same 16 steps. Both run in one process on the same module objects, interleaved A B / B A
after warm-up; the result is the median of the per-pair ratios ours/vanilla, and the pictures are compared
(``tests/test_img2img.py`` asserts they agree within one uint8 level).

Models: ``--device cpu`` uses the tiny demo model (64²); ``--device cuda`` a generated full-size SD1.5 with random
fp16 weights (512²). Usage::

    python benchmarks/img2img.py --threads 1 --write-docs     # CPU, tiny model
    python benchmarks/img2img.py --device cuda --write-docs   # GPU: SD1.5 fp16 512², 16 of 20 steps
    python benchmarks/img2img.py --quick                      # smoke run
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from modules.state import AppState

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` and ``modules`` importable
    sys.path.insert(0, str(REPO))

from benchmarks import hires  # noqa: E402
from benchmarks.hires import Result, compare_main, time_sides  # noqa: E402
from benchmarks.txt2img import PROMPT  # noqa: E402

CFG_SCALE = 7.0
STRENGTH = 0.75
HEADING = "## img2img: ours vs diffusers' StableDiffusionImg2ImgPipeline"


def init_picture(size: int) -> Image.Image:
    """A smooth picture with a disc on it (what a photo-like start gives the VAE)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.stack([x / size * 200, y / size * 180, np.full_like(x, 60.0)], axis=-1)
    rgb[((x - size * 0.6) ** 2 + (y - size * 0.4) ** 2) < (size * 0.25) ** 2] = (230, 40, 30)
    return Image.fromarray(rgb.astype(np.uint8))


def run_ours(state: AppState, picture: Image.Image, steps: int, seed: int) -> list[Image.Image]:
    from modules import processing
    from modules.processing_params import GenerationParams

    params = GenerationParams(prompt=PROMPT, steps=steps, sampler_name="Euler", cfg_scale=CFG_SCALE,
                              width=picture.width, height=picture.height, seed=seed, save_images=False,
                              init_images=(picture,), denoising_strength=STRENGTH)
    return processing.process(state, params).images


def vanilla_side(state: AppState, picture: Image.Image, steps: int, seed: int,
                 device: str) -> Callable[[], list[Image.Image]]:
    """The diffusers pipeline over the loaded model's modules (built once; the call encodes and runs it)."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from modules import img2img, samplers

    pipe = state.models.current.pipe
    sampler, schedule = samplers.split_sampler_and_schedule("Euler", "Automatic")
    vanilla = StableDiffusionImg2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=samplers.create_scheduler(sampler, schedule, pipe.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    vanilla.set_progress_bar_config(leave=False)
    plan = img2img.step_plan(steps, STRENGTH, fix_steps=False)
    strength = min(1.0, (plan.run + 0.5) / plan.total)  # int(total · strength) == run, whatever the rounding
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]

    def run() -> list[Image.Image]:
        vae = pipe.vae
        with torch.no_grad():
            latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
        return vanilla(prompt=PROMPT, negative_prompt="", image=latents, strength=strength,
                       num_inference_steps=plan.total, guidance_scale=CFG_SCALE,
                       generator=torch.Generator(device).manual_seed(seed)).images
    return run


def measure(state: AppState, size: int, steps: int, device: str, repeats: int, warmup: int, seed: int) -> Result:
    picture = init_picture(size)
    sides = {"ours": lambda: run_ours(state, picture, steps, seed),
             "vanilla": vanilla_side(state, picture, steps, seed, device)}
    return time_sides(sides, Result(size, steps), device, repeats, warmup)


def table(results: Sequence[Result], steps: int) -> str:
    """Both sides include the VAE encode of the picture."""
    from modules import img2img

    steps_run = img2img.step_plan(steps, STRENGTH, fix_steps=False).run
    return hires.table(results, steps, lambda r: f"{r.size}², Euler {steps_run} of {r.steps} st, strength {STRENGTH}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table (and append a dated section to the docs with --write-docs)."""
    return compare_main(argv, __doc__, "benchmarks/img2img.py", HEADING, 4, measure, table,
                        "sampling steps (default 20)")


if __name__ == "__main__":
    sys.exit(main())
