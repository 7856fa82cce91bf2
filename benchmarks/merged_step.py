"""Does a UNet step get slower once LoRA deltas are merged into the weights? A check outside the full benchmark.

    python benchmarks/merged_step.py                  # full-size SD1.5 UNet (random weights), CPU, 1 thread
    python benchmarks/merged_step.py --rounds 6 --scale 2

``benchmarks/networks.py`` measured +80 % CPU time per step with 3 merged rank-32 LoRAs on the full-size model
(docs/benchmarks.md), where merged weights have the original shapes and should cost nothing. This script takes
everything else away: one process, one full-size SD1.5 UNet built from ``configs/sd15`` with random weights drawn
as ``benchmarks/txt2img.write_random_sd15`` draws them, and :class:`modules.patching.WeightPatcher` (the web UI's
patcher) merging three random rank-32 deltas into the same modules the networks benchmark targets, with the same
magnitudes (``down ~ N(0, 0.05²)``, ``up ~ N(0, 0.01²)``, alpha/rank 0.5; ``--scale`` multiplies both). Rounds
alternate the order (plain, merged / merged, plain); per step it records user and system CPU time separately
(``getrusage``), so page faults and allocator work show up apart from arithmetic. It prints the medians and the
merged/plain ratio; it asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_at_least, setup

logger = logging.getLogger("benchmarks.merged_step")
RANK, ALPHA, LORAS = 32, 16.0, 3


@dataclass(frozen=True, slots=True)
class LowRank:
    """``ΔW = up @ down * alpha / rank`` for a Linear or a 1x1 conv, as a kohya LoRA module computes it."""

    up: object
    down: object
    scale: float

    def calc(self, weight, bias):
        return (self.up @ self.down * self.scale).reshape(weight.shape), None


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def build_unet(seed: int):
    """The full-size SD1.5 UNet in fp32 with ``write_random_sd15``'s random weights (fp16-rounded N(0, 0.02²))."""
    import torch
    from diffusers import UNet2DConditionModel

    from benchmarks.txt2img import random_weights
    from modules.paths import CONFIGS_DIR

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS_DIR / "sd15" / "unet")).eval()
    unet.load_state_dict(random_weights(unet, torch.Generator().manual_seed(seed), "cpu"))
    return unet


def networks(unet, scale: float, seed: int) -> list:
    """Three ``WantedNetwork`` s of random rank-32 deltas on the networks benchmark's UNet targets."""
    import torch

    from benchmarks.networks import lora_targets
    from modules.patching import WantedNetwork

    prefix = "lora_unet_"
    paths = {name.replace(".", "_"): name for name, _ in unet.named_modules()}
    targets = [(paths[key.removeprefix(prefix)], shape) for key, shape in lora_targets(unet, torch.nn.Module())
               if key.startswith(prefix)]
    generator = torch.Generator().manual_seed(seed)
    wanted = []
    for index in range(LORAS):
        deltas = {}
        for path, shape in targets:
            down = torch.randn((RANK, shape[1]), generator=generator) * 0.05 * scale
            up = torch.randn((shape[0], RANK), generator=generator) * 0.01 * scale
            deltas[path] = LowRank(up, down, ALPHA / RANK)
        wanted.append(WantedNetwork(key=("random", index), multiplier=1.0, deltas=deltas))
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=count_at_least(1), default=4)
    parser.add_argument("--steps", type=count_at_least(1), default=3, help="timed steps per configuration per round")
    parser.add_argument("--threads", type=count_at_least(1), default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the random factors' std")
    args = parser.parse_args(argv)
    setup()
    import torch

    from benchmarks.networks import make_step
    from modules.patching import WeightPatcher

    torch.set_num_threads(args.threads)
    unet = build_unet(seed=0)
    patcher = WeightPatcher(unet)
    wanted = networks(unet, args.scale, seed=1)
    step = make_step(unet, 64, "cpu")  # one 64x64 CFG step at batch 1, exactly as the networks benchmark times it
    samples: dict[str, list[tuple[float, float]]] = {"plain": [], "merged": []}
    for index in range(args.rounds):
        order = ("plain", "merged") if index % 2 == 0 else ("merged", "plain")
        for label in order:
            patcher.reconcile(wanted if label == "merged" else ())
            step()  # untimed, as in the networks benchmark
            user, system = cpu_times()
            for _ in range(args.steps):
                step()
            after = cpu_times()
            samples[label].append(((after[0] - user) / args.steps, (after[1] - system) / args.steps))
        logger.info("round %d/%d: plain %.3fs merged %.3fs (user CPU per step)", index + 1, args.rounds,
                    samples["plain"][-1][0], samples["merged"][-1][0])
    patcher.restore_all()
    modules = len(wanted[0].deltas)
    print(f"torch {torch.__version__}, {args.threads} thread(s); {LORAS} rank-{RANK} deltas merged into "
          f"{modules} UNet modules (scale {args.scale:g}); {args.rounds} rounds x {args.steps} steps, 64x64 CFG")
    for label, values in samples.items():
        user = statistics.median(v[0] for v in values)
        system = statistics.median(v[1] for v in values)
        print(f"{label:>6}: user {user * 1e3:.0f} ms, system {system * 1e3:.0f} ms per step (medians)")
    ratios = [m[0] / p[0] for p, m in zip(samples["plain"], samples["merged"])]
    print(f"merged / plain, user CPU per round: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
