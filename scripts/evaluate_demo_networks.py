"""Measure what each demo network does: held-out prompts generated with and without it, through the web UI.

    python scripts/evaluate_demo_networks.py                 # shipped model + networks, 2 seeds, 20 steps
    python scripts/evaluate_demo_networks.py --seeds 4 --only demo-stars --grid /tmp/stars.png

The networks are installed into a fresh data folder the way the launcher installs them
(:func:`modules.training.demo_networks.install_demo_networks`), and every image is made by
``modules.processing.process`` — the txt2img tab's path — with the network switched on as a user would:
``<lora:demo-stars:1>``, ``<hypernet:demo-warm:1>``, or the embedding's name in the prompt
(``"a red demo-stripes circle on a blue background"``). Prompts are the demo model's held-out triples
(never seen in the base model's training, nor in the networks'). DPM++ 2M, CFG 7, 64x64, seeds 1000, 1001, ...

Measured (modules/training/demo_networks.py): the share of non-star prompts classified as stars
(``scripts/evaluate_demo.py``'s classifier), the share of objects with white stripes, and the mean red minus
mean blue of the image. The same prompts and seeds are used with and without each network.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from modules.training import demo_networks as dn  # after the path fix above


def open_demo_state(checkpoint: Path, networks: Path, data_dir: Path,
                    required: tuple[dn.DemoNetwork, ...] = dn.NETWORKS):
    """An app state over ``data_dir`` with ``checkpoint`` loaded and the demo networks installed and listed.

    Raises:
        RuntimeError: one of ``required`` could not be installed (missing, or not matching its ``.sha256``).
    """
    from scripts.evaluate_demo import open_state

    state = open_state(checkpoint, data_dir)
    installed = {p.name for p in dn.install_demo_networks(state.paths, networks, required)}
    missing = [n.filename for n in required if n.filename not in installed]
    if missing:
        state.queue.shutdown()
        raise RuntimeError(f"demo networks {', '.join(missing)} could not be installed from {networks}; "
                           "see the warnings above")
    for library in state.libraries.values():
        library.refresh()
    return state


def save_grid(state, network: dn.DemoNetwork, prompts: list[str], path: Path, steps: int) -> None:
    """One row per prompt: without the network, then with it (seed 1000)."""
    from PIL import Image

    side = 64
    sheet = Image.new("RGB", (2 * side, side * len(prompts)))
    for y, prompt in enumerate(prompts):
        for x, text in enumerate((prompt, network.prompt(prompt))):
            sheet.paste(dn.generate(state, text, 1000, 1, steps)[0], (x * side, y * side))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=dn.DEMO_CHECKPOINT)
    parser.add_argument("--networks", type=Path, default=dn.NETWORKS_DIR, help="folder of the shipped networks")
    parser.add_argument("--only", choices=[n.name for n in dn.CANDIDATES], action="append")
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weight", type=float, default=1.0, help="LoRA / hypernetwork multiplier")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", type=Path, default=None,
                        help="save without/with images (one file per network: <stem>-<name>.png)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    chosen = [n for n in dn.CANDIDATES if n.name in args.only] if args.only else list(dn.NETWORKS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-networks-eval-") as tmp:
        state = open_demo_state(args.checkpoint, args.networks, Path(tmp), tuple(chosen))
        try:
            for network in chosen:
                prompts = dn.eval_prompts(network)
                start = time.perf_counter()
                effect = dn.measure(state, network, prompts, args.seeds, steps=args.steps, multiplier=args.weight)
                rows.append((effect, time.perf_counter() - start))
                if args.grid is not None:
                    save_grid(state, network, prompts,
                              args.grid.with_name(f"{args.grid.stem}-{network.name}{args.grid.suffix or '.png'}"),
                              args.steps)
        finally:
            state.queue.shutdown()
    print(f"checkpoint {args.checkpoint.name}; networks from {args.networks}; held-out prompts x {args.seeds} seeds; "
          f"DPM++ 2M, {args.steps} steps, CFG 7, 64x64, weight {args.weight:g}")
    print("| network | measured | images | without | with | time |")
    print("|---|---|---|---|---|---|")
    for effect, seconds in rows:
        n = effect.network
        print(f"| {n.name} ({n.kind}) | {n.effect} | {effect.images} | {effect.format(effect.without)} | "
              f"{effect.format(effect.with_network)} | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
