"""FLOPs of one SD1.5 UNet step with a hypernetwork: folded into the weights, through processors, with an activation.

A device-independent predictor of a hypernetwork's per-step cost where the UNet's FLOPs dominate (a GPU at 512²):
the full-size UNet is built on PyTorch's ``meta`` device (shapes only, nothing computed, a few seconds on any
machine) and ``torch.utils.flop_counter`` counts one CFG step (batch 2) — the issue's "1.61 TFLOP per CFG step" —
without a hypernetwork and with A1111's default one (``[1, 2, 1]``, linear, widths 320/640/768/1280):

* folded: the default path for an affine file (``modules/hypernetworks/folding.py``: merged into the attention
  weights by the weight patcher, once per change of the set, not per job); the fold's own FLOPs are counted too;
* processors: the same file through the attention processors (``processor.py``), the MLPs at every step;
* relu: a hypernetwork with an activation, which cannot be folded and always takes the processors.

The text conditioning is the same tensor for every step, as in sampling, so the cross-attention (768) transform
is counted once per job, not per step. Usage: ``python benchmarks/hypernetwork_flops.py [--size 512]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_at_least, setup  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print a markdown table of FLOPs per step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=count_at_least(64), default=512, help="image side in pixels (default 512)")
    args = parser.parse_args(argv)
    setup()
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec
    from modules.hypernetworks.folding import LAYER, fold
    from modules.hypernetworks.processor import install
    from modules.patching import WeightPatcher
    from modules.paths import CONFIGS_DIR

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS_DIR / "sd15" / "unet")).eval()
    latent = args.size // 8
    x = torch.empty(2, 4, latent, latent, device="meta")
    t = torch.full((2,), 500, device="meta")
    conditioning = torch.empty(2, 77, 768, device="meta")

    def flops() -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(x, t, encoder_hidden_states=conditioning, return_dict=False)
        return counter.get_total_flops()

    widths = (320, 640, 768, 1280)
    linear = Hypernetwork.create("linear", widths).to("meta")
    relu = Hypernetwork.create("relu", widths, HypernetworkSpec(activation_func="relu")).to("meta")
    base = flops()
    rows = [("no hypernetwork", base, None)]
    patcher = WeightPatcher(unet)
    with FlopCounterMode(display=False) as counter, torch.no_grad():  # the composed maps and the weight products
        patcher.reconcile([fold(unet, [(linear, 1.0)])[0]], layer=LAYER)
    rows.append(("A1111 default (linear), folded into the weights", flops(), counter.get_total_flops()))
    patcher.restore_all()
    for label, hypernetwork in (("A1111 default (linear), through processors", linear),
                                ("relu (not foldable: processors)", relu)):
        with install(unet, [(hypernetwork, 1.0)]):
            first, later = flops(), flops()
        rows.append((label, later, first - later))
    print(f"FLOPs per CFG step (batch 2) of the full-size SD1.5 UNet at {args.size}², torch {torch.__version__}:\n")
    print("| configuration | GFLOP per step | vs no hypernetwork | once (fold, or first step of a job) |")
    print("|---|---:|---:|---:|")
    for label, count, once in rows:
        ratio = "—" if count == base else f"{count / base - 1:+.2%}"
        print(f"| {label} | {count / 1e9:,.1f} | {ratio} | {'—' if once is None else f'{once / 1e9:,.1f} GFLOP'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
