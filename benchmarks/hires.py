"""Hires. fix against vanilla diffusers' own chain: same weights, sampler, seed and step plan, side by side.

Ours is ``modules.processing.process`` with ``enable_hr`` (Latent upscaler, x2, Euler, denoising 0.625): first
pass, latent upscale, img2img pass at the new size, decode, infotext. Vanilla is what a diffusers user writes for
the same picture: ``StableDiffusionPipeline(output_type="latent")`` → ``torch.nn.functional.interpolate`` (bilinear,
x2) → ``StableDiffusionImg2ImgPipeline`` over the same modules with ``strength`` and ``num_inference_steps`` set to
run the same steps of the same stretched schedule. Both run in one process on the same module objects, interleaved
A B / B A after warm-up; the result is the median of the per-pair ratios ours/vanilla, and the pictures are
compared (``tests/test_hires.py`` asserts they agree within one uint8 level).

Models: ``--device cpu`` uses the tiny demo model (64² → 128²); ``--device cuda`` a generated full-size SD1.5 with
random fp16 weights (512² → 1024², A1111's usual hires job). Usage::

    python benchmarks/hires.py --threads 1 --write-docs     # CPU, tiny model
    python benchmarks/hires.py --device cuda --write-docs   # GPU: SD1.5 fp16 512² → 1024², 20 + 20 steps
    python benchmarks/hires.py --quick                      # smoke run
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from modules.state import AppState

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` and ``modules`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import DOCS_FILE, append_to_docs, count_at_least, cuda_unavailable, setup  # noqa: E402
from benchmarks.txt2img import (  # noqa: E402
    PROMPT,
    _quartiles,
    _ratio_cell,
    _timed,
    _uint8,
    build_app_state,
    environment,
    write_random_sd15,
    write_tiny_checkpoint,
)

CFG_SCALE = 7.0
STRENGTH = 0.625  # with 20 hires steps: a 32-step schedule whose last 20 run; diffusers' img2img does the same
HEADING = "## Hires. fix: ours vs diffusers' txt2img → latent upscale → img2img"


@dataclass(slots=True)
class Result:
    size: int
    steps: int
    ours: list[float] = field(default_factory=list)
    vanilla: list[float] = field(default_factory=list)
    max_diff: int = -1

    @property
    def label(self) -> str:
        return f"{self.size}² → {2 * self.size}², Euler {self.steps} + {self.steps} st"


def run_ours(state: AppState, size: int, steps: int, seed: int) -> list[Image.Image]:
    from modules import processing
    from modules.processing_params import GenerationParams

    params = GenerationParams(prompt=PROMPT, steps=steps, sampler_name="Euler", cfg_scale=CFG_SCALE, width=size,
                              height=size, seed=seed, save_images=False, enable_hr=True, hr_scale=2.0,
                              denoising_strength=STRENGTH, hr_upscaler="Latent")
    return processing.process(state, params).images


def vanilla_side(state: AppState, size: int, steps: int, seed: int, device: str) -> Callable[[], list[Image.Image]]:
    """The diffusers chain over the loaded model's modules (built once; the call runs it)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from modules import hires, samplers

    pipe = state.models.current.pipe
    sampler, schedule = samplers.split_sampler_and_schedule("Euler", "Automatic")
    parts = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    txt2img = StableDiffusionPipeline(**parts, scheduler=samplers.create_scheduler(sampler, schedule,
                                                                                   pipe.scheduler.config))
    img2img = StableDiffusionImg2ImgPipeline(**parts, scheduler=samplers.create_scheduler(sampler, schedule,
                                                                                          pipe.scheduler.config))
    for p in (txt2img, img2img):
        p.set_progress_bar_config(leave=False)
    plan = hires.step_plan(steps, STRENGTH)
    strength = (plan.run + 0.5) / plan.total  # int(total · strength) == run, whatever the float rounding

    def run() -> list[Image.Image]:
        latents = txt2img(prompt=PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=CFG_SCALE,
                          width=size, height=size, generator=torch.Generator(device).manual_seed(seed),
                          output_type="latent").images
        upscaled = torch.nn.functional.interpolate(latents, scale_factor=2, mode="bilinear")
        return img2img(prompt=PROMPT, negative_prompt="", image=upscaled, strength=strength,
                       num_inference_steps=plan.total, guidance_scale=CFG_SCALE,
                       generator=torch.Generator(device).manual_seed(seed)).images
    return run


def measure(state: AppState, size: int, steps: int, device: str, repeats: int, warmup: int, seed: int) -> Result:
    sides = {"ours": lambda: run_ours(state, size, steps, seed), "vanilla": vanilla_side(state, size, steps, seed,
                                                                                         device)}
    return time_sides(sides, Result(size, steps), device, repeats, warmup)


def time_sides(sides: dict[str, Callable[[], list[Image.Image]]], result: Result, device: str, repeats: int,
               warmup: int) -> Result:
    """``warmup`` untimed runs of each side, then ``repeats`` pairs timed A B / B A into ``result``, and the two
    sides' last pictures compared (``result.max_diff``)."""
    import numpy as np

    for _ in range(warmup):
        for fn in sides.values():
            fn()
    outputs: dict[str, list[Image.Image]] = {}
    for i in range(repeats):
        for name in (("ours", "vanilla") if i % 2 == 0 else ("vanilla", "ours")):
            seconds, _, outputs[name] = _timed(sides[name], device)
            getattr(result, name).append(seconds)
    result.max_diff = int(np.abs(_uint8(outputs["ours"]) - _uint8(outputs["vanilla"])).max())
    return result


def table(results: Sequence[Result], steps: int = 0, label: Callable[[Result], str] = lambda r: r.label,
          first_column: str = "Job") -> str:
    """The side-by-side table (this benchmark's, and img2img's and xyz.py's with their own ``label``)."""
    lines = [f"| {first_column} | ours median (s) | vanilla median (s) | ours/vanilla [IQR] (overhead) | Max Δpixel |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {label(r)} | {_quartiles(r.ours)[1]:.3f} | {_quartiles(r.vanilla)[1]:.3f} | "
                     f"{_ratio_cell([a / b for a, b in zip(r.ours, r.vanilla, strict=True)])} | {r.max_diff} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table (and append a dated section to the docs with --write-docs)."""
    return compare_main(argv, __doc__, "benchmarks/hires.py", HEADING, 3, measure, table,
                        "each pass's steps (default 20)")


def compare_main(argv: Sequence[str] | None, doc: str, script: str, heading: str, quick_steps: int,
                 measure_one: Callable[..., Result], make_table: Callable[[Sequence[Result], int], str],
                 steps_help: str) -> int:
    """The command line of a side-by-side benchmark (this one, benchmarks/img2img.py): parse the options, build
    the model and app state (tiny on the CPU, random SD1.5 fp16 on CUDA), ``measure_one``, print the dated section
    (environment, command, method, ``make_table``) and append it to the docs with --write-docs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=count_at_least(1), default=5, help="timed pairs (default 5)")
    parser.add_argument("--warmup", type=count_at_least(0), default=1, help="untimed runs per side first")
    parser.add_argument("--steps", type=count_at_least(1), default=20, help=steps_help)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=count_at_least(1), default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick_steps} steps, 1 pair, 1 warm-up")
    parser.add_argument("--write-docs", action="store_true", help=f"append the results to {DOCS_FILE}")
    args = parser.parse_args(argv)
    setup()
    import torch

    if cuda_unavailable(args.device):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, repeats = (quick_steps, 1) if args.quick else (args.steps, args.repeats)
    size = 512 if args.device == "cuda" else 64
    with tempfile.TemporaryDirectory(prefix="bench-side-by-side-") as tmp:
        ckpt_dir = Path(tmp) / "data" / "models" / "Stable-diffusion"
        if args.device == "cpu":
            write_tiny_checkpoint(ckpt_dir)
        else:
            write_random_sd15(ckpt_dir, args.device)
        state = build_app_state(Path(tmp) / "data", args.device)
        try:
            results = [measure_one(state, size, steps, args.device, repeats, args.warmup, args.seed)]
            env = environment(state, args.device, torch.get_num_threads())
        finally:
            state.queue.shutdown()
    model = "tiny" if args.device == "cpu" else "random full-size SD1.5"
    lines = [f"### {env['Date']} — {env['Device'].split(' dtype=')[0]}, {model} model", ""]
    lines += [f"- {key}: {value}" for key, value in env.items() if key != "Date"]
    lines += [f"- Command: `{shlex.join(['python', script, *argv])}`",
              f"- Method: {args.warmup} warm-up run(s) per side, then {repeats} interleaved pairs; ratio = median "
              "of the per-pair wall-time ratios ours/vanilla [IQR]; Max Δpixel: uint8, ours vs vanilla (we truncate "
              "as A1111, diffusers rounds).", "", make_table(results, steps), ""]
    section = "\n".join(lines)
    print(section)
    if args.write_docs:
        append_to_docs(section, heading=heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
