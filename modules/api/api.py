"""The A1111-compatible ``/sdapi/v1`` routes.

Every generation and model switch goes through ``state.queue`` (one worker owns the model). Errors are
answered with A1111's error JSON ``{error, detail, body, errors}``: 422 for a bad value, 404 for an unknown
name, 400 for a model file that cannot be used, 403 for frozen settings.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules import infotext, processing, samplers
from modules.api import models
from modules.model_loading import ModelFileError
from modules.options import OPTIONS, FrozenSettingsError
from modules.processing_params import GenerationParams, ParamsError
from modules.sd_models import CheckpointNotFoundError
from modules.state import AppState

logger = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[BaseException], int], ...] = (  # most specific first
    (FrozenSettingsError, 403), (CheckpointNotFoundError, 404), (ModelFileError, 400), (ParamsError, 422),
    (KeyError, 422), (ValueError, 422),
)


def error_response(status: int, error: BaseException, body: object = "") -> JSONResponse:
    """A1111's error JSON."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    content = {"error": type(error).__name__, "detail": message, "body": body, "errors": message}
    return JSONResponse(status_code=status, content=jsonable_encoder(content))


def install_error_handlers(app: FastAPI) -> None:
    """Map our exceptions (and request validation) to A1111's error JSON with the right status."""

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        content = {"error": "RequestValidationError", "detail": details, "body": jsonable_encoder(exc.body),
                   "errors": jsonable_encoder(exc.errors())}
        return JSONResponse(status_code=422, content=content)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        content = {"error": type(exc).__name__, "detail": exc.detail, "body": "", "errors": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=content, headers=getattr(exc, "headers", None))

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


def encode_png(image: Image.Image, text: str | None) -> str:
    """Base64 PNG carrying the infotext as its ``parameters`` chunk (what A1111's API returns)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=infotext.add_to_png(text) if text else None)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def params_from_request(request: models.Txt2ImgRequest) -> tuple[GenerationParams, list[str]]:
    """Turn an A1111 txt2img request into our parameters, listing what is accepted but not supported."""
    comments: list[str] = []
    overrides = dict(request.override_settings or {})
    unknown = sorted(k for k in overrides if k not in OPTIONS)
    if unknown:
        comments.append(f"override_settings ignored (not settings here): {', '.join(unknown)}")
    if request.enable_hr:
        comments.append("enable_hr: hires fix is not supported yet; the image was made at the first-pass size")
    if request.script_name or request.alwayson_scripts:
        names = [request.script_name] if request.script_name else []
        comments.append(f"scripts are not supported: {', '.join(names + list(request.alwayson_scripts))}")
    params = GenerationParams(
        prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        sampler_name=request.sampler_name or request.sampler_index, scheduler=request.scheduler or "Automatic",
        cfg_scale=request.cfg_scale, width=request.width, height=request.height, seed=request.seed,
        subseed=request.subseed, subseed_strength=request.subseed_strength, batch_size=request.batch_size,
        n_iter=request.n_iter, save_images=request.save_images and not request.do_not_save_samples,
        override_settings={k: v for k, v in overrides.items() if k in OPTIONS},
    )
    return params.validate(), comments


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


def create_router(state: AppState) -> APIRouter:
    """All /sdapi/v1 routes of this issue's scope, bound to ``state`` (behind HTTP Basic with --api-auth)."""
    from fastapi import Depends

    dependencies = []
    if state.args.api_auth:
        dependencies.append(Depends(basic_auth(parse_credentials(state.args.api_auth))))
    router = APIRouter(prefix="/sdapi/v1", dependencies=dependencies)

    async def run_job(fn, *args: Any) -> Any:
        _, future = state.queue.submit(fn, *args)
        return await asyncio.wrap_future(future)

    @router.post("/txt2img", response_model=models.ImageResponse)
    async def txt2img(request: models.Txt2ImgRequest) -> models.ImageResponse:
        params, comments = params_from_request(request)
        processed = await run_job(processing.process, state, params)
        processed.comments.extend(comments)
        if not request.override_settings_restore_afterwards:
            for key, value in params.override_settings.items():
                await run_job(state.opts.set, key, value)
        images = None
        if request.send_images:
            images = [encode_png(image, text) for image, text in zip(processed.images, processed.infotexts)]
        return models.ImageResponse(images=images, parameters=request.model_dump(), info=json.dumps(processed.info()))

    @router.get("/progress", response_model=models.ProgressResponse)
    def progress(skip_current_image: bool = False) -> models.ProgressResponse:
        job = state.job
        value, eta = job.progress()
        progress_state = models.ProgressState(
            skipped=job.skipped, interrupted=job.interrupted, job=job.job, job_count=job.job_count,
            job_timestamp=job.job_timestamp, job_no=job.job_no, sampling_step=job.sampling_step,
            sampling_steps=job.sampling_steps)
        return models.ProgressResponse(progress=value, eta_relative=eta, state=progress_state,
                                       current_image=None, textinfo=job.textinfo)

    @router.post("/interrupt")
    def interrupt() -> None:
        state.job.interrupt()

    @router.post("/skip")
    def skip() -> None:
        state.job.skip()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return state.opts.as_dict()

    @router.post("/options")
    async def set_options(values: dict[str, Any]) -> None:
        if "sd_model_checkpoint" in values:
            state.models.find(str(values["sd_model_checkpoint"]))  # 404 before anything changes
        for key, value in values.items():
            if key in OPTIONS:
                await run_job(state.opts.set, key, value)
            else:
                state.opts.set_foreign(key, value)
        state.opts.save()

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return vars(state.args)

    @router.get("/sd-models", response_model=list[models.SDModelItem])
    def sd_models() -> list[models.SDModelItem]:
        return [models.SDModelItem(title=i.title, model_name=i.model_name, hash=i.shorthash, sha256=i.sha256,
                                   filename=str(i.path), config=_config_path(i.path))
                for i in state.models.checkpoints]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        state.models.refresh()

    @router.get("/sd-vae", response_model=list[models.SDVaeItem])
    def sd_vae() -> list[models.SDVaeItem]:
        return [models.SDVaeItem(model_name=v.name, filename=str(v.path)) for v in state.models.vaes]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        state.models.refresh()

    def refresh_embeddings(force: bool) -> None:
        model = state.models.current
        if state.embeddings is not None and model is not None:
            state.embeddings.refresh(model.pipe.text_encoder.config.hidden_size, force=force)

    @router.get("/embeddings")
    async def embeddings() -> dict[str, Any]:
        await run_job(refresh_embeddings, False)  # on the worker: a job may be reading the embeddings
        return state.embeddings.api_payload() if state.embeddings is not None else {"loaded": {}, "skipped": {}}

    @router.post("/refresh-embeddings")
    async def refresh_embeddings_route() -> None:
        await run_job(refresh_embeddings, True)

    @router.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return state.libraries["hypernet"].api_list()

    @router.get("/samplers", response_model=list[models.SamplerItem])
    def get_samplers() -> list[dict[str, object]]:
        return samplers.api_samplers()

    @router.get("/schedulers", response_model=list[models.SchedulerItem])
    def get_schedulers() -> list[dict[str, object]]:
        return samplers.api_schedulers()

    @router.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    return router


def _config_path(path) -> str | None:
    sidecar = path.with_suffix(".yaml")
    return str(sidecar) if sidecar.exists() else None
