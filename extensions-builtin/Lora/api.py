"""A1111's LoRA routes: ``GET /sdapi/v1/loras`` and ``POST /sdapi/v1/refresh-loras``.

A1111 registers them on the app itself (``on_app_started``), not on its API router, so they answer without
``--api`` and without ``--api-auth`` credentials. The app mounts this router the same way: separately from the
authenticated ``/sdapi/v1`` router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from .library import LoraLibrary


def create_router(library: LoraLibrary) -> APIRouter:
    """The two public LoRA routes over ``library``."""
    router = APIRouter(tags=["LoRA"])

    @router.get("/sdapi/v1/loras", response_model=None)
    def get_loras() -> list[dict[str, object]]:
        """Every listed network: ``[{name, alias, path, metadata}]``."""
        return library.api_list()

    @router.post("/sdapi/v1/refresh-loras", response_model=None)
    def refresh_loras() -> None:
        """Rescan the LoRA folders; answers ``null`` as A1111."""
        library.refresh()

    return router
