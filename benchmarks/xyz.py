"""An X/Y/Z plot of LoRA weights against the same grid made with vanilla diffusers, side by side.

The plot is the usual one: one kohya LoRA (rank 16, every attention and feed-forward layer of the UNet and text
encoder) at four weights (Prompt S/R over ``<lora:ink:0.25>`` … ``<lora:ink:1>``) × two CFG scales, Euler, one
seed. Ours is ``modules.xyz_grid.plan`` + ``run``: eight jobs, each patching the LoRA's new weight into the merged
weights, then the grid. Vanilla is what a diffusers user writes: the LoRA loaded once as a PEFT adapter
(``load_lora_weights``) on copies of the same UNet and text encoder, ``set_adapters`` to each weight, the pipeline
per cell, then ``make_image_grid``. Both run in one process, interleaved A B / B A after warm-up; the result is the
median of the per-pair ratios ours/vanilla, and the cells are compared pixel by pixel.

Models: ``--device cpu`` uses the tiny demo model (64²); ``--device cuda`` a generated full-size SD1.5 with random
fp16 weights (512²). Usage::

    python benchmarks/xyz.py --threads 1 --write-docs     # CPU, tiny model
    python benchmarks/xyz.py --device cuda --write-docs   # GPU: SD1.5 fp16 512², 8 cells of 20 steps
    python benchmarks/xyz.py --quick                      # smoke run
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

WEIGHTS = (0.25, 0.5, 0.75, 1.0)
CFG_SCALES = (5.0, 8.0)
RANK = 16
HEADING = "## X/Y/Z plot of LoRA weights: ours vs the same grid in diffusers (set_adapters)"


def write_lora(state: AppState) -> Path:
    """The LoRA file, in the LoRA folder (kohya keys for the loaded model's shapes)."""
    from benchmarks.networks import lora_targets, write_kohya_lora

    pipe = state.models.current.pipe
    path = state.paths.lora_dir / "ink.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_kohya_lora(path, lora_targets(pipe.unet, pipe.text_encoder), RANK, float(RANK), seed=3)
    state.libraries["lora"].refresh()
    return path


def ours_side(state: AppState, size: int, steps: int, seed: int) -> Callable[[], list[Image.Image]]:
    from modules import xyz_grid
    from modules.processing_params import GenerationParams

    params = GenerationParams(prompt=f"{PROMPT} <lora:ink:{WEIGHTS[0]}>", steps=steps, sampler_name="Euler",
                              width=size, height=size, seed=seed, save_images=False)
    settings = xyz_grid.XyzSettings(
        xyz_grid.AxisSetting("Prompt S/R", ", ".join(f"ink:{w}" for w in WEIGHTS)),
        xyz_grid.AxisSetting("CFG Scale", ", ".join(str(c) for c in CFG_SCALES)),
        draw_legend=False, include_lone_images=True)

    def run() -> list[Image.Image]:
        result = xyz_grid.run(state, xyz_grid.plan(state, params, settings))
        return result.images[1:]  # the cells (the grid is made too)
    return run


def vanilla_side(state: AppState, lora: Path, size: int, steps: int, seed: int,
                 device: str) -> Callable[[], list[Image.Image]]:
    """diffusers' pipeline on copies of the UNet and text encoder with the LoRA as an adapter (built once)."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import make_image_grid

    from modules import samplers

    pipe = state.models.current.pipe
    sampler, schedule = samplers.split_sampler_and_schedule("Euler", "Automatic")
    vanilla = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=copy.deepcopy(pipe.text_encoder), tokenizer=pipe.tokenizer,
        unet=copy.deepcopy(pipe.unet), scheduler=samplers.create_scheduler(sampler, schedule, pipe.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    vanilla.set_progress_bar_config(leave=False)
    vanilla.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="ink")

    def run() -> list[Image.Image]:
        cells = []
        for cfg in CFG_SCALES:  # Y down, X across, as the plot runs them
            for weight in WEIGHTS:
                vanilla.set_adapters(["ink"], adapter_weights=[weight])
                cells += vanilla(prompt=PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=cfg,
                                 width=size, height=size, generator=torch.Generator(device).manual_seed(seed)).images
        make_image_grid(cells, rows=len(CFG_SCALES), cols=len(WEIGHTS))
        return cells
    return run


def measure(state: AppState, size: int, steps: int, device: str, repeats: int, warmup: int, seed: int) -> Result:
    lora = write_lora(state)
    sides = {"ours": ours_side(state, size, steps, seed), "vanilla": vanilla_side(state, lora, size, steps, seed,
                                                                                 device)}
    return time_sides(sides, Result(size, steps), device, repeats, warmup)


def table(results: Sequence[Result], steps: int) -> str:
    """Each side's time is the whole grid: 8 jobs and the picture made of them."""
    return hires.table(results, steps, lambda r: f"{len(WEIGHTS)} LoRA weights × {len(CFG_SCALES)} CFG, {r.size}², "
                                                 f"Euler {r.steps} st", "Grid")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table (and append a dated section to the docs with --write-docs)."""
    return compare_main(argv, __doc__, "benchmarks/xyz.py", HEADING, 3, measure, table,
                        "sampling steps per cell (default 20)")


if __name__ == "__main__":
    sys.exit(main())
