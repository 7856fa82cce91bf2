"""Card data for the Extra Networks pages, built once and reused while nothing about a card changed.

A card is what the browser needs to draw and search one network: name, relative path (``Lora/sub/x.safetensors``),
description, preview URL, dates, and the page's insert fields. Building it reads the files beside the network —
the sidecar ``<name>.json``, ``<name>.txt`` / ``<name>.description.txt`` — and looks for a preview among
``<name>.<ext>`` then ``<name>.preview.<ext>`` (png, jpg, jpeg, webp, gif; in that order, A1111 uses an unordered set).

Incremental refresh: each folder holding networks is listed once (``os.scandir``), which says which of those
neighbour files exist; a card is rebuilt only when its network file's stamp, its listing fingerprint (alias,
hash, ...) or the stamps of its neighbour files changed. Otherwise the cached card is reused without a read.
``stats`` counts builds, so tests and benchmarks can see that one new file costs one build.
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modules.ui.extra_networks_pages import Item, Page, create_pages, iter_dirs

logger = logging.getLogger(__name__)

PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
_KEEP = frozenset({"name", "rel", "alias", "text", "hypernet", "checkpoint"})  # kept even when empty
#: Settings the panel reads (A1111's keys and defaults); a key our Options does not declare may still come from an
#: A1111 config.json (kept as a foreign key), else the default applies.
PANEL_OPTIONS: dict[str, object] = {
    "extra_networks_default_multiplier": 1.0,
    "extra_networks_add_text_separator": " ",
    "extra_networks_card_order_field": "Path",
    "extra_networks_card_order": "Ascending",
    "extra_networks_tree_view_style": "Dirs",
    "extra_networks_tree_view_default_enabled": True,
    "extra_networks_hidden_models": "When searched",
    "extra_networks_card_description_is_html": False,
    "lora_show_all": False,
    "lora_hide_unknown_for_versions": [],
}


def read_option(opts: Any, key: str) -> object:
    """A panel setting: a declared option, else a foreign key from config.json, else A1111's default."""
    try:
        return opts.get(key)
    except (KeyError, AttributeError):
        pass
    try:
        return opts.as_dict().get(key, PANEL_OPTIONS.get(key))
    except AttributeError:
        return PANEL_OPTIONS.get(key)


def panel_options(opts: Any) -> dict[str, object]:
    return {key: read_option(opts, key) for key in PANEL_OPTIONS}


def base_of(path: Path) -> Path:
    """``models/Lora/x.safetensors`` → ``models/Lora/x`` (a diffusers checkpoint folder is its own base)."""
    return path if path.is_dir() else path.with_suffix("")


def user_metadata_path(item: Item) -> Path:
    """A1111's sidecar: ``<file without extension>.json``."""
    base = base_of(item.path)
    return base.with_name(base.name + ".json")


def read_user_metadata(path: Path) -> dict[str, object]:
    """The sidecar as a dict; a missing, unreadable or non-object file counts as empty (A1111 ignores it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        logger.error("Cannot read the user metadata %s (%s); ignoring it.", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def write_user_metadata(path: Path, data: Mapping[str, object]) -> None:
    """Write the sidecar as A1111's editor does (``indent=4, ensure_ascii=False``), atomically."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=4, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def neighbour_names(stem: str) -> list[str]:
    """Files beside a network that a card depends on, in lookup order."""
    names = [f"{stem}.json", f"{stem}.txt", f"{stem}.description.txt"]
    for ext in PREVIEW_EXTENSIONS:
        names += [f"{stem}.{ext}", f"{stem}.preview.{ext}"]
    return names


@dataclass
class Stats:
    listed: int = 0
    built: int = 0
    reused: int = 0
    seconds: float = 0.0
    scan_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"listed": self.listed, "built": self.built, "reused": self.reused,
                "seconds": round(self.seconds, 4), "scan_seconds": round(self.scan_seconds, 4)}


class PageCards:
    """One page's cards. Thread-safe; the serialized card list is kept until a card changes."""

    def __init__(self, page: Page, opts: Any) -> None:
        self.page = page
        self.opts = opts
        self.lock = threading.RLock()
        self._cache: dict[Path, tuple[tuple, dict[str, object]]] = {}
        self._items: dict[str, Item] | None = None
        self._cards: list[dict[str, object]] = []
        self._dirs: list[str] = []
        self._payload: bytes | None = None
        self.stats = Stats()
        self.builds_total = 0

    # -- listing ----------------------------------------------------------------------------------------------
    def ensure_listed(self) -> None:
        with self.lock:
            if self._items is None:
                self.refresh(rescan=False)

    def refresh(self, rescan: bool = True, full: bool = False) -> Stats:
        """List the page again; only cards whose files or listing changed are rebuilt (``full``: all of them)."""
        with self.lock:
            start = time.perf_counter()
            if rescan:
                self.page.refresh()
            items = self.page.items()
            scanned = time.perf_counter()
            if full:
                self._cache.clear()
            listings: dict[Path, set[str]] = {}
            stats = Stats(listed=len(items), scan_seconds=scanned - start)
            cache: dict[Path, tuple[tuple, dict[str, object]]] = {}
            cards = []
            is_html = bool(read_option(self.opts, "extra_networks_card_description_is_html"))
            for index, item in enumerate(items):
                card = self._card(item, listings, cache, stats, is_html)
                card["index"] = index
                cards.append(card)
            self._cache = cache
            self._items = {item.name: item for item in items}
            changed = stats.built > 0 or [c["name"] for c in cards] != [c["name"] for c in self._cards]
            self._cards = cards
            if changed or self._payload is None:
                self._dirs = iter_dirs(c["rel"] for c in cards)  # type: ignore[misc]
                self._payload = None
            stats.seconds = time.perf_counter() - start
            self.stats = stats
            return stats

    def item(self, name: str) -> Item:
        self.ensure_listed()
        with self.lock:
            assert self._items is not None
            found = self._items.get(name)
        if found is None:
            raise LookupError(f"no {self.page.title} item named {name!r}; refresh the page")
        return found

    def card(self, name: str) -> dict[str, object]:
        """The current card of ``name`` (built when missing)."""
        self.ensure_listed()
        with self.lock:
            for card in self._cards:
                if card["name"] == name:
                    return dict(card)
        return self.rebuild(name)

    def rebuild(self, name: str) -> dict[str, object]:
        """Rebuild one card from its files now (after the editor saved it or its preview changed)."""
        with self.lock:
            item = self.item(name)
            self._cache.pop(item.path, None)
            stats = Stats()
            is_html = bool(read_option(self.opts, "extra_networks_card_description_is_html"))
            card = self._card(item, {}, self._cache, stats, is_html)
            for i, old in enumerate(self._cards):
                if old["name"] == name:
                    card["index"] = old["index"]
                    self._cards[i] = card
            self._payload = None
            return card

    def payload(self) -> bytes:
        """``{"page", "title", "cards", "dirs", "stats", "opts"}`` as JSON bytes (the cards part is cached)."""
        self.ensure_listed()
        with self.lock:
            if self._payload is None:
                body = {"page": self.page.id, "title": self.page.title, "cards": self._cards, "dirs": self._dirs}
                self._payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            cards = self._payload
            stats = json.dumps(self.stats.as_dict()).encode()
        opts = json.dumps(panel_options(self.opts), ensure_ascii=False).encode("utf-8")
        return cards[:-1] + b',"stats":' + stats + b',"opts":' + opts + b"}"

    # -- one card ---------------------------------------------------------------------------------------------
    def _card(self, item: Item, listings: dict[Path, set[str]], cache: dict, stats: Stats,
              is_html: bool) -> dict[str, object]:
        base = base_of(item.path)
        folder = base.parent
        names = listings.get(folder)
        if names is None:
            try:
                names = listings[folder] = set(os.listdir(folder))
            except OSError:
                names = listings[folder] = set()
        present = []
        for name in neighbour_names(base.name):
            if name in names:
                try:
                    st = os.stat(folder / name)
                    present.append((name, st.st_mtime_ns, st.st_size))
                except OSError:
                    continue
        try:
            st = os.stat(item.path)
            stamp = (st.st_mtime_ns, st.st_size, int(getattr(st, "st_birthtime", st.st_ctime)))
        except OSError:
            stamp = (0, 0, 0)
        key = (stamp, item.fingerprint, tuple(present), is_html, item.label)
        old = self._cache.get(item.path)
        if old is not None and old[0] == key:
            stats.reused += 1
            cache[item.path] = old
            return dict(old[1])
        card = self._build(item, base, {p[0]: p[1] for p in present}, stamp, is_html)
        stats.built += 1
        self.builds_total += 1
        cache[item.path] = (key, card)
        return dict(card)

    def _build(self, item: Item, base: Path, present: dict[str, int], stamp: tuple, is_html: bool) -> dict[str, object]:
        user = read_user_metadata(base.with_name(base.name + ".json")) if f"{base.name}.json" in present else {}
        description = user.get("description")
        if not isinstance(description, str):
            description = ""
            for name in (f"{base.name}.txt", f"{base.name}.description.txt"):
                if name in present:
                    try:
                        description = (base.parent / name).read_text(encoding="utf-8", errors="replace").strip()
                    except OSError:
                        continue
                    break
        rel = relative_path(item)
        full_hash = self.page.full_hash(item)
        card: dict[str, object] = {
            "name": item.name, "rel": rel, "hash": full_hash,
            "desc": description if is_html else html.escape(description),
            "search": "\n".join((rel, full_hash, description)).lower(),
            "preview": self._preview_url(item, base, present),
            "created": stamp[2], "modified": stamp[0] // 1_000_000_000,
            "hidden": "/." in "/" + rel,
        }
        if item.label and item.label != item.name:
            card["label"] = item.label
        card.update(item.fields)
        card.update(self.page.card_fields(item, user))
        if card["search"] == rel.lower() + "\n\n":
            del card["search"]  # the browser searches the relative path then
        return {k: v for k, v in card.items() if v not in ("", None, False) or k in _KEEP}

    def _preview_url(self, item: Item, base: Path, present: dict[str, int]) -> str:
        for ext in PREVIEW_EXTENSIONS:
            for name in (f"{base.name}.{ext}", f"{base.name}.preview.{ext}"):
                if name in present:
                    rel = (base.parent / name).relative_to(item.root).as_posix() if item.root in base.parents else name
                    return (f"sd_extra_networks/thumb?page={self.page.id}&root={item.root_index}"
                            f"&filename={quote(rel)}&mtime={present[name] // 1_000_000_000}")
        if item.fields.get("cover"):
            return f"sd_extra_networks/cover-images?page={self.page.id}&item={quote(item.name)}&index=0"
        return ""


def relative_path(item: Item) -> str:
    """The path A1111 searches in: relative to the parent of the library folder (``Lora/sub/x.safetensors``)."""
    try:
        return item.path.relative_to(item.root.parent).as_posix()
    except ValueError:
        return item.path.name


class ExtraNetworksUI:
    """Every page's cards for one AppState (shared by the panel's server functions and the public routes)."""

    def __init__(self, state: Any) -> None:
        self.state_ref = weakref.ref(state)
        self.pages: dict[str, PageCards] = {p.id: PageCards(p, state.opts) for p in create_pages(state)}

    def get(self, page: str) -> PageCards:
        found = self.pages.get(page)
        if found is None:
            raise LookupError(f"no extra networks page {page!r}; pages: {', '.join(self.pages)}")
        return found

    def refresh_all(self, full: bool = False) -> dict[str, Stats]:
        """A1111's refresh button: every page rescans."""
        return {page_id: cards.refresh(full=full) for page_id, cards in self.pages.items()}

    def warm(self) -> threading.Thread:
        """List every page in the background so the first click on a tab finds its cards ready."""
        def run() -> None:
            for cards in self.pages.values():
                try:
                    cards.ensure_listed()
                except Exception:  # a broken library must not kill the thread; the page reports it when opened
                    logger.exception("Listing the %s page failed", cards.page.title)

        thread = threading.Thread(target=run, name="extra-networks-warm", daemon=True)
        thread.start()
        return thread


_REGISTRY: dict[int, ExtraNetworksUI] = {}
_REGISTRY_LOCK = threading.Lock()


def for_state(state: Any) -> ExtraNetworksUI:
    """The one :class:`ExtraNetworksUI` of ``state`` (created on first use, dropped with the state)."""
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(id(state))
        if found is None or found.state_ref() is not state:
            found = _REGISTRY[id(state)] = ExtraNetworksUI(state)
            weakref.finalize(state, _REGISTRY.pop, id(state), None)
        return found
