"""A job's results as the page shows them: gallery files that keep their infotext, and what ♻️ reuses.

Gradio re-encodes PIL images it is given (without our ``parameters`` chunk unless asked), so the gallery gets
files instead: the very PNG the job saved when it saved one (copied byte for byte, under its A1111 name), or a
PNG written here with the infotext chunk when saving was off. Downloading an image from the gallery therefore
gives a file PNG Info and A1111 can read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from modules import infotext
from modules.processing import Processed

KEEP_JOBS = 32  # result folders kept in the temp dir; Gradio copies what it serves into its own cache
_ROOT = Path(tempfile.gettempdir()) / "webui-gallery"
_lock = threading.Lock()
_counter = 0


@dataclass(frozen=True)
class GenerationInfo:
    """What the page keeps about the last job (A1111's hidden ``generation_info`` JSON)."""

    infotexts: list[str] = field(default_factory=list)
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)
    index_of_first_image: int = 0

    @classmethod
    def of(cls, processed: Processed) -> GenerationInfo:
        return cls(list(processed.infotexts), list(processed.all_seeds), list(processed.all_subseeds),
                   processed.index_of_first_image)

    def as_dict(self) -> dict[str, object]:
        return {"infotexts": self.infotexts, "all_seeds": self.all_seeds, "all_subseeds": self.all_subseeds,
                "index_of_first_image": self.index_of_first_image}

    @classmethod
    def from_dict(cls, data: dict | None) -> GenerationInfo:
        data = data or {}
        return cls(list(data.get("infotexts", [])), list(data.get("all_seeds", [])),
                   list(data.get("all_subseeds", [])), int(data.get("index_of_first_image", 0)))

    def seed_of(self, gallery_index: int | None, sub: bool = False) -> int:
        """The seed (or variation seed) of the gallery image at ``gallery_index`` (the grid counts as the first
        image); -1 when there was no job. A1111's ♻️ buttons."""
        seeds = self.all_subseeds if sub else self.all_seeds
        if not seeds:
            return -1
        index = (gallery_index or 0) - self.index_of_first_image
        return int(seeds[min(max(index, 0), len(seeds) - 1)])

    def infotext_of(self, gallery_index: int | None) -> str:
        if not self.infotexts:
            return ""
        index = min(max(gallery_index or 0, 0), len(self.infotexts) - 1)
        return self.infotexts[index]


def picked_image(data: dict | None, selected: int | None, gallery: list | None) -> tuple[str, str | None]:
    """``(infotext, picture path)`` of the gallery image a "Send to img2img" button sends: the one selected, else the
    first sample (not the grid, which A1111 would send)."""
    info = GenerationInfo.from_dict(data)
    items = list(gallery or [])
    if not items:
        return "", None
    index = selected if selected is not None and 0 <= selected < len(items) else info.index_of_first_image
    index = min(index, len(items) - 1)
    item = items[index]
    path = item[0] if isinstance(item, (tuple, list)) else item
    return info.infotext_of(index), str(path) if path is not None else None


def gallery_files(processed: Processed) -> list[str]:
    """One PNG path per image in ``processed.images`` (grid first when there is one), each with its infotext."""
    folder = _new_folder()
    grid_names = ("grid-", "xyz_grid-")  # a batch's grid, an X/Y/Z plot's
    saved_samples = [p for p in processed.saved_paths if not p.name.startswith(grid_names)]
    saved_grids = [p for p in processed.saved_paths if p.name.startswith(grid_names)]
    first = processed.index_of_first_image
    samples = processed.images[first:]
    paths: list[str] = []
    for index, (image, text) in enumerate(zip(processed.images, processed.infotexts)):
        sample = index - first
        if sample < 0:
            source = saved_grids[0] if saved_grids else None
            name = source.name if source else "grid.png"
        else:
            source = saved_samples[sample] if len(saved_samples) == len(samples) else None
            name = source.name if source else f"{sample:05d}-{processed.all_seeds[sample]}.png"
        target = folder / name
        if source is not None and source.is_file() and _has_infotext(source, text):
            shutil.copyfile(source, target)
        else:
            image.save(target, format="PNG", pnginfo=infotext.add_to_png(text) if text else None)
        paths.append(str(target))
    return paths


def _has_infotext(path: Path, text: str) -> bool:
    """The saved file carries this infotext (it does not when ``enable_pnginfo`` is off)."""
    with Image.open(path) as image:
        return infotext.read_from_image(image) == text


def _new_folder() -> Path:
    global _counter
    with _lock:
        _counter += 1
        folder = _ROOT / f"{os.getpid()}-{_counter:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        old = sorted(p for p in _ROOT.glob(f"{os.getpid()}-*") if p.is_dir())[:-KEEP_JOBS]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return folder
