"""Entry point: flags → AppState → FastAPI app (API and/or the Gradio UI mounted at /) → uvicorn.

Wiring only; importing this module does nothing. ``launch.py`` prepares the environment and calls :func:`main`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
import webbrowser
from collections.abc import Sequence

from modules import cmd_args

logger = logging.getLogger("webui")

#: On Ctrl+C / SIGTERM, requests still waiting on jobs get this long before they are cut off.
SHUTDOWN_GRACE_S = 5


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted. ``argv=None`` means the command line plus ``COMMANDLINE_ARGS``."""
    args = cmd_args.parse_args(cmd_args.full_argv() if argv is None else list(argv))
    setup_logging(args.loglevel)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models never come from the hub
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from modules import initialize

    state = initialize.build_state(args)
    register_setting_callbacks(state)
    startup = initialize.choose_startup_checkpoint(state)
    state.opts.set("sd_model_checkpoint", startup.name, run_callbacks=False, internal=True)
    if not args.skip_load_model_at_start:
        load_startup_model(state)
    app = create_app(state)
    return serve(app, state)


def setup_logging(level: str | None) -> None:
    """Console logging in A1111's spirit: our messages at INFO, libraries' chatter at WARNING."""
    logging.basicConfig(level=(level or "INFO").upper(), format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "PIL", "asyncio", "multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not level else level.upper())
    for chatty in ("diffusers", "transformers"):  # their warnings about optional extras are not the user's business
        logging.getLogger(chatty).setLevel(logging.ERROR if not level else level.upper())
        # ... and the libraries set their own level when they first log (e.g. transformers' "requires torchvision,
        # falling back to PIL" at diffusers' import), overriding the line above unless told through their variable.
        os.environ.setdefault(f"{chatty.upper()}_VERBOSITY", "error" if not level else level.lower())
    warnings.filterwarnings("ignore", message="Should have ta>=t0", module="torchsde")
    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


def register_setting_callbacks(state) -> None:
    """Settings whose change does work: switching the checkpoint loads it (on the job queue's worker)."""

    def load_checkpoint(key: str, value: object) -> None:
        info = state.models.find(str(value))
        state.models.load(info)

    def set_cache_limit(key: str, value: object) -> None:
        state.models.cache_limit = int(value)

    state.opts.on_change("sd_model_checkpoint", load_checkpoint)
    state.opts.on_change("sd_checkpoints_limit", set_cache_limit)


def load_startup_model(state) -> None:
    """Load the chosen checkpoint; a broken file is reported and the server still starts."""
    from modules.model_loading import ModelFileError
    from pathlib import Path

    try:
        info = state.models.find(str(state.opts["sd_model_checkpoint"]))
        model = state.queue.run(state.models.load, info)
        forced = Path(state.args.vae_path) if state.args.vae_path else None
        state.queue.run(state.models.apply_vae, model, str(state.opts["sd_vae"]), forced)
    except (ModelFileError, LookupError, ValueError) as e:
        message = f"The checkpoint could not be loaded: {e}"
        logger.error(message)
        state.notices.append(message)


def create_app(state):
    """The FastAPI app: /sdapi/v1 with --api or --nowebui, the Gradio UI at / unless --nowebui."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from modules.api import api
    from modules.api.safety import RequestGuard

    app = FastAPI(title="Stable Diffusion web UI API", docs_url="/docs", redoc_url="/redoc")
    app.state.webui = state
    api.install_error_handlers(app)
    args = state.args
    app.add_middleware(RequestGuard, log_requests=bool(args.api_log))  # body size/depth limits for every route
    if args.cors_allow_origins or args.cors_allow_origins_regex:  # outermost: refusals carry CORS headers too
        origins = [o.strip() for o in (args.cors_allow_origins or "").split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=args.cors_allow_origins_regex,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    if args.api or args.nowebui:
        app.include_router(api.create_router(state))
    app.include_router(api.create_internal_router(state))  # A1111's /internal/progress, with or without --api
    for part in state.extension_parts:  # served without --api as in A1111, but behind --api-auth (A1111 forgets it)
        for router in part.public_routers:
            app.include_router(router, dependencies=api.auth_dependencies(args.api_auth))
    if not args.nowebui:  # the Extra Networks panel's read-only routes (thumbnails, cards), public as in A1111
        from modules.ui import extra_networks_routes

        app.include_router(extra_networks_routes.create_router(state))
    if not args.nowebui:
        import gradio as gr

        from modules.ui.txt2img import create_ui

        blocks = create_ui(state).queue(default_concurrency_limit=None)
        app = gr.mount_gradio_app(app, blocks, path="/", auth=_gradio_auth(args), footer_links=["api", "settings"],
                                  root_path=args.subpath)
    return app


def _gradio_auth(args) -> list[tuple[str, str]] | None:
    text = args.gradio_auth or ""
    if args.gradio_auth_path:
        with open(args.gradio_auth_path, encoding="utf-8") as f:
            text += "," + f.read().replace("\n", ",")
    pairs = [tuple(item.strip().split(":", 1)) for item in text.split(",") if ":" in item]
    return [(user, password) for user, password in pairs] or None


def serve(app, state) -> int:
    """Serve with uvicorn on A1111's host and port rules; returns the exit code."""
    import uvicorn

    args = state.args
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or (7861 if args.nowebui else 7860)
    config = uvicorn.Config(app, host=host, port=port, timeout_keep_alive=args.timeout_keep_alive,
                            log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    server = uvicorn.Server(config)
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"

    def announce() -> None:  # once uvicorn really listens
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            logger.info("Running on local URL: %s", url)
            if args.autolaunch and not args.nowebui:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True, name="announce").start()
    server.run()
    state.queue.shutdown(interrupt=state.job.interrupt)  # queued jobs are dropped, the running one stops
    return 0


if __name__ == "__main__":
    sys.exit(main())
