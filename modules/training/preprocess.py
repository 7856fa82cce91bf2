"""A1111's "Preprocess images": resize and crop a folder of images for training, with flipped copies and captions.

For every readable image of the source folder (sorted by name):

* it is scaled to cover width × height and centre-cropped (A1111's "crop and resize"), or, with ``crop=False``,
  stretched to exactly width × height;
* it is saved as ``<dst>/<index:05>-<sub>-<stem>.png`` (A1111's names; the training caption from a file name drops
  the leading numbers again), and with "create flipped copies" also mirrored as the next ``<sub>``;
* caption: the source's ``<stem>.txt`` per "existing caption txt action" — ``ignore`` (none is written, the file
  name stays the caption), ``copy``, ``prepend`` or ``append`` (to the caption made by a captioning plug-in; none is
  bundled, so ``prepend``/``append`` equal ``copy``) — written beside the image as ``.txt`` when not empty.

Captioning models (BLIP, deepbooru) are optional plug-ins in A1111 and not bundled here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from modules.training.dataset import DatasetError, list_images

logger = logging.getLogger(__name__)

CAPTION_ACTIONS = ("ignore", "copy", "prepend", "append")


@dataclass(frozen=True)
class PreprocessOptions:
    """The Preprocess tab's fields (A1111 defaults)."""

    src: Path
    dst: Path
    width: int = 512
    height: int = 512
    existing_caption_action: str = "ignore"
    flip: bool = False  # "Create flipped copies"
    crop: bool = True  # centre-crop to the aspect ratio before resizing (False: stretch)


def _fit(image: Image.Image, width: int, height: int, crop: bool) -> Image.Image:
    if crop:
        return ImageOps.fit(image, (width, height), method=Image.LANCZOS, centering=(0.5, 0.5))
    return image.resize((width, height), Image.LANCZOS)


def preprocess(options: PreprocessOptions) -> list[Path]:
    """Write the processed images (and captions) into ``options.dst``; returns the image files written.

    Raises:
        DatasetError: the source folder is missing or has no images, source and destination are the same folder,
            a size is not positive, or the caption action is unknown.
    """
    o = options
    if o.existing_caption_action not in CAPTION_ACTIONS:
        raise DatasetError(f"existing caption action must be one of {', '.join(CAPTION_ACTIONS)}; "
                           f"got {o.existing_caption_action!r}")
    if o.width < 1 or o.height < 1:
        raise DatasetError(f"width and height must be positive; got {o.width}x{o.height}")
    files = list_images(Path(o.src))
    dst = Path(o.dst)
    if dst.exists() and dst.resolve() == Path(o.src).resolve():
        raise DatasetError("the destination directory must differ from the source directory")
    dst.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, path in enumerate(files):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as e:
            logger.warning("Preprocess: skipping %s, not a readable image (%s)", path.name, e)
            continue
        caption = _caption(path, o.existing_caption_action)
        fitted = _fit(image, o.width, o.height, o.crop)
        variants = [fitted, ImageOps.mirror(fitted)] if o.flip else [fitted]
        for sub, variant in enumerate(variants):
            target = dst / f"{index:05}-{sub}-{path.stem}.png"
            variant.save(target, format="PNG")
            if caption:
                target.with_suffix(".txt").write_text(caption, encoding="utf-8")
            written.append(target)
    logger.info("Preprocess: %d images from %s written to %s", len(written), o.src, dst)
    return written


def _caption(path: Path, action: str) -> str:
    existing = path.with_suffix(".txt")
    if action == "ignore" or not existing.is_file():
        return ""
    return existing.read_text(encoding="utf-8", errors="replace").strip()
