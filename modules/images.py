"""Saving images the way A1111 does: numbered PNGs in dated folders, with the infotext inside.

* Samples go to ``outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png``, grids to
  ``outputs/txt2img-grids/YYYY-MM-DD/grid-NNNN.png``; the number continues from the highest already there.
* The infotext is the PNG's ``parameters`` text chunk (tEXt, or iTXt when it is not Latin-1).
"""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

from PIL import Image

from modules import infotext

_NUMBERED = re.compile(r"^(\d+)(?=[-.])")  # "00012-seed.png", or a grid's "0003.png" after its prefix
_save_lock = threading.Lock()  # two jobs never pick the same number


def next_number(folder: Path, prefix: str = "") -> int:
    """One more than the highest number of the files in ``folder`` named ``NNNNN-...`` (or ``{prefix}NNNN.png``);
    0 when there are none."""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            name = entry.name[len(prefix):] if prefix and entry.name.startswith(prefix) else entry.name
            match = _NUMBERED.match(name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def dated_folder(base: Path, use_date: bool = True) -> Path:
    """``base/YYYY-MM-DD`` (A1111's ``[date]`` directory pattern), or ``base`` itself."""
    return base / time.strftime("%Y-%m-%d") if use_date else base


def save_image(image: Image.Image, folder: Path, seed: int, text: str | None, grid: bool = False,
               suffix: str = "", prefix: str = "grid") -> Path:
    """Save one PNG with its infotext and return its path.

    Args:
        image: the picture.
        folder: final folder (already dated).
        seed: goes in the file name (``NNNNN-SEED.png``); ignored for grids (``grid-NNNN.png``).
        text: the infotext, or None to write none (``enable_pnginfo`` off).
        grid: name it as a grid (``PREFIX-NNNN.png``).
        suffix: added after the seed (A1111's ``-before-highres-fix``).
        prefix: a grid's name (A1111's ``xyz_grid`` for the X/Y/Z plot).
    """
    folder.mkdir(parents=True, exist_ok=True)
    pnginfo = infotext.add_to_png(text) if text else None
    with _save_lock:
        if grid:
            path = folder / f"{prefix}-{next_number(folder, prefix + '-'):04d}.png"
        else:
            path = folder / f"{next_number(folder):05d}-{seed}{suffix}.png"
        image.save(path, format="PNG", pnginfo=pnginfo)
    return path


def image_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    """A1111's default grid: ``round(sqrt(n))`` rows, images left to right, empty spots left black."""
    if rows is None:
        rows = max(1, round(math.sqrt(len(images))))
    rows = min(rows, len(images))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), color="black")
    for index, image in enumerate(images):
        grid.paste(image, box=(index % cols * width, index // cols * height))
    return grid
