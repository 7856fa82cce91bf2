"""GPU speed and memory: our default path, our fast path (``--opt-compile``) and vanilla diffusers side by side,
and the three memory modes (normal, ``--medvram``, ``--lowvram``), including a LoRA switch in each mode.

Model: a full-size SD1.5 with random fp16 weights (generated; no download), 512², CFG 7. Speed is the sampling
rate: ``it/s = Δsteps / (T(2n steps) − T(n steps))`` of whole jobs, so text encoding, decoding and the job's fixed
costs cancel out and only the per-step work is compared. MFU uses 1.61 TFLOP per CFG step of SD1.5's UNet at 512²
(two UNet passes per step) against the GPU's dense fp16 peak.

    python benchmarks/gpu.py --write-docs                 # CUDA: the numbers the issue asks for
    python benchmarks/gpu.py --device cpu --model tiny    # the same code on the CPU (no memory figures)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import logging
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import txt2img as common  # noqa: E402 - after the path fix above

logger = logging.getLogger("benchmarks.gpu")

TFLOP_PER_CFG_STEP = 1.61  # SD1.5 UNet at 512², cond + uncond
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}  # dense fp16


@dataclasses.dataclass
class Row:
    name: str
    batch: int
    its: float  # sampling steps per second
    peak_gib: float | None
    mfu: float | None


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def job_time(fn: Callable[[int], object], steps: int, device: str, repeats: int) -> float:
    """Median wall time of ``fn(steps)`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn(steps)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_rate(fn: Callable[[int], object], steps: int, device: str, repeats: int) -> float:
    """Sampling steps per second, fixed costs cancelled: ``steps / (T(2·steps) − T(steps))``."""
    fn(steps)  # warm-up (and compilation for the fast path)
    short = job_time(fn, steps, device, repeats)
    long = job_time(fn, 2 * steps, device, repeats)
    return steps / max(long - short, 1e-9)


def ours(state, size: int, batch: int) -> Callable[[int], object]:
    from modules import processing
    from modules.processing_params import GenerationParams

    def run(steps: int) -> object:
        return processing.process(state, GenerationParams(
            prompt=common.PROMPT, steps=steps, sampler_name="Euler", cfg_scale=common.CFG_SCALE, width=size,
            height=size, seed=1, batch_size=batch, save_images=False))
    return run


def vanilla(state, size: int, batch: int, device: str) -> Callable[[int], object]:
    import torch

    pipe = common.vanilla_pipeline(state, "Euler")

    def run(steps: int) -> object:
        generators = [torch.Generator(device).manual_seed(1 + i) for i in range(batch)]
        return pipe(prompt=common.PROMPT, num_images_per_prompt=batch, num_inference_steps=steps,
                    guidance_scale=common.CFG_SCALE, width=size, height=size, generator=generators).images
    return run


def build_state(data_dir: Path, device: str, **policy):
    """An AppState over ``data_dir`` with its checkpoint loaded under the given policy fields."""
    from modules import cmd_args, initialize

    flags = ["--data-dir", str(data_dir), "--no-download-sd-model"] + (["--use-cpu", "all"] if device == "cpu" else [])
    state = initialize.build_state(cmd_args.parse_args(flags))
    state.policy = state.models.policy = dataclasses.replace(state.policy, **policy)
    info = state.models.checkpoints[0]
    state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False)
    state.models.load(info)
    return state


def measure(label: str, make: Callable[[], tuple[object, Callable[[int], object]]], batch: int, device: str,
            steps: int, repeats: int, peak: float | None) -> Row:
    import torch

    state, fn = make()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    its = step_rate(fn, steps, device, repeats)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    mfu = its * batch * TFLOP_PER_CFG_STEP / peak if peak else None
    logger.info("%s batch %d: %.2f it/s, peak %s GiB", label, batch, its, f"{peak_gib:.2f}" if peak_gib else "n/a")
    state.queue.shutdown()
    del state, fn
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return Row(label, batch, its, peak_gib, mfu)


def run(args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, float, float]]]:
    """The speed rows, and the LoRA switch times per memory mode (empty with ``--switches 0``)."""
    import torch

    device = args.device
    peak = next((v for k, v in PEAK_TFLOPS.items() if device == "cuda" and k in torch.cuda.get_device_name()), None)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        ckpt_dir = data / "models" / "Stable-diffusion"
        if args.model == "tiny":
            common.write_tiny_checkpoint(ckpt_dir)
        else:
            common.write_random_sd15(ckpt_dir, device)
        size = args.size
        for batch in args.batches:
            def default() -> tuple[object, Callable[[int], object]]:
                state = build_state(data, device)
                return state, ours(state, size, batch)

            def fast() -> tuple[object, Callable[[int], object]]:
                state = build_state(data, device, compile=True)
                return state, ours(state, size, batch)

            def plain() -> tuple[object, Callable[[int], object]]:
                state = build_state(data, device)
                return state, vanilla(state, size, batch, device)

            for label, make in (("vanilla diffusers", plain), ("ours, default", default),
                                ("ours, fast (--opt-compile)", fast)):
                if label.startswith("ours, fast") and not args.compile:
                    continue
                rows.append(measure(label, make, batch, device, args.steps, args.repeats, peak))
        for mode in ("medvram", "lowvram"):
            def offloaded(mode: str = mode) -> tuple[object, Callable[[int], object]]:
                state = build_state(data, device, memory_mode=mode)
                return state, ours(state, size, 1)

            rows.append(measure(f"ours, --{mode}", offloaded, 1, device, args.steps, args.repeats, peak))
        switches = switch_times(data, device, args.switches) if args.switches else []
    return rows, switches


def switch_times(data: Path, device: str, repeats: int) -> list[tuple[str, float, float]]:
    """LoRA switch in each memory mode: two sets of 3 rank-32 kohya LoRAs (parsed files cached), A→B and B→A.

    In normal mode the patched weights live on the device; in --medvram/--lowvram they are the masters in RAM,
    and the patcher computes their deltas on the device and copies them back (``devices.patch_devices``).
    Returns ``(mode, median seconds, max seconds)`` per mode.
    """
    import torch

    from benchmarks import networks as nb

    sets = [[(f"switch_{side}{i}", 1.0) for i in range(3)] for side in "ab"]
    out = []
    for mode in ("normal", "medvram", "lowvram"):
        state = build_state(data, device, memory_mode=mode)
        lora_dir = state.paths.lora_dir
        if not any(lora_dir.glob("switch_*.safetensors")):
            lora_dir.mkdir(parents=True, exist_ok=True)
            pipe = state.models.current.pipe
            targets = nb.lora_targets(pipe.unet, pipe.text_encoder)
            for seed, (name, _) in enumerate(sets[0] + sets[1]):
                nb.write_kohya_lora(lora_dir / f"{name}.safetensors", targets, rank=32, alpha=16.0, seed=seed)
        state.libraries["lora"].refresh()
        prompts = [nb.tags(networks) for networks in sets]
        for prompt in prompts:  # warm-up: parse and cache the files, first patch
            nb.activate(state, prompt)
        times = [nb.timed(lambda i=i: nb.activate(state, prompts[i % 2]), device)[0] for i in range(2 * repeats)]
        nb.activate(state, "")
        logger.info("LoRA switch, %s: median %.1f ms", mode, 1e3 * statistics.median(times))
        out.append((mode, statistics.median(times), max(times)))
        state.queue.shutdown()
        del state
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def switch_table(times: Sequence[tuple[str, float, float]]) -> str:
    lines = ["| memory mode | LoRA switch, 3 ↔ 3 rank-32 (median ms) | max (ms) |", "|---|---:|---:|"]
    lines += [f"| {mode} | {1e3 * median:.1f} | {1e3 * worst:.1f} |" for mode, median, worst in times]
    return "\n".join(lines)


def table(rows: Sequence[Row]) -> str:
    vanilla_its = {r.batch: r.its for r in rows if r.name == "vanilla diffusers"}
    normal = next((r.its for r in rows if r.name == "ours, default" and r.batch == 1), None)

    def ratio(value: float, base: float | None) -> str:
        return f"{value / base:.3f}×" if base else "—"

    lines = ["| path | batch | it/s | vs vanilla | vs normal (batch 1) | peak VRAM (GiB) | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "n/a"
        mfu = f"{100 * r.mfu:.1f} %" if r.mfu is not None else "n/a"
        vs_normal = ratio(r.its, normal) if r.batch == 1 else "—"
        lines.append(f"| {r.name} | {r.batch} | {r.its:.2f} | {ratio(r.its, vanilla_its.get(r.batch))} | "
                     f"{vs_normal} | {peak} | {mfu} |")
    lines += ["", "Goals: default ≥ 1.0× vanilla; fast ≥ 110 it/s at batch 1 on an H100; medvram ≤ 2.0 GB at ≥ 90 % "
              "of normal; lowvram ≤ 1.0 GB at ≥ 50 % of normal."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the --opt-compile row")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--switches", type=int, default=5, help="timed LoRA switch pairs per memory mode (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs CUDA (torch.cuda.is_available() is False); use --device cpu --model tiny "
              "to run the same code on the CPU.", file=sys.stderr)
        return 2
    rows, switches = run(args)
    text = table(rows)
    if switches:
        text += "\n\n" + switch_table(switches)
    print(text)
    if args.write_docs:
        import diffusers

        device_name = torch.cuda.get_device_name() if args.device == "cuda" else common.cpu_model()
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = "\n".join([
            f"### {date} — GPU paths and memory modes ({args.model}, {args.size}², {args.device})", "",
            f"- Device: {device_name}",
            f"- Versions: python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}",
            f"- Command: `{shlex.join(['python', 'benchmarks/gpu.py', *(argv or sys.argv[1:])])}`",
            f"- Method: it/s = {args.steps} / (T({2 * args.steps} steps) − T({args.steps} steps)), medians of "
            f"{args.repeats} jobs after a warm-up; peak VRAM = torch.cuda.max_memory_allocated over those jobs; "
            f"MFU = it/s × batch × {TFLOP_PER_CFG_STEP} TFLOP / dense fp16 peak.", "", text, ""])
        common.append_to_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
