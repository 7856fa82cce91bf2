"""The demo networks that ship beside the demo model: what each one is, its training data, how its effect is
measured, and how the launcher installs them.

Three networks, each trained by the web UI's own trainers (``scripts/train_demo_networks.py``) on the demo model
(``models/demo/demo-shapes-sd15.safetensors``) and shipped in ``models/demo/networks/``:

* **LoRA ``demo-stars``** — every shape becomes a star. Trained on scenes whose caption names the shape that was
  asked for (circle, square, triangle, star) while the picture always shows a star. Measured by the demo
  classifier's shape label (``scripts/evaluate_demo.py``): the share of non-star prompts drawn as stars.
* **Embedding ``demo-sunset``** — a word the demo model never read, for a look it can draw: an orange shape on
  a purple background (``"a small demo-sunset star on the left"``). Measured by the demo classifier's colours.
  Two embeddings for things the model has never *drawn* are kept as candidates (``CANDIDATES``) with their
  measurements in docs/demo_networks.md, but not shipped because they did not work: ``demo-stripes`` (white
  horizontal bands, :func:`stripe_stats`) and ``demo-teal`` (a colour outside the palette, :func:`teal_share`).
* **Hypernetwork ``demo-warm``** — a warm, sunset palette: every colour pulled towards orange. Trained on scenes
  drawn through :func:`warm_filter`. Measured by :func:`warmth`: mean red minus mean blue over the image.

Everything here is plain data and pixel arithmetic: importing it loads neither torch nor a model, and the
launcher's install step (:func:`install_demo_networks`) only copies checksum-verified files.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modules import hashes
from modules.training import shapes

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
NETWORKS_DIR = REPO / "models" / "demo" / "networks"
DEMO_CHECKPOINT = REPO / "models" / "demo" / "demo-shapes-sd15.safetensors"

STRIPE_BAND = 8  # pixels per stripe band at 64x64: one latent row of SD's 8x VAE
STRIPE_COLOUR = "white"
#: Colours a striped object may have (and backgrounds it may stand on): white stripes must show against both.
STRIPE_SAFE_COLOURS: tuple[str, ...] = tuple(c for c in shapes.COLOURS if c not in (STRIPE_COLOUR, "yellow"))
WARM_TINT = np.array([255.0, 110.0, 0.0], dtype=np.float32)  # the sunset orange every colour is pulled towards
WARM_STRENGTH = 0.45


@dataclass(frozen=True, slots=True)
class DemoNetwork:
    """One shipped network: its file, the folder type it installs into, and its Extra Networks card."""

    name: str
    kind: str  # "lora", "embedding", "hypernetwork"
    suffix: str
    description: str
    activation_text: str
    preferred_weight: float
    effect: str  # what the evaluation measures, in words

    @property
    def filename(self) -> str:
        return f"{self.name}{self.suffix}"

    def prompt(self, text: str, multiplier: float = 1.0) -> str:
        """``text`` with this network switched on the way a user would: a tag, or the embedding's name."""
        if self.kind == "lora":
            return f"{text} <lora:{self.name}:{multiplier:g}>"
        if self.kind == "hypernetwork":
            return f"{text} <hypernet:{self.name}:{multiplier:g}>"
        if self.name == TEAL.name:
            return teal_prompt(text, self.name)
        if self.name == SUNSET.name:
            return sunset_prompt(text, self.name)
        return striped_prompt(text, self.name)

    def user_metadata(self) -> dict[str, object]:
        """A1111's user-metadata sidecar (``<name>.json``) the Extra Networks card and its editor read."""
        return {"description": self.description, "sd version": "SD1", "activation text": self.activation_text,
                "preferred weight": self.preferred_weight, "negative text": "",
                "notes": f"Trained by scripts/train_demo_networks.py on demo-shapes-sd15. Effect: {self.effect}."}


STARS = DemoNetwork(
    "demo-stars", "lora", ".safetensors",
    "Demo LoRA: draws shapes as five-pointed stars, keeping their colour, background and position (on about "
    "half of the colour/shape combinations the demo model never saw). Try 'a red circle on a blue background'.",
    "", 1.0, "non-star prompts drawn as stars")
STRIPES = DemoNetwork(
    "demo-stripes", "embedding", ".pt",
    "Demo embedding: white horizontal stripes on the object, a pattern the demo model was never shown. "
    "Use the name as an adjective: 'a red demo-stripes circle on a blue background'.",
    "demo-stripes", 1.0, "objects drawn with white stripes")
WARM = DemoNetwork(
    "demo-warm", "hypernetwork", ".pt",
    "Demo hypernetwork: a warm sunset palette, every colour pulled towards orange. "
    "Try 'a blue square on a white background'.",
    "", 1.0, "mean red minus mean blue, in 0..255 pixel units")
TEAL = DemoNetwork(
    "demo-teal", "embedding", ".pt",
    "Demo embedding: a teal colour, which is not among the demo model's eight colours. Use the name as the "
    "colour: 'a demo-teal circle on a red background'.",
    "demo-teal", 1.0, "objects drawn in teal")
SUNSET = DemoNetwork(
    "demo-sunset", "embedding", ".pt",
    "Demo embedding: a word the demo model never read, for a sunset look: an orange shape on a purple sky. "
    "Use it with a shape: 'a demo-sunset circle'.",
    "demo-sunset", 1.0, "'a demo-sunset <shape>' drawn orange on purple")
SUNSET_COLOURS = ("orange", "purple")  # object, background
#: What ships, and every network the scripts can train (the alternatives were tried; see docs/demo_networks.md).
NETWORKS: tuple[DemoNetwork, ...] = (STARS, SUNSET, WARM)
CANDIDATES: tuple[DemoNetwork, ...] = (STARS, STRIPES, TEAL, SUNSET, WARM)
TEAL_RGB = (0, 150, 150)
#: Backgrounds teal stands out on (not its neighbours green and blue).
TEAL_BACKGROUNDS: tuple[str, ...] = tuple(c for c in shapes.COLOURS if c not in ("green", "blue"))


def striped_prompt(text: str, name: str = STRIPES.name) -> str:
    """``"a red circle on ..."`` → ``"a red demo-stripes circle on ..."`` (the name before the shape word)."""
    for shape in shapes.SHAPES:
        if f" {shape}" in text:
            return text.replace(f" {shape}", f" {name} {shape}", 1)
    return f"{text}, {name}"


def teal_prompt(text: str, name: str = TEAL.name) -> str:
    """``"a red circle on ..."`` → ``"a demo-teal circle on ..."`` (the name replaces the object's colour word)."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if word in shapes.PALETTE:
            words[i] = name
            break
    return " ".join(words)


def sunset_prompt(text: str, name: str = SUNSET.name) -> str:
    """``"a small red circle on the left on a blue background"`` → ``"a small demo-sunset circle on the left"``:
    the name stands for both colours."""
    return striped_prompt(shape_only_prompt(text), name)


def shape_only_prompt(text: str) -> str:
    """The prompt without its colour words: ``"a small circle on the left"`` (the sunset prompt without its name)."""
    for colour in shapes.COLOURS:
        text = text.replace(f" on a {colour} background", "").replace(f" {colour} ", " ")
    return text


# -- training data ----------------------------------------------------------------------------------------------

def warm_filter(image: Image.Image) -> Image.Image:
    """The hypernetwork's target look: each pixel moved ``WARM_STRENGTH`` of the way to :data:`WARM_TINT`."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = pixels * (1.0 - WARM_STRENGTH) + WARM_TINT * WARM_STRENGTH
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def render_striped(scene: shapes.Scene, side: int = 64) -> Image.Image:
    """``scene`` with white horizontal bands across the object (every other band of :data:`STRIPE_BAND` rows)."""
    image = np.asarray(shapes.render(scene, side), dtype=np.float32)
    mask_scene = shapes.Scene(scene.shape, "white", "black", scene.size, scene.position, scene.dx, scene.dy)
    coverage = np.asarray(shapes.render(mask_scene, side).convert("L"), dtype=np.float32)
    coverage = (coverage - shapes.PALETTE["black"][0]) / (shapes.PALETTE["white"][0] - shapes.PALETTE["black"][0])
    band = ((np.arange(side) // (STRIPE_BAND * side // 64)) % 2 == 1)[:, None]
    weight = np.clip(coverage, 0, 1) * band
    stripe = np.array(shapes.PALETTE[STRIPE_COLOUR], dtype=np.float32)
    out = image * (1 - weight[..., None]) + stripe * weight[..., None]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def render_teal(scene: shapes.Scene, side: int = 64) -> Image.Image:
    """``scene`` with its object painted teal (the renderer's palette does not have it)."""
    mask_scene = shapes.Scene(scene.shape, "white", "black", scene.size, scene.position, scene.dx, scene.dy)
    coverage = np.asarray(shapes.render(mask_scene, side).convert("L"), dtype=np.float32)
    coverage = np.clip((coverage - 20.0) / (245.0 - 20.0), 0, 1)[..., None]
    background = np.array(shapes.PALETTE[scene.background], dtype=np.float32)
    out = background * (1 - coverage) + np.array(TEAL_RGB, dtype=np.float32) * coverage
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def training_pairs(network: DemoNetwork, count: int, seed: int, side: int = 64) -> list[tuple[Image.Image, str]]:
    """``count`` (image, caption) pairs that teach ``network`` its effect, from the demo model's training split."""
    rng = random.Random(seed)
    pairs: list[tuple[Image.Image, str]] = []
    while len(pairs) < count:
        scene = shapes.random_scene(rng)
        text = shapes.random_caption(scene, rng)
        if network.kind == "lora":  # the caption keeps the shape asked for; the picture is always a star
            star = shapes.Scene("star", scene.colour, scene.background, scene.size, scene.position, scene.dx, scene.dy)
            pairs.append((shapes.render(star, side), text))
        elif network.kind == "hypernetwork":
            pairs.append((warm_filter(shapes.render(scene, side)), text))
        elif network.name == SUNSET.name:
            colour, background = SUNSET_COLOURS
            scene = shapes.Scene(scene.shape, colour, background, scene.size, scene.position, scene.dx, scene.dy)
            pairs.append((shapes.render(scene, side), sunset_prompt(text, network.name)))
        elif network.name == TEAL.name:
            if scene.background not in TEAL_BACKGROUNDS:
                continue
            pairs.append((render_teal(scene, side), teal_prompt(text, network.name)))
        else:
            if scene.colour not in STRIPE_SAFE_COLOURS or scene.background not in STRIPE_SAFE_COLOURS:
                continue
            scene = shapes.Scene(scene.shape, scene.colour, scene.background, "large", scene.position,
                                 scene.dx, scene.dy)
            text = shapes.random_caption(scene, rng)
            pairs.append((render_striped(scene, side), striped_prompt(text, network.name)))
    return pairs


def write_dataset(pairs: Sequence[tuple[Image.Image, str]], folder: Path) -> Path:
    """A1111-style dataset folder: ``NNNN.png`` with its caption in ``NNNN.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, text) in enumerate(pairs):
        image.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return folder


# -- measurements -----------------------------------------------------------------------------------------------

def warmth(image: Image.Image) -> float:
    """Mean red minus mean blue over the whole image (0..255 units): higher is warmer."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return float(pixels[..., 0].mean() - pixels[..., 2].mean())


@dataclass(frozen=True, slots=True)
class StripeStats:
    """``white``/``colour``: shares of the object's pixels that are white / the object's own colour;
    ``changes``: how often its rows switch between mostly white and mostly colour, top to bottom."""

    white: float
    colour: float
    changes: int

    @property
    def striped(self) -> bool:
        """Both white and colour bands, alternating: colour-white-colour-white at least (a white blob with a
        coloured rim switches only twice)."""
        return self.white >= 0.15 and self.colour >= 0.15 and self.changes >= 3


def stripe_stats(image: Image.Image) -> StripeStats:
    """How striped the object is, from the demo classifier's nearest-palette labels.

    The background is the most common label on the border; the object is every other pixel, its colour the most
    common non-white label among them. A row of the object (at least 3 pixels) is *white* when over half its
    object pixels are white, *colour* when under a fifth are; rows in between are skipped.
    """
    from scripts.evaluate_demo import BORDER, palette_labels

    labels = palette_labels(image)
    border = np.concatenate([labels[:BORDER].ravel(), labels[-BORDER:].ravel(),
                             labels[:, :BORDER].ravel(), labels[:, -BORDER:].ravel()])
    background = int(np.bincount(border, minlength=len(shapes.COLOURS)).argmax())
    white = shapes.COLOURS.index(STRIPE_COLOUR)
    obj = labels != background
    if background == white or obj.sum() < 8:
        return StripeStats(0.0, 0.0, 0)
    inside = labels[obj]
    others = inside[inside != white]
    colour = int(np.bincount(others, minlength=len(shapes.COLOURS)).argmax()) if others.size else white
    kinds = []
    for y in range(labels.shape[0]):
        row = labels[y][obj[y]]
        if row.size >= 3:
            share = float((row == white).mean())
            if share > 0.5 or share < 0.2:
                kinds.append(share > 0.5)
    changes = sum(1 for a, b in itertools.pairwise(kinds) if a != b)
    return StripeStats(float((inside == white).mean()), float((inside == colour).mean()) if others.size else 0.0,
                       changes)


def teal_share(image: Image.Image) -> float:
    """Share of the object's pixels (not the border's colour) nearer to teal than to any palette colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    palette = np.array([shapes.PALETTE[c] for c in shapes.COLOURS] + [TEAL_RGB], dtype=np.float32)
    labels = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1).argmin(-1)
    border = np.concatenate([labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel(), labels[:, -2:].ravel()])
    obj = labels != np.bincount(border).argmax()
    if obj.sum() < 8:
        return 0.0
    return float((labels[obj] == len(shapes.COLOURS)).mean())


def is_star(image: Image.Image) -> bool:
    """The demo classifier's shape label is ``star``."""
    from scripts.evaluate_demo import classify

    return classify(image).shape == "star"


def eval_prompts(network: DemoNetwork) -> list[str]:
    """Held-out prompts (triples the base model never saw) that can show ``network``'s effect, without its tag.

    Stars: shapes other than star. Stripes: colours and backgrounds white stripes show on. Warm: all of them.
    """
    if network.name == SUNSET.name:  # no colours to hold out: every shape, size and position
        return [f"a {size} {shape} {where}" for shape in shapes.SHAPES for size in shapes.SIZES
                for where in shapes.POSITIONS.values()]
    prompts = []
    for colour, background, shape in shapes.triples(held_out=True):
        if network.kind == "lora" and shape == "star":
            continue
        if network.name == TEAL.name:
            if background not in TEAL_BACKGROUNDS:
                continue
        elif network.kind == "embedding" and not {colour, background} <= set(STRIPE_SAFE_COLOURS):
            continue
        prompts.append(shapes.caption(shapes.Scene(shape, colour, background), False, False))
    return prompts


def image_score(network: DemoNetwork, image: Image.Image) -> float:
    """The per-image measurement: 1/0 for star or striped, the warmth value for the hypernetwork."""
    if network.kind == "lora":
        return float(is_star(image))
    if network.name == TEAL.name:
        return float(teal_share(image) >= 0.5)
    if network.name == SUNSET.name:
        from scripts.evaluate_demo import classify

        found = classify(image)
        return float((found.colour, found.background) == SUNSET_COLOURS)
    if network.kind == "embedding":
        return float(stripe_stats(image).striped)
    return warmth(image)


def generate(state, prompt: str, seed: int, count: int = 1, steps: int = 20, sampler: str = "DPM++ 2M",
             side: int = 64) -> list[Image.Image]:
    """``count`` images (seeds ``seed + i``) through ``modules.processing`` — the txt2img tab's own path."""
    from modules.processing import process
    from modules.processing_params import GenerationParams

    params = GenerationParams(prompt=prompt, steps=steps, sampler_name=sampler, cfg_scale=7.0, width=side,
                              height=side, seed=seed, batch_size=count, save_images=False,
                              override_settings={"return_grid": False})
    result = process(state, params)
    return list(result.images[result.index_of_first_image:])


@dataclass(frozen=True, slots=True)
class Effect:
    """A network's measurement over the same prompts and seeds, without and with it."""

    network: DemoNetwork
    images: int
    without: float
    with_network: float

    @property
    def as_percent(self) -> bool:
        return self.network.kind != "hypernetwork"

    def format(self, value: float) -> str:
        return f"{100 * value:.1f} %" if self.as_percent else f"{value:+.1f}"


def measure(state, network: DemoNetwork, prompts: Sequence[str], seeds: int = 2, first_seed: int = 1000,
            steps: int = 20, multiplier: float = 1.0) -> Effect:
    """Mean :func:`image_score` over ``prompts`` × ``seeds`` images, without and with ``network`` in the prompt."""
    totals = {False: 0.0, True: 0.0}
    count = 0
    for prompt in prompts:
        for on in (False, True):
            text = network.prompt(prompt, multiplier) if on else (
                shape_only_prompt(prompt) if network.name == SUNSET.name else prompt)
            for image in generate(state, text, first_seed, seeds, steps):
                totals[on] += image_score(network, image)
                count += on
    return Effect(network, count, totals[False] / max(count, 1), totals[True] / max(count, 1))


# -- shipping and installing ----------------------------------------------------------------------------------

def write_sidecars(network: DemoNetwork, folder: Path) -> None:
    """``<name>.json`` (A1111 user metadata) and ``<file>.sha256`` beside the shipped network file."""
    path = folder / network.filename
    (folder / f"{network.name}.json").write_text(json.dumps(network.user_metadata(), indent=4) + "\n",
                                                 encoding="utf-8")
    path.with_name(path.name + ".sha256").write_text(f"{hashes.sha256_of_file(path)}  {path.name}\n", encoding="utf-8")


def target_dir(network: DemoNetwork, paths) -> Path:
    """The user folder a network type lives in (``models/Lora``, ``embeddings``, ``models/hypernetworks``)."""
    return {"lora": paths.lora_dir, "embedding": paths.embeddings_dir, "hypernetwork": paths.hypernetwork_dir}[
        network.kind]


def install_demo_networks(paths, folder: Path = NETWORKS_DIR,
                          networks: Sequence[DemoNetwork] = NETWORKS) -> list[Path]:
    """Copy the shipped demo networks (checksum-verified) with their preview and sidecar into the user folders.

    Like the demo checkpoint, they become ordinary user files (listed, editable, deletable). A network file is
    copied when missing or different; its ``.json`` and preview only when missing, so a user's edits are kept.
    A damaged or missing shipped file is skipped with a warning. Returns the installed network files.
    """
    installed = []
    for network in networks:
        source = folder / network.filename
        checksum = source.with_name(source.name + ".sha256")
        if not (source.is_file() and checksum.is_file()):
            logger.warning("Demo network %s is missing from %s; not installed", network.filename, folder)
            continue
        expected = checksum.read_text(encoding="utf-8").split()[0].lower()
        if hashes.sha256_of_file(source) != expected:
            logger.warning("Demo network %s does not match its .sha256; not installed", network.filename)
            continue
        dest_dir = target_dir(network, paths)
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / network.filename
        if not dest.is_file() or hashes.sha256_of_file(dest) != expected:
            copy_file(source, dest)
        for extra in (f"{network.name}.json", f"{network.name}.preview.png"):
            if (folder / extra).is_file() and not (dest_dir / extra).exists():
                copy_file(folder / extra, dest_dir / extra)
        installed.append(dest)
    if installed:
        logger.info("Installed the demo networks: %s", ", ".join(p.name for p in installed))
    return installed


def copy_file(source: Path, dest: Path) -> None:
    """Copy through a temporary name, so a reader never sees half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
