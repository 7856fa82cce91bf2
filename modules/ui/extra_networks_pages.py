"""The four Extra Networks pages (A1111 1.10's order: Textual Inversion, Hypernetworks, Checkpoints, Lora).

A page lists :class:`Item` s from its library — nothing else is read here: the libraries already cache what they
parse by file stamp, so listing is a folder walk plus stats. What a card shows beyond that (sidecar ``.json``,
description ``.txt``, preview image) is built and cached by :mod:`modules.ui.extra_networks_cards`.

Each item carries ``fields``: the page-specific data the browser needs to insert the card's text (the LoRA alias,
the embedding name, the checkpoint title). ``fingerprint`` is everything in the listing that changes the card, so
an unchanged fingerprint + unchanged files means the cached card is reused.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The editor's fields (sidecar keys, A1111's names) per page; LoRA has the most.
BASE_FIELDS = ("description", "notes")
LORA_FIELDS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")


@dataclass(frozen=True)
class Item:
    """One network as a page lists it."""

    name: str  # unique on its page: how routes and the editor name it
    path: Path  # the network file (or a diffusers checkpoint folder)
    root: Path  # the library folder it was found under
    root_index: int  # which of the page's roots
    fields: Mapping[str, Any] = field(default_factory=dict)  # page-specific card data for the browser
    fingerprint: tuple = ()
    label: str = ""  # the name shown on the card, when it is not ``name``


class Page:
    """A page: its id (used in URLs), title, folders, items and editor details."""

    id = ""
    title = ""
    #: "Replace preview" writes ``<path><suffix>``: a bare ``<name>.png`` next to an embedding would be read as one.
    preview_suffix = ".png"
    editor_fields: tuple[str, ...] = BASE_FIELDS

    def roots(self) -> list[Path]:
        raise NotImplementedError

    def refresh(self) -> None:
        """Rescan the library (the libraries keep parsed files by stamp, so unchanged files are not read again)."""

    def items(self) -> list[Item]:
        raise NotImplementedError

    def metadata(self, item: Item) -> dict[str, object]:
        """The file's own metadata (the info view); empty where a format has none."""
        return {}

    def info_rows(self, item: Item) -> list[tuple[str, str]]:
        """Extra rows of the editor's table after filename, size, hash and date."""
        return []

    def tags(self, item: Item) -> list[tuple[str, int]]:
        """Training tags, most frequent first (LoRA only)."""
        return []

    def full_hash(self, item: Item) -> str:
        return ""

    def card_fields(self, item: Item, user: Mapping[str, object]) -> dict[str, object]:
        """Per-card fields that depend on the sidecar (LoRA: weight, activation and negative text)."""
        return {}

    def visible(self, card: Mapping[str, object], opts: Mapping[str, object]) -> bool:
        return True

    def _root_of(self, path: Path, roots: list[Path]) -> tuple[Path, int]:
        text = str(path)
        for index, root in enumerate(roots):
            prefix = str(root).rstrip(os.sep) + os.sep  # a string test: ``root in path.parents`` builds every parent
            if text.startswith(prefix):
                return root, index
        return path.parent, len(roots)  # a file given outside the folders (``--ckpt``): its own folder


class LoraPage(Page):
    id, title = "lora", "Lora"
    editor_fields = LORA_FIELDS

    def __init__(self, library: Any) -> None:
        self.library = library

    def roots(self) -> list[Path]:
        return list(self.library.dirs)

    def refresh(self) -> None:
        self.library.refresh()

    def items(self) -> list[Item]:
        roots = self.roots()
        out = []
        for entry in self.library.entries():
            root, index = self._root_of(entry.path, roots)
            alias = self.library.get_alias(entry)
            fields = {"alias": alias, "cover": bool(entry.metadata.get("ssmd_cover_images")),
                      "sd_version": entry.sd_version}
            out.append(Item(entry.name, entry.path, root, index, fields, (alias, entry.hash, entry.sd_version)))
        return out

    def _entry(self, item: Item) -> Any:
        for entry in self.library.entries():
            if entry.path == item.path:
                return entry
        raise LookupError(f"LoRA {item.name!r} is no longer listed; refresh the page")

    def metadata(self, item: Item) -> dict[str, object]:
        return dict(self._entry(item).metadata)

    def full_hash(self, item: Item) -> str:
        return self._entry(item).hash

    def tags(self, item: Item) -> list[tuple[str, int]]:
        from importlib import import_module

        library_module = import_module(type(self.library).__module__)
        return library_module.build_tags(self._entry(item).metadata)

    def info_rows(self, item: Item) -> list[tuple[str, str]]:
        return lora_info_rows(self._entry(item).metadata)

    def card_fields(self, item: Item, user: Mapping[str, object]) -> dict[str, object]:
        weight = _float(user.get("preferred weight"))
        version = user.get("sd version")
        return {"weight": weight or None, "activation": _text(user.get("activation text")),
                "negative": _text(user.get("negative text")),
                "sd_version": version if isinstance(version, str) and version else item.fields["sd_version"]}

    def visible(self, card: Mapping[str, object], opts: Mapping[str, object]) -> bool:
        """A1111's filter for an SD1 model: SD2/SDXL cards hidden unless ``lora_show_all``."""
        if opts.get("lora_show_all"):
            return True
        version = card.get("sd_version")
        if version == "Unknown":
            return "SD1" not in (opts.get("lora_hide_unknown_for_versions") or [])
        return version in ("SD1", None)


class TextualInversionPage(Page):
    id, title = "textual_inversion", "Textual Inversion"
    preview_suffix = ".preview.png"

    def __init__(self, database: Any, models: Any, folder: Path) -> None:
        self.database, self.models, self.folder = database, models, folder

    def roots(self) -> list[Path]:
        return [self.folder]

    def refresh(self) -> None:
        database, model = self.database, self.models.current
        if database is None:
            return
        width = model.pipe.text_encoder.config.hidden_size if model is not None else database.expected_width
        if width:
            database.refresh(int(width))

    def items(self) -> list[Item]:
        database = self.database
        if database is None:
            return []
        if database.expected_width is None:
            self.refresh()
        roots = self.roots()
        out = []
        for name, embedding in database.loaded.items():
            root, index = self._root_of(embedding.path, roots)
            out.append(Item(name, embedding.path, root, index, {"text": name}, (embedding.sha256,)))
        return out

    def full_hash(self, item: Item) -> str:
        return item.fingerprint[0] if item.fingerprint else ""

    def info_rows(self, item: Item) -> list[tuple[str, str]]:
        embedding = self.database.loaded.get(item.name) if self.database is not None else None
        if embedding is None:
            return []
        rows = [("Vectors:", str(embedding.vector_count)), ("Width:", str(embedding.shape))]
        if embedding.step is not None:
            rows.append(("Steps:", str(embedding.step)))
        if embedding.sd_checkpoint_name:
            rows.append(("Trained on:", html.escape(str(embedding.sd_checkpoint_name))))
        return rows


class HypernetworkPage(Page):
    id, title = "hypernetworks", "Hypernetworks"
    preview_suffix = ".preview.png"

    def __init__(self, library: Any) -> None:
        self.library = library

    def roots(self) -> list[Path]:
        return [self.library.folder]

    def refresh(self) -> None:
        self.library.refresh()

    def items(self) -> list[Item]:
        roots = self.roots()
        out = []
        for row in self.library.api_list():
            path = Path(row["path"])
            root, index = self._root_of(path, roots)
            cached = self.library.hashes.cached(path) if path.is_file() else None
            out.append(Item(row["name"], path, root, index, {"hypernet": row["name"]}, (cached or "",)))
        return out

    def full_hash(self, item: Item) -> str:
        return item.fingerprint[0] if item.fingerprint else ""


class CheckpointPage(Page):
    id, title = "checkpoints", "Checkpoints"

    def __init__(self, models: Any) -> None:
        self.models = models

    def roots(self) -> list[Path]:
        return [self.models.ckpt_dir]

    def refresh(self) -> None:
        self.models.refresh()

    def items(self) -> list[Item]:
        roots = self.roots()
        out = []
        for info in self.models.checkpoints:
            root, index = self._root_of(info.path, roots)
            out.append(Item(info.name, info.path, root, index, {"checkpoint": info.title},
                            (info.title, info.sha256 or ""), label=info.name_for_extra))
        return out

    def full_hash(self, item: Item) -> str:
        return item.fingerprint[1] if len(item.fingerprint) > 1 else ""


def create_pages(state: Any) -> list[Page]:
    """The pages in A1111's tab order; a library that is not there (an extension not loaded) has no page."""
    pages: list[Page] = [TextualInversionPage(state.embeddings, state.models, state.paths.embeddings_dir)]
    if "hypernet" in state.libraries:
        pages.append(HypernetworkPage(state.libraries["hypernet"]))
    pages.append(CheckpointPage(state.models))
    if "lora" in state.libraries:
        pages.append(LoraPage(state.libraries["lora"]))
    return pages


# -- LoRA metadata shown in the editor (A1111's rows) ------------------------------------------------------------------

def lora_info_rows(metadata: Mapping[str, object]) -> list[tuple[str, str]]:
    """Rows A1111's LoRA editor adds: output name, model, clip skip, module, date trained, resolutions, dataset size."""
    rows = []
    for key, label in (("ss_output_name", "Output name:"), ("ss_sd_model_name", "Model:"),
                       ("ss_clip_skip", "Clip skip:"), ("ss_network_module", "Kohya module:")):
        value = metadata.get(key)
        if value is not None and str(value) != "None":
            rows.append((label, html.escape(str(value))))
    started = metadata.get("ss_training_started_at")
    try:
        stamp = float(started)  # type: ignore[arg-type]
        rows.append(("Date trained:", time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp))))
    except (TypeError, ValueError):
        pass
    buckets = metadata.get("ss_bucket_info")
    if isinstance(buckets, Mapping) and isinstance(buckets.get("buckets"), Mapping):
        counts: dict[str, int] = {}
        for bucket in buckets["buckets"].values():
            if isinstance(bucket, Mapping) and isinstance(bucket.get("resolution"), list):
                key = "x".join(str(v) for v in bucket["resolution"])
                counts[key] = counts.get(key, 0) + int(bucket.get("count") or 0)
        top = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:4]
        if top:
            rows.append(("Resolutions:", ", ".join(k for k, _ in top) + (", ..." if len(counts) > 4 else "")))
    dirs = metadata.get("ss_dataset_dirs")
    if isinstance(dirs, Mapping):
        total = sum(int(d.get("img_count") or 0) for d in dirs.values() if isinstance(d, Mapping))
        rows.append(("Dataset size:", str(total)))
    return rows


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def iter_dirs(rel_paths: Iterable[str]) -> list[str]:
    """Every folder (and its ancestors) of the given ``Root/sub/file`` paths, sorted."""
    dirs: set[str] = set()
    for rel in rel_paths:
        parts = rel.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:n]))
    return sorted(dirs, key=str.lower)
