"""Build the :class:`AppState` from parsed flags and choose the checkpoint to start with.

With no checkpoint present, A1111 downloads SD 1.5 unless ``--no-download-sd-model``. We try the same
download; when it cannot work (offline, or refused) we fall back to the demo model and say so
visibly (log and a notice at the top of the UI). ``--demo`` goes straight to the demo model.

The demo model is the tiny checkpoint trained on coloured shapes that ships in ``models/demo`` (see
docs/demo_model.md): it is checked against its ``.sha256`` and copied into the checkpoint folder, as A1111's
download would put SD 1.5 there. Only if those files are missing or damaged is the random-weight tiny model
(the tests' fixture) generated instead, and the notice says so.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from modules import demo_model, extensions
from modules.devices import choose_policy
from modules.hashes import HashCache
from modules.hypernetworks.extra_network import ExtraNetworkHypernet
from modules.hypernetworks.library import HypernetworkLibrary
from modules.options import Options
from modules.paths import Paths
from modules.sd_models import CheckpointInfo, ModelManager
from modules.state import AppState
from modules.textual_inversion.database import EmbeddingDatabase

logger = logging.getLogger(__name__)

SD15_URL = ("https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/"
            "v1-5-pruned-emaonly.safetensors")
SD15_FILE = "v1-5-pruned-emaonly.safetensors"
SD15_SHORTHASH = "6ce0161689"  # the "Model hash" every SD 1.5 infotext carries


def build_state(args: argparse.Namespace) -> AppState:
    """Paths, settings, device policy and the checkpoint list; nothing is loaded yet."""
    paths = Paths.from_args(args)
    paths.create_dirs()
    opts = Options(paths.settings_file, frozen=args.freeze_settings)
    opts.load()
    policy = choose_policy(args)
    hashes = HashCache(paths.cache_file)
    extra = Path(args.ckpt).expanduser().resolve() if args.ckpt else None
    models = ModelManager(paths.ckpt_dir, paths.vae_dir, extra, policy, hashes, no_hashing=args.no_hashing)
    models.cache_limit = int(opts["sd_checkpoints_limit"])
    models.refresh()
    logger.info("Device: %s", policy.describe())
    embeddings = EmbeddingDatabase(paths.embeddings_dir, hashes)
    state = AppState(args=args, paths=paths, opts=opts, policy=policy, hashes=hashes, models=models,
                     embeddings=embeddings)
    hypernetworks = HypernetworkLibrary(paths.hypernetwork_dir, hashes)
    state.libraries["hypernet"] = hypernetworks
    state.networks.register(ExtraNetworkHypernet(hypernetworks))
    state.extension_parts = extensions.register_builtin(state)
    return state


def choose_startup_checkpoint(state: AppState, download_url: str = SD15_URL) -> CheckpointInfo:
    """The checkpoint to load at start, making one available when there is none (download, else demo)."""
    args, models = state.args, state.models
    if args.demo:
        return _use_demo(state, "Demo mode (--demo)")
    if models.extra_ckpt is not None:
        for info in models.checkpoints:
            if info.path == models.extra_ckpt:
                return info
        state.notices.append(f"--ckpt {args.ckpt} does not exist; it was ignored.")
        logger.warning(state.notices[-1])
    if models.checkpoints:
        wanted = str(state.opts["sd_model_checkpoint"] or "")
        if wanted:
            try:
                return models.find(wanted)
            except LookupError:
                logger.warning("Checkpoint %r from the settings is gone; using the first one found.", wanted)
        return models.checkpoints[0]
    if args.no_download_sd_model:
        return _use_demo(state, "No checkpoint in models/Stable-diffusion and --no-download-sd-model is set",
                         f"Put an SD 1.5 .safetensors file in {state.paths.ckpt_dir} and press refresh.")
    try:
        path = download_checkpoint(download_url, state.paths.ckpt_dir / SD15_FILE, SD15_SHORTHASH)
    except (OSError, ValueError) as e:
        return _use_demo(state, f"No checkpoint in models/Stable-diffusion, and SD 1.5 could not be downloaded "
                                f"({e})", f"Put an SD 1.5 .safetensors file in {state.paths.ckpt_dir} and press refresh.")
    models.refresh()
    return models.find(path.name)


def _use_demo(state: AppState, reason: str, advice: str = "") -> CheckpointInfo:
    """Install and pick the trained demo model (or, if its shipped files are damaged, the random one); tell why."""
    try:
        path = demo_model.install_trained_demo(state.paths.ckpt_dir)
        what = ("the demo model trained on coloured shapes is loaded (a tiny model: it draws one coloured circle, "
                "square, triangle or star on a plain background, e.g. \"a red circle on a blue background\")")
        what += _install_demo_networks(state)
    except (demo_model.DemoModelError, OSError) as e:
        path = demo_model.ensure_demo_checkpoint(state.paths.ckpt_dir)
        what = (f"the shipped demo model is unusable ({e}), so the tiny demo model with random weights is loaded "
                "(its images are noise)")
    notice = f"{reason}: {what}." + (f" {advice}" if advice else "")
    state.models.refresh()
    logger.warning(notice)
    state.notices.append(notice)
    return state.models.find(path.name)


def _install_demo_networks(state: AppState) -> str:
    """Copy the shipped demo LoRA, embedding and hypernetwork into the user's folders; the notice's addition.

    Checksum-verified, like the demo model; a card the user edited is kept. A failure costs only the demo networks.
    """
    from modules.training.demo_networks import install_demo_networks

    try:
        if not install_demo_networks(state.paths):
            return ""
    except OSError as e:
        logger.warning("The demo networks could not be installed: %s", e)
        return ""
    for library in state.libraries.values():
        library.refresh()
    return ("; the demo LoRA, embedding and hypernetwork (demo-stars, demo-sunset, demo-warm) are in the Extra "
            "Networks panel")


def download_checkpoint(url: str, dest: Path, shorthash: str | None, timeout: float = 20.0) -> Path:
    """Download ``url`` to ``dest`` through a ``.part`` file, checking the sha256 prefix when given.

    Raises:
        OSError: network failure (no connection, HTTP error).
        ValueError: the file's hash is not the expected one (the partial file is removed).
    """
    logger.info("Downloading %s to %s", url, dest)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError):
        part.unlink(missing_ok=True)
        raise
    if shorthash and not digest.hexdigest().startswith(shorthash):
        part.unlink(missing_ok=True)
        raise ValueError(f"downloaded file has sha256 {digest.hexdigest()[:10]}, expected {shorthash}")
    part.replace(dest)
    return dest
