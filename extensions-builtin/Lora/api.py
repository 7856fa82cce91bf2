"""A1111's LoRA routes: ``GET /sdapi/v1/loras`` and ``POST /sdapi/v1/refresh-loras``.

A1111 registers them on the app itself (``on_app_started``), not on its API router, so they answer without
``--api`` — and, by an oversight, without ``--api-auth`` credentials. The app mounts this router separately from the
``/sdapi/v1`` router, so it answers without ``--api`` as in A1111, but with the same HTTP Basic check as every other
API route (issue 5: "HTTP Basic on every API route").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from .library import LoraLibrary


def create_router(library: LoraLibrary) -> APIRouter:
    """The two LoRA routes over ``library`` (mounted outside the ``--api`` router)."""
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
