"""Names from requests, resolved only inside their own library (see :mod:`modules.api.safety` for the rules).

One function per kind of name; each refuses a path-shaped name (422), an unknown one (404, except prompt
networks, which A1111 reports in the job's info instead), and a listed file that links out of its library and
the data dir (403). They read listings only: nothing outside a library is ever opened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from modules import extra_networks
from modules.api.safety import NotFoundError, OutsideLibraryError, check_inside, check_name
from modules.state import AppState

#: Settings whose value is a folder the server writes into.
FOLDER_SETTINGS = ("outdir_samples", "outdir_txt2img_samples", "outdir_txt2img_grids")
NETWORK_KINDS = ("lora", "lyco", "hypernet")


def checkpoint(state: AppState, name: object, field: str = "sd_model_checkpoint") -> None:
    """A checkpoint title/name/hash, as ``ModelManager.find`` resolves it (404 listing the known ones)."""
    check_name(field, name)
    info = state.models.find(str(name))
    allowed = [state.models.extra_ckpt] if state.models.extra_ckpt is not None else []
    check_inside(field, str(name), info.path, [state.paths.data_dir, state.models.ckpt_dir], allowed)


def vae(state: AppState, name: object, field: str = "sd_vae") -> None:
    """``Automatic``, ``None`` or a VAE file name from the VAE listing."""
    check_name(field, name)
    if name in ("Automatic", "None"):
        return
    for entry in state.models.vaes:
        if entry.name == name:
            check_inside(field, str(name), entry.path, [state.paths.data_dir, state.models.vae_dir, state.models.ckpt_dir])
            return
    known = ", ".join(v.name for v in state.models.vaes) or "none in models/VAE"
    raise NotFoundError(f"VAE {name!r} not found; choose Automatic, None or one of: {known}")


def output_folder(state: AppState, key: str, value: object) -> None:
    """A folder setting sent over HTTP must stay inside the data dir (set others in config.json)."""
    if not isinstance(value, str) or not value:
        return
    if "\x00" in value:
        check_name(key, value)
    base = state.paths.data_dir.resolve()
    target = (base / value).resolve()
    if target != base and base not in target.parents:
        raise OutsideLibraryError(f"{key} {value!r} is outside the data dir {base}; over the API, output folders "
                                  "must be inside it (set other folders in config.json or the UI)")


def settings(state: AppState, values: Mapping[str, object]) -> None:
    """Every name-carrying setting in ``values`` (``POST /options`` or a job's ``override_settings``)."""
    if "sd_model_checkpoint" in values and values["sd_model_checkpoint"] not in ("", None):
        checkpoint(state, values["sd_model_checkpoint"])
    if "sd_vae" in values:
        vae(state, values["sd_vae"])
    for key in FOLDER_SETTINGS:
        if key in values:
            output_folder(state, key, values[key])


def prompt_networks(state: AppState, prompts: Iterable[str]) -> None:
    """``<lora:NAME>``, ``<lyco:NAME>`` and ``<hypernet:NAME>`` tags: names checked, found files inside."""
    for prompt in prompts:
        _, data = extra_networks.parse_prompt(prompt or "")
        for kind, tags in data.items():
            for tag in tags:
                name = tag.items[0] if tag.items else ""
                field = f"<{kind}:...> network name"
                check_name(field, name)
                if kind in ("lora", "lyco"):
                    _lora_inside(state, name, field)
                elif kind == "hypernet":
                    _hypernet_inside(state, name, field)


def _lora_inside(state: AppState, name: str, field: str) -> None:
    library = state.libraries.get("lora")
    entry = library.find(name) if library is not None else None  # type: ignore[attr-defined]
    if entry is not None:
        check_inside(field, name, entry.path, [state.paths.data_dir, *library.dirs])  # type: ignore[attr-defined]


def _hypernet_inside(state: AppState, name: str, field: str) -> None:
    library = state.libraries.get("hypernet")
    path = library.find(name) if library is not None else None  # type: ignore[attr-defined]
    if path is not None:
        check_inside(field, name, path, [state.paths.data_dir, library.folder])  # type: ignore[attr-defined]


def prompt_embeddings(state: AppState, prompts: Iterable[str]) -> None:
    """Loaded embeddings named in the prompts must be files inside the embeddings folder or the data dir.

    Run on the job's worker after the embeddings were refreshed. The match is by name, case-insensitive, between
    non-word characters: wider than CLIP's token match, so it never misses one.
    """
    database = state.embeddings
    if database is None:
        return
    text = "\n".join(p or "" for p in prompts).lower()
    roots = [state.paths.data_dir, database.folder]
    for name, embedding in list(database.loaded.items()):
        if re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text):
            check_inside("embedding", name, Path(embedding.path), roots)


def refresh_embeddings(state: AppState, force: bool = False) -> None:
    """Bring the embedding list up to date for the current model (run it on the queue's worker)."""
    model = state.models.current
    if state.embeddings is not None and model is not None:
        state.embeddings.refresh(model.pipe.text_encoder.config.hidden_size, force=force)
