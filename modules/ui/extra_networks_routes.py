"""The Extra Networks panel's public routes, served beside the UI without ``--api`` (as A1111 serves its own).

Read-only, like A1111's: card lists, thumbnails, embedded cover images, raw metadata, one card, the panel's JS/CSS.
Everything that writes (the metadata editor, "replace preview", switching the checkpoint) goes through Gradio,
so ``--gradio-auth`` protects it (see :mod:`modules.ui.extra_networks_panel`).

``/sd_extra_networks/thumb`` serves only files inside the page's library folders, with a preview extension:
``filename`` is relative to root ``root`` of page ``page``; absolute names, ``..`` and symlinks that lead out of the
folder are refused (:func:`modules.paths.resolve_inside`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

from modules.paths import resolve_inside
from modules.ui.extra_networks_cards import PREVIEW_EXTENSIONS, PageCards, for_state, panel_options

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"extra_networks.js": "text/javascript", "extra_networks.css": "text/css"}
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}  # thumbnail URLs carry the file's mtime


def static_version() -> str:
    """A cache-busting token for the panel's JS/CSS (their newest mtime)."""
    stamps = [int((STATIC_DIR / name).stat().st_mtime) for name in STATIC_FILES if (STATIC_DIR / name).is_file()]
    return str(max(stamps, default=0))


def thumb_path(cards: PageCards, root: int, filename: str) -> Path:
    """The preview file ``filename`` names under the page's root ``root``.

    Raises:
        HTTPException: 403 for a name outside the folder, absolute, or without a preview extension; 404 when absent.
    """
    roots = cards.page.roots()
    if not 0 <= root < len(roots):
        raise HTTPException(404, f"page {cards.page.id!r} has no folder number {root}")
    if not filename or PurePosixPath(filename).is_absolute() or PureWindowsPath(filename).is_absolute() \
            or PureWindowsPath(filename).drive or filename.startswith(("/", "\\")):
        raise HTTPException(403, "give the file name relative to the library folder")
    try:
        path = resolve_inside(roots[root], filename)
    except ValueError as e:
        raise HTTPException(403, str(e)) from e
    if path.suffix.lower().lstrip(".") not in PREVIEW_EXTENSIONS:
        raise HTTPException(403, f"only {', '.join(PREVIEW_EXTENSIONS)} files are served here")
    if not path.is_file():
        raise HTTPException(404, f"{filename} not found")
    return path


def cover_image(metadata: dict[str, Any], index: int) -> bytes:
    """The ``index``-th embedded ``ssmd_cover_images`` picture (a JSON list of base64 strings)."""
    raw = metadata.get("ssmd_cover_images")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = None
    if not isinstance(raw, list) or not 0 <= index < len(raw) or not isinstance(raw[index], str):
        raise HTTPException(404, "no such cover image")
    try:
        return base64.b64decode(raw[index].split(",", 1)[-1], validate=False)
    except (binascii.Error, ValueError) as e:
        raise HTTPException(404, f"the cover image cannot be decoded ({e})") from e


def image_type(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return "image/" + (image.format or "png").lower()
    except (UnidentifiedImageError, OSError) as e:
        raise HTTPException(404, "the cover image is not a picture") from e


def create_router(state: Any) -> APIRouter:
    """The ``/sd_extra_networks/*`` routes over ``state``'s libraries."""
    ui = for_state(state)
    router = APIRouter(tags=["Extra Networks"])

    def page(name: str) -> PageCards:
        try:
            return ui.get(name)
        except LookupError as e:
            raise HTTPException(404, str(e)) from e

    def json_response(body: object) -> Response:
        return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")

    @router.get("/sd_extra_networks/cards")
    def cards(page_name: str = _query("page")) -> Response:
        """Every card of a page: ``{page, title, cards, dirs, stats}``."""
        return Response(page(page_name).payload(), media_type="application/json")

    @router.post("/sd_extra_networks/refresh")
    def refresh(page_name: str = _query("page"), full: bool = False) -> Response:
        """A1111's refresh button: every page rescans (incrementally unless ``full``); answers the page's cards."""
        target = page(page_name)
        ui.refresh_all(full=full)
        return Response(target.payload(), media_type="application/json")

    @router.get("/sd_extra_networks/options")
    def options() -> Response:
        """The settings the panel uses now (the default multiplier, the separator, sort defaults, ...)."""
        return json_response(panel_options(state.opts))

    @router.get("/sd_extra_networks/thumb")
    def thumb(filename: str, page_name: str = _query("page"), root: int = 0, mtime: str | None = None) -> Response:
        return FileResponse(thumb_path(page(page_name), root, filename), headers=_IMMUTABLE)

    @router.get("/sd_extra_networks/cover-images")
    def cover_images(item: str, page_name: str = _query("page"), index: int = 0) -> Response:
        cards_ = page(page_name)
        try:
            data = cover_image(cards_.page.metadata(cards_.item(item)), index)
        except LookupError as e:
            raise HTTPException(404, str(e)) from e
        return Response(data, media_type=image_type(data))

    @router.get("/sd_extra_networks/metadata")
    def metadata(item: str, page_name: str = _query("page")) -> Response:
        """The file's metadata without the cover images, as A1111: ``{"metadata": "<JSON text>"}``."""
        cards_ = page(page_name)
        try:
            data = cards_.page.metadata(cards_.item(item))
        except LookupError as e:
            raise HTTPException(404, str(e)) from e
        data = {k: v for k, v in data.items() if k != "ssmd_cover_images"}
        return json_response({"metadata": json.dumps(data, indent=4, ensure_ascii=False)})

    @router.get("/sd_extra_networks/get-single-card")
    def single_card(name: str, page_name: str = _query("page"), tabname: str = "txt2img") -> Response:
        """One card rebuilt from its files now: ``{"card": {...}}``."""
        try:
            return json_response({"card": page(page_name).rebuild(name)})
        except LookupError as e:
            raise HTTPException(404, str(e)) from e

    @router.get("/sd_extra_networks/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    return router


def _query(alias: str) -> Any:
    from fastapi import Query

    return Query(..., alias=alias)

