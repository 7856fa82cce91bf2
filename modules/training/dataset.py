"""A training dataset folder, read the way A1111's ``PersonalizedBase`` reads it.

* Every image file in the folder (not recursive; ``.png .jpg .jpeg .webp .bmp``), sorted by name. Files that are not
  readable images are skipped with a warning; a folder with none left is an error that says so.
* Caption: ``<image>.txt`` beside the image when it exists, else the file stem without its leading ``[-\\d]+\\s*``
  (A1111's "numbers at start"), optionally reduced to the words of a regex and joined with a string (A1111's
  ``dataset_filename_word_regex`` / ``dataset_filename_join_string``).
* Prompt per sample: a random line of the prompt template, ``[filewords]`` → the caption (its comma-separated tags
  optionally dropped with probability ``tag_drop_out`` and shuffled), ``[name]`` → the embedding/network name.
* Images are resized to width × height (bicubic, no aspect kept, as A1111). With "do not resize" every image must
  already have the same size, a multiple of 8; mixed sizes are refused with the list of sizes found.
* Latents: the VAE encodes each image once up front. ``once`` keeps one sample of the latent distribution,
  ``deterministic`` its mean, ``random`` the distribution itself and draws a new sample every time.
* "Use PNG alpha channel as loss weight": the alpha channel, resized to the latent size and normalised to mean 1,
  weights the loss (images without alpha weigh 1 everywhere).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")


class DatasetError(ValueError):
    """The dataset folder or its settings cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class DatasetOptions:
    """What the Train tab says about the data (A1111 field names in the comments)."""

    data_root: Path  # "Dataset directory"
    width: int = 512
    height: int = 512
    varsize: bool = False  # "Do not resize images"
    template_lines: tuple[str, ...] = ("[filewords]",)
    placeholder: str = ""  # what [name] becomes
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False  # "Use PNG alpha channel as loss weight"
    batch_size: int = 1
    filename_word_regex: str = ""
    filename_join_string: str = " "

    def validate(self) -> None:
        if self.latent_sampling_method not in LATENT_SAMPLING_METHODS:
            raise DatasetError(f"latent sampling method must be one of {', '.join(LATENT_SAMPLING_METHODS)}; "
                               f"got {self.latent_sampling_method!r}")
        if not 0 <= self.tag_drop_out < 1:
            raise DatasetError(f"tag dropout must be in [0, 1); got {self.tag_drop_out}")
        if self.batch_size < 1:
            raise DatasetError(f"batch size must be at least 1; got {self.batch_size}")
        if not self.varsize and (self.width % 8 or self.height % 8 or self.width < 8 or self.height < 8):
            raise DatasetError(f"width and height must be positive multiples of 8; got {self.width}x{self.height}")
        if not any(line.strip() for line in self.template_lines):
            raise DatasetError("the prompt template has no lines")


@dataclass
class DatasetEntry:
    """One image: its caption, its latent (or latent mean/std for ``random``) and its loss weight."""

    path: Path
    caption: str
    latent: torch.Tensor  # (4, h, w): the sample (once), the mean (deterministic, random)
    std: torch.Tensor | None = None  # random: the distribution's std
    weight: torch.Tensor | None = None  # (h, w) loss weight, mean 1


@dataclass
class Batch:
    """What one optimizer micro-step sees."""

    latents: torch.Tensor  # (B, 4, h, w)
    prompts: list[str]
    weights: torch.Tensor | None  # (B, 1, h, w) or None
    paths: list[Path]


def read_template(path: Path) -> tuple[str, ...]:
    """The non-empty, stripped lines of a prompt-template file."""
    try:
        lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    except OSError as e:
        raise DatasetError(f"prompt template {path} cannot be read ({e})") from e
    lines = tuple(line for line in lines if line)
    if not lines:
        raise DatasetError(f"prompt template {path} has no lines")
    return lines


def caption_for(path: Path, word_regex: str = "", join_string: str = " ") -> str:
    """The caption of an image: ``<image>.txt`` when present, else derived from the file name (A1111's rule)."""
    text_file = path.with_suffix(".txt")
    if text_file.is_file():
        return text_file.read_text(encoding="utf-8", errors="replace").strip()
    text = _NUMBERS_AT_START.sub("", path.stem)
    if word_regex:
        text = join_string.join(re.findall(word_regex, text))
    return text


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted. Raises :class:`DatasetError` when the folder is not usable."""
    folder = Path(folder)
    if not str(folder).strip() or not folder.is_dir():
        raise DatasetError(f"dataset directory {str(folder)!r} does not exist or is not a folder")
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as e:
        raise DatasetError(f"dataset directory {folder} cannot be read ({e})") from e
    if not files:
        raise DatasetError(f"dataset directory {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _open(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        logger.warning("Training: skipping %s, not a readable image (%s)", path.name, e)
        return None


class TrainingDataset:
    """Images, captions and latents of one folder, encoded once by the model's VAE."""

    def __init__(self, options: DatasetOptions, vae: torch.nn.Module, generator: torch.Generator | None = None) -> None:
        options.validate()
        self.options = options
        images = [(path, image) for path in list_images(options.data_root) if (image := _open(path)) is not None]
        if not images:
            raise DatasetError(f"dataset directory {options.data_root} has no readable images")
        if options.varsize:
            sizes = sorted({image.size for _, image in images})
            if len(sizes) > 1:
                found = ", ".join(f"{w}x{h}" for w, h in sizes)
                raise DatasetError(f"'Do not resize images' is set but the images have different sizes ({found}); "
                                   "resize them (Preprocess images) or untick it")
            w, h = sizes[0]
            if w % 8 or h % 8:
                raise DatasetError(f"'Do not resize images' is set but the images are {w}x{h}; "
                                   "both sides must be multiples of 8")
        if len(images) < options.batch_size:
            raise DatasetError(f"the dataset has {len(images)} images, fewer than the batch size {options.batch_size}")
        self.entries = [self._entry(path, image, vae, generator) for path, image in images]
        logger.info("Training dataset: %d images from %s", len(self.entries), options.data_root)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def latent_size(self) -> tuple[int, int]:
        return tuple(self.entries[0].latent.shape[-2:])  # type: ignore[return-value]

    def _entry(self, path: Path, image: Image.Image, vae: torch.nn.Module,
               generator: torch.Generator | None) -> DatasetEntry:
        o = self.options
        weight = None
        if o.use_weight and "A" in image.getbands():
            alpha = image.getchannel("A")
        else:
            alpha = None
        rgb = image.convert("RGB")
        if not o.varsize and rgb.size != (o.width, o.height):
            rgb = rgb.resize((o.width, o.height), Image.BICUBIC)
            alpha = alpha.resize((o.width, o.height), Image.BICUBIC) if alpha is not None else None
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        param = next(vae.parameters())
        with torch.no_grad():
            dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        mean, std = dist.mean[0].float().cpu() * scale, dist.std[0].float().cpu() * scale
        if o.latent_sampling_method == "once":
            noise = torch.randn(mean.shape, generator=generator)
            latent, std_kept = mean + std * noise, None
        elif o.latent_sampling_method == "deterministic":
            latent, std_kept = mean, None
        else:
            latent, std_kept = mean, std
        if o.use_weight:
            h, w = latent.shape[-2:]
            if alpha is not None:
                a = torch.from_numpy(np.asarray(alpha.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0)
                weight = a / a.mean().clamp_min(1e-6)
            else:
                weight = torch.ones(h, w)
        caption = caption_for(path, o.filename_word_regex, o.filename_join_string)
        return DatasetEntry(path=path, caption=caption, latent=latent, std=std_kept, weight=weight)

    def prompt(self, entry: DatasetEntry, rng: random.Random) -> str:
        """A1111's ``create_text``: a random template line with ``[filewords]`` and ``[name]`` filled in."""
        o = self.options
        line = rng.choice([line for line in o.template_lines if line])
        tags = entry.caption.split(",")
        if o.tag_drop_out:
            tags = [t for t in tags if rng.random() > o.tag_drop_out]
        if o.shuffle_tags:
            rng.shuffle(tags)
        return line.replace("[filewords]", ",".join(tags)).replace("[name]", o.placeholder)

    def epoch(self, rng: random.Random, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One pass in a random order, in full batches (a last partial batch is dropped, as A1111's loader)."""
        order = list(range(len(self.entries)))
        rng.shuffle(order)
        size = self.options.batch_size
        for start in range(0, len(order) - size + 1, size):
            chosen = [self.entries[i] for i in order[start:start + size]]
            latents = []
            for entry in chosen:
                if entry.std is not None:  # random: a fresh sample every time the image is used
                    latents.append(entry.latent + entry.std * torch.randn(entry.latent.shape, generator=generator))
                else:
                    latents.append(entry.latent)
            weights = (torch.stack([e.weight for e in chosen])[:, None]
                       if self.options.use_weight else None)
            yield Batch(torch.stack(latents), [self.prompt(e, rng) for e in chosen], weights, [e.path for e in chosen])
