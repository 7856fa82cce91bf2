"""Our txt2img path against vanilla diffusers ``StableDiffusionPipeline``: same weights, scheduler and seed.

Both sides run in one process on the *same* module objects, interleaved A B / B A after warm-up runs, so
machine load hits both alike; the result is the ratio ours/vanilla (median of the per-pair ratios). Ours is
``modules.processing.process`` (validation, conditioning, noise, loop, per-image decode, infotexts, grid);
vanilla is ``StableDiffusionPipeline(same components, same scheduler class and config)(..., output_type="pil")``.
The images of both are compared too. ``docs/benchmarks.md`` says exactly what each side includes.

Models: ``--device cpu`` uses the tiny demo model; ``--device cuda`` a full-size SD1.5 with random fp16 weights
generated in a temp folder (no download). Usage::

    python benchmarks/txt2img.py --threads 1 --repeats 9 --write-docs   # CPU, tiny model
    python benchmarks/txt2img.py --device cuda --write-docs             # GPU: SD1.5 fp16 512², batch 1 and 8
    python benchmarks/txt2img.py --quick                                # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from modules.state import AppState

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` and ``modules`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    DOCS_FILE,
    append_to_docs,
    count_at_least,
    cpu_model,
    cuda_unavailable,
    setup,
)

PROMPT = "a photograph of an astronaut riding a horse on mars, highly detailed"
CFG_SCALE = 7.0
WEIGHT_STD = 0.02  # random full-size weights: N(0, 0.02²), norm scales 1 (keeps fp16 activations finite)

logger = logging.getLogger("benchmarks.txt2img")


@dataclass(frozen=True, slots=True)
class Config:
    """One measured configuration."""

    size: int
    batch: int
    sampler: str
    steps: int

    @property
    def label(self) -> str:
        return f"{self.size}² b{self.batch} {self.sampler} {self.steps} st"


@dataclass(slots=True)
class Result:
    """Timings (seconds) of both sides, pair by pair, and the image comparison."""

    config: Config
    ours: list[float] = field(default_factory=list)
    vanilla: list[float] = field(default_factory=list)
    ours_cpu: list[float] = field(default_factory=list)  # process CPU time: robust to other processes' load
    vanilla_cpu: list[float] = field(default_factory=list)
    max_diff: int = -1  # ours vs vanilla PIL images, max |Δ| over all uint8 values
    differing: float = 0.0  # fraction of uint8 values that differ
    max_diff_same_rounding: int = -1  # vanilla's float output quantised our way (truncation), vs ours
    max_diff_same_decode: int = -1  # vanilla's final latents through our decode, vs ours: the sampling alone

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.vanilla, strict=True)]

    @property
    def cpu_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours_cpu, self.vanilla_cpu, strict=True)]


# -- checkpoints ------------------------------------------------------------------------------------------------

def write_tiny_checkpoint(ckpt_dir: Path) -> Path:
    """The tiny SD1.5-layout demo model (single-file LDM + sidecar yaml)."""
    from modules import demo_model

    return demo_model.write_checkpoint(ckpt_dir / "tiny-sd15.safetensors")


def random_weights(module: torch.nn.Module, generator: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    """Random fp16 (CPU) values for every floating-point entry of ``module``'s state dict, in the diffusers key layout.

    Norm scales are 1, everything else N(0, ``WEIGHT_STD``²), drawn on ``device`` with ``generator``; ``module`` may
    live on the meta device (only the shapes are read). Integer buffers (CLIP's ``position_ids``) are left out.
    """
    import torch

    out = {}
    for key, meta in module.state_dict().items():
        if not meta.is_floating_point():
            continue
        if "norm" in key and key.endswith(".weight") and meta.ndim == 1:
            out[key] = torch.ones(meta.shape, dtype=torch.float16)
        else:
            value = torch.randn(meta.shape, generator=generator, device=device, dtype=torch.float32)
            out[key] = value.mul_(WEIGHT_STD).to(torch.float16).cpu()
    return out


def write_random_sd15(ckpt_dir: Path, device: str, seed: int = 0) -> Path:
    """A full-size SD1.5 single-file LDM checkpoint with random fp16 weights (about 2 GB).

    The modules are built on the meta device from ``configs/sd15`` only to read their state-dict shapes;
    every tensor is then drawn directly (on ``device``, fast on a GPU) and renamed with ``modules.ldm_format``.
    No sidecar yaml: the loader uses SD1.5's bundled configs, as for a real SD1.5 file.
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules import ldm_format
    from modules.paths import CONFIGS_DIR

    start = time.perf_counter()
    sd15 = CONFIGS_DIR / "sd15"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(sd15 / "text_encoder" / "config.json"))
    generator = torch.Generator(device).manual_seed(seed)

    state = {**ldm_format.unet_to_ldm(random_weights(unet, generator, device), unet.config),
             **ldm_format.vae_to_ldm(random_weights(vae, generator, device), vae.config),
             **ldm_format.text_encoder_to_ldm(random_weights(text_encoder, generator, device))}
    positions = text_encoder.config.max_position_embeddings
    state[ldm_format.CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    path = ckpt_dir / "random-sd15-fp16.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    size_gb = path.stat().st_size / 1e9
    logger.info("Wrote random SD1.5 checkpoint: %s (%.2f GB, %d tensors) in %.1fs", path, size_gb, len(state),
                time.perf_counter() - start)
    return path


# -- the two sides ----------------------------------------------------------------------------------------------

def build_app_state(data_dir: Path, device: str) -> AppState:
    """An AppState over ``data_dir`` as webui.py builds it, with the checkpoint there loaded."""
    from modules import cmd_args, initialize

    flags = ["--data-dir", str(data_dir), "--no-download-sd-model"]
    if device == "cpu":
        flags += ["--use-cpu", "all"]
    state = initialize.build_state(cmd_args.parse_args(flags))
    if state.policy.device.type != device:
        raise SystemExit(f"asked for --device {device} but the device policy chose {state.policy.describe()}")
    info = state.models.checkpoints[0]
    state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False)
    state.models.load(info)
    logger.info("Policy: %s", state.policy.describe())
    return state


def vanilla_pipeline(state: AppState, sampler_name: str):
    """A plain ``StableDiffusionPipeline`` over the loaded model's own modules, with our scheduler for the sampler."""
    from diffusers import StableDiffusionPipeline

    from modules import samplers

    pipe = state.models.current.pipe
    sampler, schedule = samplers.split_sampler_and_schedule(sampler_name, "Automatic")
    vanilla = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=samplers.create_scheduler(sampler, schedule, pipe.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    vanilla.set_progress_bar_config(leave=False)  # as ours: a tqdm bar that does not stay
    return vanilla


def run_ours(state: AppState, config: Config, seed: int) -> list[Image.Image]:
    """Our full txt2img path; returns the samples (without the grid)."""
    from modules import processing
    from modules.processing_params import GenerationParams

    params = GenerationParams(
        prompt=PROMPT, negative_prompt="", steps=config.steps, sampler_name=config.sampler, scheduler="Automatic",
        cfg_scale=CFG_SCALE, width=config.size, height=config.size, seed=seed, batch_size=config.batch,
        save_images=False,
    )
    processed = processing.process(state, params)
    return processed.images[processed.index_of_first_image:]


def run_vanilla(vanilla, config: Config, seed: int, device: str, output_type: str = "pil"):
    """Vanilla diffusers. One generator per image (``seed + i``, A1111's rule) so batches are comparable too."""
    import torch

    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(config.batch)]
    out = vanilla(prompt=PROMPT, negative_prompt="", num_images_per_prompt=config.batch,
                  num_inference_steps=config.steps, guidance_scale=CFG_SCALE, width=config.size,
                  height=config.size, generator=generators[0] if config.batch == 1 else generators,
                  output_type=output_type)
    return out.images


# -- measuring --------------------------------------------------------------------------------------------------

def _timed(fn: Callable[[], object], device: str) -> tuple[float, float, object]:
    """``(wall seconds, process CPU seconds, fn())``, the GPU drained before and after."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def _uint8(images: Sequence[Image.Image]) -> np.ndarray:
    import numpy as np

    return np.stack([np.asarray(image.convert("RGB"), dtype=np.int16) for image in images])


def compare_images(result: Result, ours: list[Image.Image], vanilla: list[Image.Image], vanilla_float,
                   vanilla_decoded_ours: list[Image.Image]) -> None:
    """Fill the pixel comparison, narrowing down where a difference comes from.

    1. PIL vs PIL: everything (vanilla rounds to uint8, we truncate as A1111 does).
    2. Vanilla's float pixels truncated our way: everything but the rounding.
    3. Vanilla's final latents decoded by our ``sampling.decode``: the sampling alone (noise, conditioning, loop).
    """
    import numpy as np

    a, b = _uint8(ours), _uint8(vanilla)
    if a.shape != b.shape:
        raise RuntimeError(f"image shapes differ: ours {a.shape}, vanilla {b.shape}")
    diff = np.abs(a - b)
    result.max_diff, result.differing = int(diff.max()), float((diff > 0).mean())
    truncated = (255.0 * np.asarray(vanilla_float, dtype=np.float32)).astype(np.uint8).astype(np.int16)
    result.max_diff_same_rounding = int(np.abs(a - truncated).max())
    result.max_diff_same_decode = int(np.abs(a - _uint8(vanilla_decoded_ours)).max())
    if float(b.std()) == 0.0:
        logger.warning("%s: vanilla images are flat (one colour): NaN or overflow in the model?", result.config.label)


def measure(state: AppState, config: Config, device: str, repeats: int, warmup: int, seed: int) -> Result:
    """Warm up, then ``repeats`` pairs alternating A B / B A; then the image comparison."""
    vanilla = vanilla_pipeline(state, config.sampler)
    sides: dict[str, Callable[[], list[Image.Image]]] = {
        "ours": lambda: run_ours(state, config, seed),
        "vanilla": lambda: run_vanilla(vanilla, config, seed, device),
    }
    from modules import sampling

    result = Result(config)
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    outputs: dict[str, list[Image.Image]] = {}
    for i in range(repeats):
        order = ("ours", "vanilla") if i % 2 == 0 else ("vanilla", "ours")
        for name in order:
            seconds, cpu_seconds, outputs[name] = _timed(sides[name], device)
            getattr(result, name).append(seconds)
            getattr(result, name + "_cpu").append(cpu_seconds)
        logger.info("%s pair %d/%d: ours %.4fs vanilla %.4fs", config.label, i + 1, repeats, result.ours[-1],
                    result.vanilla[-1])
    vanilla_float = run_vanilla(vanilla, config, seed, device, output_type="np")
    vanilla_latents = run_vanilla(vanilla, config, seed, device, output_type="latent")
    decoded = sampling.decode(state.models.current.pipe.vae, vanilla_latents).images
    compare_images(result, outputs["ours"], outputs["vanilla"], vanilla_float, decoded)
    return result


def profile(state: AppState, config: Config, device: str, seed: int, folder: Path) -> None:
    """cProfile one (already warm) run of each side into ``folder``; read them with ``python -m pstats``."""
    import cProfile

    folder.mkdir(parents=True, exist_ok=True)
    vanilla = vanilla_pipeline(state, config.sampler)
    stem = f"{config.size}_b{config.batch}_{config.sampler.replace(' ', '').replace('+', 'p')}"
    for name, fn in (("ours", lambda: run_ours(state, config, seed)),
                     ("vanilla", lambda: run_vanilla(vanilla, config, seed, device))):
        gc.collect()
        profiler = cProfile.Profile()
        profiler.runcall(fn)  # returns PIL images: the GPU work is complete inside the profile
        profiler.dump_stats(folder / f"{stem}_{name}.prof")
    logger.info("Profiles written: %s/%s_{ours,vanilla}.prof", folder, stem)


# -- reporting --------------------------------------------------------------------------------------------------

def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def _ratio_cell(ratios: Sequence[float]) -> str:
    q1, median, q3 = _quartiles(ratios)
    return f"{median:.3f} [{q1:.3f}–{q3:.3f}] ({100 * (median - 1):+.1f} %)"


def results_table(results: Sequence[Result], device: str) -> str:
    """The markdown table: one "ours" and one "vanilla" row per configuration.

    The ratio columns are medians of the per-pair ratios ours/vanilla with their IQR and the overhead in %.
    On the CPU the CPU-time ratio is the steadier one when other processes share the machine.
    """
    cpu = device == "cpu"
    head = ["Configuration", "Side", "Wall median (s)", "Wall IQR (s)", "it/s", "CPU median (s)",
            "ours/vanilla, wall [IQR] (overhead)", "ours/vanilla, CPU time [IQR] (overhead)",
            "Max Δpixel: PIL / same rounding / same decode"]
    if not cpu:  # cudaDeviceSynchronize spins: CPU time measures nothing useful there
        head = [h for h in head if "CPU" not in h]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    for r in results:
        for name, times, cpu_times in (("ours", r.ours, r.ours_cpu), ("vanilla", r.vanilla, r.vanilla_cpu)):
            q1, median, q3 = _quartiles(times)
            cells = [r.config.label, name, f"{median:.4f}", f"{q3 - q1:.4f}", f"{r.config.steps / median:.2f}"]
            if cpu:
                cells.append(f"{_quartiles(cpu_times)[1]:.4f}")
            if name == "ours":
                cells.append(_ratio_cell(r.ratios))
                if cpu:
                    cells.append(_ratio_cell(r.cpu_ratios))
                cells.append(f"{r.max_diff} ({100 * r.differing:.0f} % of values) / {r.max_diff_same_rounding} / "
                             f"{r.max_diff_same_decode}")
            else:
                cells += ["—"] * (3 if cpu else 2)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(state: AppState, device: str, threads: int) -> dict[str, str]:
    """Device, hardware and versions for the report."""
    import diffusers
    import torch
    import transformers

    env = {
        "Date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "Device": state.policy.describe(),
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical cores visible, torch threads {threads})",
        "Versions": (f"python {platform.python_version()}, torch {torch.__version__}, diffusers "
                     f"{diffusers.__version__}, transformers {transformers.__version__}"),
        "Attention": type(next(iter(state.models.current.pipe.unet.attn_processors.values()))).__name__,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(state.policy.device)
        env["GPU"] = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                      f"cuDNN {torch.backends.cudnn.version()}")
    return env


def report(results: Sequence[Result], env: dict[str, str], argv: Sequence[str], model: str, device: str,
           repeats: int, warmup: int) -> str:
    """A dated markdown section: environment, command, method, table."""
    command = shlex.join(["python", "benchmarks/txt2img.py", *argv])
    lines = [f"### {env['Date']} — {env['Device'].split(' dtype=')[0]}, {model} model", ""]
    lines += [f"- {key}: {value}" for key, value in env.items() if key != "Date"]
    lines += [f"- Command: `{command}`",
              f"- Method: {warmup} warm-up run(s) per side, then {repeats} interleaved pairs (A B, B A, ...); "
              "ratio = median of the per-pair ratios ours/vanilla, [IQR] of those ratios; CPU time = "
              "`time.process_time()` of the whole process.",
              "- Max Δpixel (uint8, all images of the batch): ours vs vanilla PIL / vanilla's float pixels truncated "
              "as ours (A1111) instead of rounded / vanilla's final latents through our per-image decode "
              "(0 = the sampling is bit-identical).",
              "", results_table(results, device), ""]
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------------------------------

def configurations(model: str, device: str, quick: bool, steps: int | None) -> list[Config]:
    """What to measure: tiny (64², 64² b4, 256²; Euler and DPM++ 2M) or full-size (512² b1 and b8, Euler).

    ``--quick`` keeps the first shape (full-size on the CPU: 64², the code path only).
    """
    if model == "tiny":
        shapes = [(64, 1), (64, 4), (256, 1)] if not quick else [(64, 1)]
        names = ("Euler", "DPM++ 2M")
    else:
        shapes = [(512, 1), (512, 8)] if not quick else [(512 if device == "cuda" else 64, 1)]
        names = ("Euler",)
    n = steps or (4 if quick else 20)
    return [Config(size, batch, name, n) for size, batch in shapes for name in names]


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides run")
    parser.add_argument("--model", choices=("tiny", "sd15"), default=None,
                        help="tiny demo model, or a generated full-size random SD1.5 (default: tiny on cpu, "
                             "sd15 on cuda)")
    parser.add_argument("--repeats", type=count_at_least(1), default=None, help="timed pairs per configuration (default 5)")
    parser.add_argument("--warmup", type=count_at_least(0), default=None, help="untimed runs per side first (default 1; 2 on cuda)")
    parser.add_argument("--steps", type=count_at_least(1), default=None, help="sampling steps (default 20; 4 with --quick)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=count_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: smallest configuration, a few steps, 1 repeat, 1 warm-up")
    parser.add_argument("--write-docs", action="store_true", help=f"append the results to {DOCS_FILE}")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also cProfile one run of each side per configuration into DIR/*.prof")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the markdown table (and the report section with --write-docs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup(args.verbose)
    import torch

    if cuda_unavailable(args.device):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or ("tiny" if args.device == "cpu" else "sd15")
    repeats = 1 if args.quick else (args.repeats or 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or args.device == "cpu" else 2)
    configs = configurations(model, args.device, args.quick, args.steps)

    with tempfile.TemporaryDirectory(prefix="bench-txt2img-") as tmp:
        data = Path(tmp) / "data"
        ckpt_dir = data / "models" / "Stable-diffusion"
        if model == "tiny":
            write_tiny_checkpoint(ckpt_dir)
        else:
            write_random_sd15(ckpt_dir, args.device)
        state = build_app_state(data, args.device)
        try:
            results = [measure(state, c, args.device, repeats, warmup, args.seed) for c in configs]
            if args.profile:
                for config in configs:
                    profile(state, config, args.device, args.seed, args.profile)
            env = environment(state, args.device, torch.get_num_threads())
        finally:
            state.queue.shutdown()
    section = report(results, env, argv, model, args.device, repeats, warmup)
    print(section)
    if args.write_docs:
        append_to_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
