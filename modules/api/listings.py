"""Routes that list, refresh, configure and inspect: options, models, networks, styles, png-info, memory, ...

Upscalers are the hires fix's PIL ones (model-based upscalers need weights not shipped here) and its latent
modes. The scripts are the X/Y/Z plot and Prompts from file or textbox. Lists A1111 has but that this server has
nothing for (face restorers, RealESRGAN models) answer empty lists, so clients that fill their menus from them
(webuiapi, bots, Krita/Photoshop plugins) keep working instead of failing on a 404.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from modules import extensions, hires, samplers, scripts, styles
from modules.api import models, paste, resolve
from modules.api.safety import NameRefusedError
from modules.options import OPTIONS
from modules.state import AppState

#: Flags whose values are passwords (``user:password,...``): ``/cmd-flags`` shows :data:`HIDDEN` instead.
SECRET_FLAGS = frozenset({"api_auth", "gradio_auth"})
HIDDEN = "<hidden>"


def add_routes(router: APIRouter, state: AppState, run_job) -> None:
    _settings_routes(router, state, run_job)
    _model_routes(router, state, run_job)
    _info_routes(router, state)


def _settings_routes(router: APIRouter, state: AppState, run_job) -> None:
    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return state.opts.as_dict()

    @router.post("/options")
    async def set_options(values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in OPTIONS:
                _check_storable(key, value)
        await run_in_threadpool(resolve.settings, state, values)  # 4xx before anything changes
        if "sd_vae" in values and "sd_model_checkpoint" not in values:
            await run_job(_try_vae, state, values["sd_vae"])  # a VAE that does not load is refused, not kept
        for key, value in values.items():
            if key in OPTIONS:
                await run_job(state.opts.set, key, value)
            else:
                state.opts.set_foreign(key, value)
        await run_job(state.opts.save)  # one writer at a time

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return public_flags(vars(state.args))

    @router.get("/prompt-styles", response_model=list[models.PromptStyleItem])
    def prompt_styles() -> list[models.PromptStyleItem]:
        database = styles.for_state(state)
        database.reload()  # A1111 reads styles.csv at start; re-reading lets edits show without a restart
        return [models.PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
                for s in database.styles]


def public_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The command-line flags as ``/cmd-flags`` shows them: credentials replaced by ``HIDDEN``.

    A1111 returns them as given, passwords included. Here ``/sdapi/v1`` is open to anyone without --api-auth,
    even when --gradio-auth protects the page, so a password must never be part of an answer.
    """
    return {key: (HIDDEN if key in SECRET_FLAGS and value else value) for key, value in flags.items()}


def _try_vae(state: AppState, name: object) -> None:
    """Put the VAE on the current model now (A1111 reloads it on change): a broken file fails here with 400."""
    from pathlib import Path

    model = state.models.current
    if model is not None:
        forced = Path(state.args.vae_path) if state.args.vae_path else None
        state.models.apply_vae(model, str(name), forced)


def _check_storable(key: str, value: object) -> None:
    """A foreign setting is kept in config.json: it must be strict JSON (no NaN/Infinity)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise NameRefusedError(f"setting {key!r}: the value cannot be stored in config.json (NaN or Infinity)") from None


def _model_routes(router: APIRouter, state: AppState, run_job) -> None:
    @router.get("/sd-models", response_model=list[models.SDModelItem])
    def sd_models() -> list[models.SDModelItem]:
        return [models.SDModelItem(title=i.title, model_name=i.model_name, hash=i.shorthash, sha256=i.sha256,
                                   filename=str(i.path), config=_config_path(i.path))
                for i in state.models.checkpoints]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        state.models.refresh()

    @router.post("/unload-checkpoint")
    async def unload_checkpoint() -> dict[str, Any]:
        """A1111's "Unload SD checkpoint to RAM": frees the GPU for other programs; the next job brings it back."""
        await run_job(state.models.unload_to_ram)  # on the worker: never under a running job
        return {}

    @router.post("/reload-checkpoint")
    async def reload_checkpoint() -> dict[str, Any]:
        """A1111's "Load SD checkpoint to VRAM": the unloaded model back on its device (or, when none is loaded
        yet, the one the settings name)."""
        await run_job(lambda: state.models.reload_to_device(str(state.opts["sd_model_checkpoint"] or "")))
        return {}

    @router.get("/sd-vae", response_model=list[models.SDVaeItem])
    def sd_vae() -> list[models.SDVaeItem]:
        return [models.SDVaeItem(model_name=v.name, filename=str(v.path)) for v in state.models.vaes]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        state.models.refresh()

    @router.get("/embeddings")
    async def embeddings() -> dict[str, Any]:
        await run_job(resolve.refresh_embeddings, state, False)  # on the worker: a job may be reading them
        return state.embeddings.api_payload() if state.embeddings is not None else {"loaded": {}, "skipped": {}}

    @router.post("/refresh-embeddings")
    async def refresh_embeddings() -> None:
        await run_job(resolve.refresh_embeddings, state, True)

    @router.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return state.libraries["hypernet"].api_list()  # type: ignore[attr-defined]

    @router.get("/samplers", response_model=list[models.SamplerItem])
    def get_samplers() -> list[dict[str, object]]:
        return samplers.api_samplers()

    @router.get("/schedulers", response_model=list[models.SchedulerItem])
    def get_schedulers() -> list[dict[str, object]]:
        return samplers.api_schedulers()

    @router.get("/upscalers", response_model=list[models.UpscalerItem])
    def upscalers() -> list[models.UpscalerItem]:
        # A1111 lists its PIL upscalers with UpscalerData's default scale 4 and no model
        return [models.UpscalerItem(name=name, scale=4) for name in hires.IMAGE_UPSCALERS]

    @router.get("/latent-upscale-modes", response_model=list[models.LatentUpscalerModeItem])
    def latent_upscale_modes() -> list[models.LatentUpscalerModeItem]:
        return [models.LatentUpscalerModeItem(name=name) for name in hires.LATENT_MODES]

    @router.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return []

    @router.get("/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        return []


def _info_routes(router: APIRouter, state: AppState) -> None:
    @router.get("/scripts")
    def script_names() -> dict[str, list[str]]:
        titles = [s.title.lower() for s in scripts.SCRIPTS]
        return {"txt2img": titles, "img2img": titles}

    @router.get("/script-info", response_model=list[models.ScriptInfo])
    def script_info() -> list[models.ScriptInfo]:
        return [models.ScriptInfo(name=s.title.lower(), is_alwayson=False, is_img2img=mode == "img2img",
                                  args=s.args_info(mode)) for mode in ("txt2img", "img2img") for s in scripts.SCRIPTS]

    @router.get("/extensions", response_model=list[models.ExtensionItem])
    def get_extensions() -> list[models.ExtensionItem]:
        return [models.ExtensionItem(name=folder.name, remote="", branch="", commit_hash="", version="",
                                     commit_date=0, enabled=True) for folder in extensions.builtin_folders()]

    @router.get("/memory", response_model=models.MemoryResponse)
    def memory() -> models.MemoryResponse:
        return models.MemoryResponse(ram=_ram(), cuda=_cuda(state))

    @router.post("/png-info", response_model=models.PNGInfoResponse)
    def png_info(request: models.PNGInfoRequest) -> models.PNGInfoResponse:
        from modules import infotext

        if not request.image.strip():
            raise paste.ImageDecodeError("image is empty; send a base64 PNG, JPEG or WEBP")
        image = paste.read_image(request.image)
        text = infotext.read_from_image(image) or ""
        return models.PNGInfoResponse(info=text, items=paste.info_items(image),
                                      parameters=paste.parameters(state, text))


def _ram() -> dict[str, Any]:
    """A1111's numbers: this process's RSS as ``used``, ``total`` derived from its memory percent."""
    try:
        import psutil

        process = psutil.Process(os.getpid())
        rss = process.memory_info().rss
        percent = process.memory_percent()
        total = 100 * rss / percent if percent else float(psutil.virtual_memory().total)
        return {"free": total - rss, "used": rss, "total": total}
    except Exception as e:  # noqa: BLE001 - reported in the answer, as A1111 does
        return {"error": str(e)}


def _cuda(state: AppState) -> dict[str, Any]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        s = dict(torch.cuda.memory_stats(state.policy.device))

        def pair(key: str) -> dict[str, int]:
            return {"current": s.get(f"{key}.all.current", 0), "peak": s.get(f"{key}.all.peak", 0)}

        return {"system": {"free": free, "used": total - free, "total": total}, "active": pair("active_bytes"),
                "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
                "inactive": pair("inactive_split_bytes"),
                "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def _config_path(path) -> str | None:
    sidecar = path.with_suffix(".yaml")
    return str(sidecar) if sidecar.exists() else None

