"""Train the three demo networks with the web UI's own trainers on the demo model, and write them for shipping.

    python scripts/train_demo_networks.py                  # the shipped files: models/demo/networks/, ~10-15 min CPU
    python scripts/train_demo_networks.py --base /tmp/tiny.safetensors --out /tmp/nets --quick   # smoke run

What is trained (see modules/training/demo_networks.py for the data and the measurements):

* ``demo-stars.safetensors`` — a kohya LoRA (Train LoRA tab): every shape becomes a star;
* ``demo-sunset.pt`` — a textual-inversion embedding (Train embedding): a new word for an orange shape on a
  purple background (``--only demo-stripes`` / ``--only demo-teal`` train the two unshipped attempts);
* ``demo-warm.pt`` — an A1111 hypernetwork (Train hypernetwork): a warm, sunset palette.

Each is trained by ``modules.training`` exactly as the Train tab would run it, on an app state that holds the
base checkpoint, from a dataset folder of rendered scenes with ``.txt`` captions. Beside each file the script
writes ``<name>.preview.png`` (four generations with the network on, through ``modules.processing``),
``<name>.json`` (A1111 user metadata for the Extra Networks card) and ``<file>.sha256``. The seed is fixed and
one torch thread is used, so a rerun on the same torch version gives the same files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from modules.training import demo_networks as dn  # after the path fix above

logger = logging.getLogger("train_demo_networks")

#: The one-line template ``[filewords]`` (textual_inversion_templates/filewords.txt): the prompt *is* the caption.
#: A1111's other templates all add words ("a photo of a ..."), which the demo model's text encoder has never seen;
#: the demo networks must answer the prompts users type.
FILEWORDS_TEMPLATE = "filewords.txt"
PREVIEW_PROMPTS = ("a red circle on a blue background", "a yellow square on a purple background",
                   "a blue triangle on a white background", "a green circle on a black background")


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one network is trained: data size, steps, learning rate, batch."""

    images: int
    steps: int
    learn_rate: str
    batch_size: int = 4


RECIPES: dict[str, Recipe] = {
    dn.STARS.name: Recipe(images=320, steps=1600, learn_rate="4e-3:500, 2e-3", batch_size=8),
    dn.STRIPES.name: Recipe(images=160, steps=800, learn_rate="5e-3", batch_size=8),
    dn.TEAL.name: Recipe(images=160, steps=600, learn_rate="5e-3", batch_size=8),
    dn.SUNSET.name: Recipe(images=160, steps=500, learn_rate="2e-2", batch_size=8),
    dn.WARM.name: Recipe(images=320, steps=600, learn_rate="1e-3:400, 5e-4", batch_size=8),
}
QUICK = Recipe(images=8, steps=4, learn_rate="1e-3", batch_size=2)
LORA_RANK, LORA_ALPHA, LORA_TE_LR = 8, 8.0, 2e-3
EMBEDDING_VECTORS, EMBEDDING_INIT = 2, "striped"
HYPERNETWORK_STRUCTURE = "1, 2, 1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=dn.DEMO_CHECKPOINT, help="the checkpoint to train on")
    parser.add_argument("--out", type=Path, default=dn.NETWORKS_DIR, help="folder for the shipped files")
    parser.add_argument("--only", choices=[n.name for n in dn.CANDIDATES], action="append",
                        help="train just this network (repeatable)")
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a few steps on a few images (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="override every network's step count")
    parser.add_argument("--learn-rate", default=None, help="override every network's learning-rate schedule")
    return parser.parse_args(argv)


def settings_for(recipe: Recipe, data: Path, seed: int):
    """The Train tab's settings for one run: 64x64 scenes, no intermediate copies or previews."""
    from modules.training.runner import TrainSettings

    return TrainSettings(learn_rate=recipe.learn_rate, data_root=str(data), batch_size=recipe.batch_size,
                         template_file=FILEWORDS_TEMPLATE, width=64, height=64, steps=recipe.steps,
                         latent_sampling_method="deterministic", create_image_every=0, save_every=0,
                         write_csv_every=0, save_optimizer_state=False, seed=seed, log_directory="train_log")


def train_one(state, network: dn.DemoNetwork, recipe: Recipe, data: Path, seed: int):
    """Create (where the tab has a Create step) and train ``network``; returns the runner's result."""
    from modules.training import embedding_trainer, hypernetwork_trainer, lora_trainer

    settings = settings_for(recipe, data, seed)
    if network.kind == "lora":
        options = lora_trainer.LoraOptions(rank=LORA_RANK, alpha=LORA_ALPHA, text_encoder_lr=LORA_TE_LR,
                                           overwrite=True)
        return lora_trainer.train_lora(state, network.name, settings, options)
    if network.kind == "embedding":
        embedding_trainer.create_embedding(state, network.name, EMBEDDING_VECTORS, overwrite_old=True,
                                           init_text=EMBEDDING_INIT)
        return embedding_trainer.train_embedding(state, network.name, settings)
    widths = hypernetwork_trainer.context_widths(state.models.current)
    hypernetwork_trainer.create_hypernetwork(state, network.name, widths, overwrite_old=True,
                                             layer_structure=HYPERNETWORK_STRUCTURE, activation_func="linear",
                                             weight_init="Normal")
    return hypernetwork_trainer.train_hypernetwork(state, network.name, settings)


def write_preview(state, network: dn.DemoNetwork, path: Path, seed: int) -> Path:
    """A 2x2 grid (shown at 256x256) of :data:`PREVIEW_PROMPTS` with the network on at its card's preferred weight."""
    from PIL import Image

    from modules.training.demo_networks import generate

    images = [generate(state, network.prompt(prompt, network.preferred_weight), seed=seed, count=1, steps=20)[0]
              for prompt in PREVIEW_PROMPTS]
    side = images[0].width
    sheet = Image.new("RGB", (2 * side, 2 * side))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % 2) * side, (i // 2) * side))
    sheet.resize((256, 256), Image.Resampling.NEAREST).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Train, write the files, print a short report."""
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress bar per preview image is noise in a build log
    import torch

    from scripts.evaluate_demo import open_state

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    chosen = [n for n in dn.CANDIDATES if n.name in args.only] if args.only else list(dn.NETWORKS)
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    with tempfile.TemporaryDirectory(prefix="demo-networks-") as tmp:
        root = Path(tmp)
        state = open_state(args.base, root / "data")
        try:
            for network in chosen:
                recipe = QUICK if args.quick else RECIPES[network.name]
                if args.steps or args.learn_rate:
                    recipe = replace(recipe, steps=args.steps or recipe.steps,
                                     learn_rate=args.learn_rate or recipe.learn_rate)
                seed = args.seed + dn.CANDIDATES.index(network)  # the same with or without --only
                start = time.perf_counter()
                pairs = dn.training_pairs(network, recipe.images, seed)
                data = dn.write_dataset(pairs, root / "datasets" / network.name)
                result = train_one(state, network, recipe, data, seed)
                trained = time.perf_counter() - start
                target = args.out / network.filename
                dn.copy_file(result.final_path, target)
                write_preview(state, network, args.out / f"{network.name}.preview.png", args.seed)
                dn.write_sidecars(network, args.out)
                losses = result.losses
                head, tail = (sum(x[:20]) / max(len(x[:20]), 1) for x in (losses, losses[-20:]))
                report.append((network, recipe, trained, head, tail, target))
                logger.info("%s: %d steps in %.0f s, loss %.4f -> %.4f", network.name, result.steps_run,
                            trained, head, tail)
        finally:
            state.queue.shutdown()
    print(f"base {args.base.name}; torch {torch.__version__}, {args.threads} thread(s), seed {args.seed}")
    print("| network | type | images | steps (batch) | learning rate | train time | loss first 20 -> last 20 | size |")
    print("|---|---|---|---|---|---|---|---|")
    for network, recipe, seconds, head, tail, target in report:
        print(f"| {network.name} | {network.kind} | {recipe.images} | {recipe.steps} ({recipe.batch_size}) | "
              f"`{recipe.learn_rate}` | {seconds:.0f} s | {head:.4f} -> {tail:.4f} | "
              f"{target.stat().st_size / 1024:.0f} KiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
