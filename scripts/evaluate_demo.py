"""Measure whether the demo model follows prompts: generate held-out scenes through the web UI's own pipeline and
classify what was drawn with a simple pixel-statistics classifier that knows nothing about the model.

    python scripts/evaluate_demo.py                       # the shipped model, held-out prompts, 20 steps
    python scripts/evaluate_demo.py --checkpoint X.safetensors --seeds 4 --grid /tmp/grid.png

Prompts are ``"a {colour} {shape} on a {background} background"`` for every (colour, background, shape) triple
the trainer held out (modules/training/shapes.py), each with ``--seeds`` seeds. Images are made by
``modules.processing.process`` (the code behind the txt2img tab and /sdapi/v1/txt2img) with A1111's defaults:
DPM++ 2M, CFG 7, here at 64x64.

The classifier is importable for other measurements (LoRA, embedding and hypernetwork effects):
:func:`classify` / :func:`classify_images` take PIL images and return :class:`Prediction` s (object colour,
background colour, shape). It labels each pixel with the nearest palette colour, takes the background from the
image border, the object colour as the most common other label, and the shape by the nearest centroid of a few
mask statistics (fill of the bounding box, centre of mass, widths at three heights) fitted on rendered scenes.
"""

from __future__ import annotations

import argparse
import functools
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # importable as a file, runnable as a script
    sys.path.insert(0, str(REPO))

from modules.training import shapes  # after the path fix above

DEFAULT_CHECKPOINT = REPO / "models" / "demo" / "demo-shapes-sd15.safetensors"
_PALETTE = np.array([shapes.PALETTE[c] for c in shapes.COLOURS], dtype=np.float32)  # (K, 3)
BORDER = 2  # pixels of the image border that decide the background


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the classifier sees; ``None`` where it found no object."""

    colour: str | None
    background: str
    shape: str | None


def palette_distances(image: Image.Image) -> np.ndarray:
    """``(H, W, K)`` squared RGB distance of each pixel to each palette colour of :data:`shapes.COLOURS`."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)


def palette_labels(image: Image.Image) -> np.ndarray:
    """``(H, W)`` index into :data:`shapes.COLOURS` of each pixel's nearest palette colour (RGB distance)."""
    return palette_distances(image).argmin(-1)


def _border(labels: np.ndarray) -> np.ndarray:
    return np.concatenate([labels[:BORDER].ravel(), labels[-BORDER:].ravel(),
                           labels[:, :BORDER].ravel(), labels[:, -BORDER:].ravel()])


def object_mask(image: Image.Image) -> tuple[str, str | None, np.ndarray]:
    """Background colour, object colour (``None`` if none) and the object's pixel mask.

    The mask holds the pixels nearer the object's colour than the background's: on a soft (blurred) edge that is
    the half-way contour, so a blurry but correct shape keeps its outline.
    """
    distances = palette_distances(image)
    labels = distances.argmin(-1)
    background = int(np.bincount(_border(labels), minlength=len(shapes.COLOURS)).argmax())
    other = labels[labels != background]
    min_pixels = max(4, labels.size // 400)
    if other.size < min_pixels:
        return shapes.COLOURS[background], None, np.zeros(labels.shape, bool)
    colour = int(np.bincount(other, minlength=len(shapes.COLOURS)).argmax())
    mask = distances[:, :, colour] < distances[:, :, background]
    return shapes.COLOURS[background], shapes.COLOURS[colour], mask


def shape_features(mask: np.ndarray) -> np.ndarray | None:
    """Statistics of a shape mask: fill of its box, centre of mass, filled width at top/middle/bottom, aspect.

    Rows and columns with fewer than two mask pixels are ignored when finding the box (stray pixels).
    """
    rows, cols = np.nonzero(mask.sum(1) >= 2)[0], np.nonzero(mask.sum(0) >= 2)[0]
    if rows.size < 3 or cols.size < 3:
        return None
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    height, width = box.shape
    widths = box.mean(1)  # filled fraction of each row

    def band(start: float, stop: float) -> np.ndarray:
        return widths[int(start * height):max(int(start * height) + 1, int(stop * height))]

    centre = (np.arange(height) * box.sum(1)).sum() / max(box.sum(), 1.0) / max(height - 1, 1)
    return np.array([box.mean(), centre, band(0.05, 0.25).mean(), band(0.30, 0.50).max(), band(0.80, 0.95).mean(),
                     height / width], dtype=np.float32)


@functools.cache
def _centroids(side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-shape mean features and the pooled feature spread, from rendered scenes of every size and position.

    A third of the references are blurred (Gaussian, radius 1.5 px), so that soft-edged images, as any
    generator makes at 64x64, are judged by their outline rather than by their sharpness.
    """
    from PIL import ImageFilter

    rng = random.Random(0)
    features: dict[str, list[np.ndarray]] = {s: [] for s in shapes.SHAPES}
    for shape in shapes.SHAPES:
        for i in range(60):
            colour, background = rng.sample(shapes.COLOURS, 2)
            scene = shapes.Scene(shape, colour, background, rng.choice(tuple(shapes.SIZES)),
                                 rng.choice(tuple(shapes.POSITIONS)), rng.uniform(-1, 1), rng.uniform(-1, 1))
            image = shapes.render(scene, side)
            if i % 3 == 2:
                image = image.filter(ImageFilter.GaussianBlur(1.5))
            found = shape_features(object_mask(image)[2])
            if found is not None:
                features[shape].append(found)
    means = np.stack([np.mean(features[s], 0) for s in shapes.SHAPES])
    spread = np.concatenate([np.asarray(features[s]) - means[i] for i, s in enumerate(shapes.SHAPES)]).std(0)
    return means, np.maximum(spread, 0.05)


def predict_shape(mask: np.ndarray) -> str | None:
    """Nearest shape centroid (features scaled by their spread), or ``None`` for an empty mask."""
    found = shape_features(mask)
    if found is None:
        return None
    means, spread = _centroids()
    distances = (((found - means) / spread) ** 2).sum(1)
    return shapes.SHAPES[int(distances.argmin())]


def classify(image: Image.Image) -> Prediction:
    """Object colour, background colour and shape of one image."""
    background, colour, mask = object_mask(image)
    return Prediction(colour=colour, background=background, shape=predict_shape(mask) if colour else None)


def classify_images(images: Sequence[Image.Image]) -> list[Prediction]:
    """:func:`classify` for each image."""
    return [classify(image) for image in images]


# -- generating through the web UI's pipeline ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Case:
    """One prompt with the attributes it asks for."""

    colour: str
    background: str
    shape: str

    @property
    def prompt(self) -> str:
        return shapes.caption(shapes.Scene(self.shape, self.colour, self.background), False, False)


def held_out_cases() -> list[Case]:
    """Every (colour, background, shape) triple the trainer never saw."""
    return [Case(c, b, s) for c, b, s in shapes.triples(held_out=True)]


def open_state(checkpoint: Path, data_dir: Path):
    """An :class:`AppState` over ``data_dir`` with ``checkpoint`` (and its ``.yaml``) installed and loaded."""
    from modules import cmd_args, initialize

    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, folder / checkpoint.name)
    if checkpoint.with_suffix(".yaml").exists():
        shutil.copyfile(checkpoint.with_suffix(".yaml"), folder / checkpoint.with_suffix(".yaml").name)
    state = initialize.build_state(cmd_args.parse_args(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    info = state.models.find(checkpoint.name)
    state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False)
    state.models.load(info)
    return state


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """How the evaluation images are made (A1111's txt2img defaults, at the demo model's 64x64)."""

    steps: int = 20
    sampler: str = "DPM++ 2M"
    cfg_scale: float = 7.0
    side: int = 64
    seeds: int = 2
    first_seed: int = 1000


def generate(state, case: Case, settings: GenerationSettings) -> list[Image.Image]:
    """``settings.seeds`` images of ``case.prompt`` (one batch, seeds ``first_seed + i``) via ``process``."""
    from modules.processing import process
    from modules.processing_params import GenerationParams

    params = GenerationParams(prompt=case.prompt, steps=settings.steps, sampler_name=settings.sampler,
                              cfg_scale=settings.cfg_scale, width=settings.side, height=settings.side,
                              seed=settings.first_seed, batch_size=settings.seeds, save_images=False,
                              override_settings={"return_grid": False})
    result = process(state, params)
    return result.images[result.index_of_first_image:]


@dataclass
class Score:
    """Counts of correct predictions."""

    total: int = 0
    colour: int = 0
    background: int = 0
    shape: int = 0
    all_three: int = 0

    def add(self, case: Case, prediction: Prediction) -> None:
        ok = (prediction.colour == case.colour, prediction.background == case.background, prediction.shape == case.shape)
        self.total += 1
        self.colour += ok[0]
        self.background += ok[1]
        self.shape += ok[2]
        self.all_three += all(ok)

    def percent(self, name: str) -> float:
        return 100.0 * getattr(self, name) / max(self.total, 1)


def evaluate(state, cases: Sequence[Case], settings: GenerationSettings,
             grid: Path | None = None) -> tuple[Score, list[tuple[Case, Prediction]]]:
    """Generate and classify every case; optionally save all images as one grid (a row per case)."""
    score, rows, images = Score(), [], []
    for case in cases:
        generated = generate(state, case, settings)
        images.append(generated)
        for prediction in classify_images(generated):
            score.add(case, prediction)
            rows.append((case, prediction))
    if grid is not None and images:
        side = settings.side
        sheet = Image.new("RGB", (side * settings.seeds, side * len(images)))
        for y, row in enumerate(images):
            for x, image in enumerate(row):
                sheet.paste(image, (x * side, y * side))
        sheet.save(grid)
    return score, rows


def classifier_self_check(side: int = 64, count: int = 200) -> Score:
    """The classifier's accuracy on rendered held-out scenes (what a perfect generator would score)."""
    rng, score = random.Random(1), Score()
    for _ in range(count):
        scene = shapes.random_scene(rng, held_out=True)
        score.add(Case(scene.colour, scene.background, scene.shape), classify(shapes.render(scene, side)))
    return score


def vae_round_trip_check(state, side: int = 64, count: int = 100) -> Score:
    """The classifier's accuracy on rendered held-out scenes after the model's VAE encodes and decodes them.

    This is the ceiling the VAE puts on generation: errors here are the decoder's, not the UNet's.
    """
    import torch

    from modules.training.base_model import to_tensor

    vae = state.models.current.pipe.vae
    rng, score = random.Random(2), Score()
    scenes = [shapes.random_scene(rng, held_out=True) for _ in range(count)]
    with torch.no_grad():
        x = to_tensor([shapes.render(scene, side) for scene in scenes]).to(vae.device, vae.dtype)
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
    array = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    for scene, pixels in zip(scenes, array):
        score.add(Case(scene.colour, scene.background, scene.shape), classify(Image.fromarray(pixels)))
    return score


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print an accuracy table (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", type=Path, default=None, help="save every image in one PNG")
    parser.add_argument("--errors", action="store_true", help="list the misclassified images")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    settings = GenerationSettings(steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg, seeds=args.seeds)
    check = classifier_self_check()
    with tempfile.TemporaryDirectory() as tmp:
        state = open_state(args.checkpoint, Path(tmp))
        try:
            score, rows = evaluate(state, held_out_cases(), settings, args.grid)
            round_trip = vae_round_trip_check(state)
        finally:
            state.queue.shutdown()
    print(f"checkpoint {args.checkpoint.name}; {len(held_out_cases())} held-out prompts x {args.seeds} seeds; "
          f"{args.sampler}, {args.steps} steps, CFG {args.cfg}, {settings.side}x{settings.side}")
    print("| | object colour | background | shape | all three |")
    print("|---|---|---|---|---|")
    rows_out = (("generated (held-out prompts)", score), ("rendered scenes through the VAE (encode + decode)", round_trip),
                ("rendered scenes (the classifier itself)", check))
    for label, s in rows_out:
        print(f"| {label} | {s.percent('colour'):.1f} % | {s.percent('background'):.1f} % | "
              f"{s.percent('shape'):.1f} % | {s.percent('all_three'):.1f} % |")
    if args.errors:
        for case, prediction in rows:
            if (prediction.colour, prediction.background, prediction.shape) != (case.colour, case.background, case.shape):
                print(f"  {case.prompt!r} -> {prediction}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
