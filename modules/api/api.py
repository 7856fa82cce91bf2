"""The A1111-compatible ``/sdapi/v1`` API: error JSON, HTTP Basic auth, and the routers of the route groups.

Every generation and model switch goes through ``state.queue`` (one worker owns the model). Errors are
answered with A1111's error JSON ``{error, detail, body, errors}``: 422 for a bad value or a name shaped like
a path, 404 for an unknown name, 400 for a model file that cannot be used or a malformed body, 403 for frozen
settings and for names that lead out of their library, 409 for a ``force_task_id`` already queued, 413 for a
body over the size limit (see :mod:`modules.api.safety`). Routes live in :mod:`modules.api.generation`
(txt2img, progress, interrupt, skip, ``/internal/progress``) and :mod:`modules.api.listings` (the rest).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.api.safety import NameRefusedError, NotFoundError, OutsideLibraryError
from modules.call_queue import DuplicateTaskError
from modules.model_loading import ModelFileError
from modules.options import FrozenSettingsError
from modules.processing_params import ParamsError
from modules.sd_models import CheckpointNotFoundError
from modules.state import AppState
from modules.styles import StyleNotFoundError

logger = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[BaseException], int], ...] = (  # most specific first
    (FrozenSettingsError, 403), (OutsideLibraryError, 403), (CheckpointNotFoundError, 404),
    (StyleNotFoundError, 404), (DuplicateTaskError, 409), (ModelFileError, 400), (NameRefusedError, 422),
    (NotFoundError, 404), (ParamsError, 422), (KeyError, 422), (ValueError, 422),
)


def json_safe(value: object, depth: int = 0) -> object:
    """``value`` made strictly JSON-encodable: NaN/±Infinity become strings, bytes text, depth capped.

    Python's JSON parser accepts ``NaN`` and ``Infinity``; echoing them back would make the response itself fail.
    """
    if depth > 100:
        return "..."
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def error_response(status: int, error: BaseException, body: object = "") -> JSONResponse:
    """A1111's error JSON."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    content = {"error": type(error).__name__, "detail": message, "body": body, "errors": message}
    return JSONResponse(status_code=status, content=json_safe(content))


def install_error_handlers(app: FastAPI) -> None:
    """Map our exceptions (and request validation) to A1111's error JSON with the right status."""

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        content = {"error": "RequestValidationError", "detail": details, "body": exc.body, "errors": errors}
        return JSONResponse(status_code=422, content=json_safe(content))

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        content = {"error": type(exc).__name__, "detail": exc.detail, "body": "", "errors": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=json_safe(content), headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("API request failed: %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, exc)

    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    for error_type, status in _STATUS:
        app.add_exception_handler(error_type, _handler(status))
    app.add_exception_handler(Exception, on_unexpected)


def _handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(status, exc)
    return handle


def parse_credentials(text: str) -> dict[str, str]:
    """A1111's ``"user:pass[,user2:pass2]"`` → ``{user: pass}`` (a password may contain ``:``)."""
    pairs = (item.strip().split(":", 1) for item in text.split(",") if item.strip())
    credentials = {}
    for pair in pairs:
        if len(pair) != 2 or not pair[0]:
            raise ValueError(f"credentials must look like user:password[,user2:password2]; got {':'.join(pair)!r}")
        credentials[pair[0]] = pair[1]
    return credentials


def basic_auth(credentials: dict[str, str]):
    """A FastAPI dependency that requires one of ``credentials`` by HTTP Basic auth (constant-time compare)."""
    import secrets

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    scheme = HTTPBasic(auto_error=False)

    def check(given: HTTPBasicCredentials | None = Depends(scheme)) -> None:
        if given is not None:
            expected = credentials.get(given.username)
            if expected is not None and secrets.compare_digest(given.password.encode(), expected.encode()):
                return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return check


def auth_dependencies(credentials_text: str | None) -> list[Any]:
    """``[Depends(basic auth)]`` for ``user:pass,...``, or ``[]`` when no credentials are set."""
    from fastapi import Depends

    return [Depends(basic_auth(parse_credentials(credentials_text)))] if credentials_text else []


class JobRunner:
    """Submits work to the app's one queue and awaits it without blocking the event loop."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, fn, *args: Any, task_id: str | None = None) -> Any:
        _, future = self.state.queue.submit(fn, *args, task_id=task_id)
        return await asyncio.wrap_future(future)


def create_router(state: AppState) -> APIRouter:
    """All /sdapi/v1 routes, bound to ``state`` (behind HTTP Basic with --api-auth)."""
    from modules.api import generation, listings, training

    router = APIRouter(prefix="/sdapi/v1", dependencies=auth_dependencies(state.args.api_auth))
    run_job = JobRunner(state)
    generation.add_routes(router, state, run_job)
    listings.add_routes(router, state, run_job)
    training.add_routes(router, state, run_job)
    return router


def create_internal_router(state: AppState) -> APIRouter:
    """A1111's UI-internal ``/internal/progress`` and ``/internal/pending-tasks``.

    They reveal jobs and live previews, so they need credentials whenever the server has any: the --api-auth
    ones, else the --gradio-auth ones (as HTTP Basic).
    """
    from modules.api import generation

    credentials = state.args.api_auth or _gradio_credentials_text(state.args)
    router = APIRouter(prefix="/internal", dependencies=auth_dependencies(credentials))
    generation.add_internal_routes(router, state)
    return router


def _gradio_credentials_text(args) -> str | None:
    text = args.gradio_auth or ""
    if getattr(args, "gradio_auth_path", None):
        with open(args.gradio_auth_path, encoding="utf-8") as f:
            text += "," + f.read().replace("\n", ",")
    return ",".join(item.strip() for item in text.split(",") if ":" in item) or None
