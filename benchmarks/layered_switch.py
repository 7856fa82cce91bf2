"""A switch that changes LoRAs and a folded hypernetwork together: one reconcile per job against one per layer.

    python benchmarks/layered_switch.py                    # full-size SD1.5 (random weights), CPU
    python benchmarks/layered_switch.py --model tiny --pairs 20

LoRAs are the UNet patcher's layer 0, affine hypernetworks folded into ``to_k``/``to_v``/``to_out`` its layer 1
(``modules/hypernetworks/folding.py``). A job that changes both used to reconcile twice: the LoRA layer recomputed
its modules with the old fold still on top, then the hypernetwork layer recomputed the attention modules again.
The registry now defers both to one reconcile at the end of activation (``WeightPatcher.deferred``). Here the
same engine, in one process, switches between ``3 LoRAs (set A) + <hypernet:hn:1>`` and ``3 LoRAs (set B) +
<hypernet:hn:0.8>`` both ways, pairs alternating their order: "deferred" is the web UI as it is; "per layer" is
the same activation with ``WeightPatcher.deferred`` made a no-op (the behaviour before). It also counts the
weight writes per switch (in-place version counters of the UNet's parameters). It prints medians and the per
layer / deferred ratio; it asserts nothing beyond both ways reaching the same weights.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_at_least, setup

if TYPE_CHECKING:
    from collections.abc import Iterator

    from modules.state import AppState

logger = logging.getLogger("benchmarks.layered_switch")
PROMPTS = ("<lora:a1:0.8> <lora:a2:0.6> <lora:a3:0.5> <hypernet:hn:1>",
           "<lora:b1:0.8> <lora:b2:0.6> <lora:b3:0.5> <hypernet:hn:0.8>")


@contextmanager
def per_layer() -> Iterator[None]:
    """The activation as it was before deferral: every ``reconcile`` works at once."""
    from modules.patching import WeightPatcher

    with mock.patch.object(WeightPatcher, "deferred", lambda self: nullcontext()):
        yield


def write_files(state: AppState) -> None:
    """Six rank-32 kohya LoRAs over the networks benchmark's targets and one linear hypernetwork for every
    attention width (A1111's default file)."""
    from benchmarks.networks import SWITCH_ALPHA, SWITCH_RANK, attention_widths, lora_targets, write_hypernetwork
    from benchmarks.networks import write_kohya_lora

    pipe = state.models.current.pipe
    targets = lora_targets(pipe.unet, pipe.text_encoder)
    state.paths.lora_dir.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("a1", "a2", "a3", "b1", "b2", "b3")):
        write_kohya_lora(state.paths.lora_dir / f"{name}.safetensors", targets, SWITCH_RANK, SWITCH_ALPHA, seed + 1)
    state.paths.hypernetwork_dir.mkdir(parents=True, exist_ok=True)
    write_hypernetwork(state.paths.hypernetwork_dir / "hn.pt", set().union(*attention_widths(pipe.unet)))
    state.libraries["lora"].refresh()
    state.libraries["hypernet"].refresh()


def measure(state: AppState, pairs: int) -> dict[str, tuple[list[float], list[int]]]:
    """Seconds and UNet weight writes per switch, for each way, after one warm-up switch each way."""
    from benchmarks.networks import activate, timed

    import torch

    unet = state.models.current.pipe.unet
    params = list(unet.parameters())
    ways = {"deferred": nullcontext, "per layer": per_layer}
    results: dict[str, tuple[list[float], list[int]]] = {name: ([], []) for name in ways}
    reached: dict[tuple[str, str], list[torch.Tensor]] = {}
    for i in range(2 * (pairs + 1)):
        target = PROMPTS[(i + 1) % 2]
        for name in (list(ways) if (i // 2) % 2 == 0 else list(ways)[::-1]):
            activate(state, PROMPTS[i % 2])  # start from the other set, applied the same way for both
            before = sum(p._version for p in params)
            with ways[name]():
                wall, _ = timed(lambda: activate(state, target), "cpu")
            writes = sum(p._version for p in params) - before
            if i >= 2:  # the first switch each way is a warm-up
                results[name][0].append(wall)
                results[name][1].append(writes)
            reached.setdefault((name, target), [p.detach().clone() for p in params])
        logger.info("switch %d/%d done", i + 1, 2 * (pairs + 1))
    for target in PROMPTS:
        if not all(torch.equal(a, b) for a, b in zip(reached["deferred", target], reached["per layer", target])):
            raise RuntimeError(f"the two ways reached different weights for {target!r}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--pairs", type=count_at_least(1), default=6, help="timed switches per way (default 6)")
    parser.add_argument("--threads", type=count_at_least(1), default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    setup()
    import torch

    from benchmarks import txt2img

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-layered-") as tmp:
        data = Path(tmp) / "data"
        ckpt_dir = data / "models" / "Stable-diffusion"
        if args.model == "tiny":
            txt2img.write_tiny_checkpoint(ckpt_dir)
        else:
            txt2img.write_random_sd15(ckpt_dir, "cpu")
        state = txt2img.build_app_state(data, "cpu")
        try:
            write_files(state)
            results = measure(state, args.pairs)
        finally:
            state.queue.shutdown()
    deferred, layered = (statistics.median(results[k][0]) for k in ("deferred", "per layer"))
    ratios = [b / a for a, b in zip(results["deferred"][0], results["per layer"][0])]
    for name, (walls, writes) in results.items():
        logger.info("%-9s median %.3f s [%.3f–%.3f], weight writes per switch %s", name, statistics.median(walls),
                    min(walls), max(walls), sorted(set(writes)))
    logger.info("per layer / deferred: median of pairs %.2f× [%.2f–%.2f] (medians %.3f s / %.3f s)",
                statistics.median(ratios), min(ratios), max(ratios), layered, deferred)


if __name__ == "__main__":
    main()
