"""A1111's training routes: ``POST /sdapi/v1/create/embedding``, ``/create/hypernetwork``, ``/train/embedding``,
``/train/hypernetwork``.

Bodies are A1111's: the keyword arguments of its ``create_embedding``/``create_hypernetwork``/``train_embedding``/
``train_hypernetwork`` functions (``embedding_name``, ``learn_rate``, ``data_root``, ``training_width``, ``varsize``,
``save_embedding_every``, ``template_filename``, ...). Answers are ``{"info": "..."}`` with A1111's texts, and, as
in A1111, a creation or training that fails answers 200 with the error in ``info`` (``create embedding error: ...``,
``train embedding complete: filename: ... error: ...``). Before anything runs, as everywhere in this API: names
shaped like paths are refused (422), a log directory outside the data dir is refused (403), unknown keys are
refused (422). Every creation and training runs on the app's one job queue, so ``/sdapi/v1/progress`` shows it.

Difference: A1111 answers ``/train/hypernetwork`` with "train embedding complete"; we say "train hypernetwork".
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from modules.api import resolve
from modules.api.safety import NameRefusedError, check_name
from modules.state import AppState
from modules.training import embedding_trainer, hypernetwork_trainer
from modules.training.runner import TrainSettings

logger = logging.getLogger(__name__)

#: A1111 request key → :class:`TrainSettings` field (keys that are the same are not listed).
_SETTING_KEYS = {"training_width": "width", "training_height": "height", "template_filename": "template_file",
                 "save_embedding_every": "save_every", "save_hypernetwork_every": "save_every"}
_SETTING_FIELDS = set(TrainSettings.__dataclass_fields__)
#: A1111 keys accepted and not used (``preview_sampler_index``: the index form of older versions; the name is used).
_IGNORED_KEYS = {"id_task", "preview_sampler_index"}
_INTS = {"batch_size", "gradient_step", "width", "height", "steps", "create_image_every", "save_every",
         "preview_steps", "preview_seed", "preview_width", "preview_height"}
_FLOATS = {"tag_drop_out", "preview_cfg_scale"}
_BOOLS = {"varsize", "shuffle_tags", "use_weight", "preview_from_txt2img", "save_image_with_stored_embedding"}
_TEXTS = {"preview_prompt", "preview_negative_prompt", "preview_sampler_name", "preview_scheduler"}
_CREATE_EMBEDDING_KEYS = {"name", "num_vectors_per_token", "overwrite_old", "init_text"}
_CREATE_HYPERNETWORK_KEYS = {"name", "enable_sizes", "overwrite_old", "layer_structure", "activation_func",
                             "weight_init", "add_layer_norm", "use_dropout", "dropout_structure"}


class CreateResponse(BaseModel):
    info: str


class TrainResponse(BaseModel):
    info: str


def _check_keys(args: dict[str, Any], allowed: set[str], route: str) -> None:
    unknown = sorted(set(args) - allowed - _IGNORED_KEYS)
    if unknown:
        raise NameRefusedError(f"{route}: unknown argument(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(allowed))}")


def settings_from_request(state: AppState, args: dict[str, Any], name_key: str) -> TrainSettings:
    """A1111's train_* keyword arguments → :class:`TrainSettings` (422/403 for unknown keys or an outside log dir)."""
    allowed = _SETTING_FIELDS | set(_SETTING_KEYS) | {name_key}
    allowed -= {"width", "height", "template_file", "save_every", "seed", "write_csv_every", "save_optimizer_state"}
    _check_keys(args, allowed | {"seed"}, f"train {name_key.removesuffix('_name')}")
    values = {_SETTING_KEYS.get(k, k): v for k, v in args.items() if k != name_key and k not in _IGNORED_KEYS}
    if "log_directory" in values:
        resolve.output_folder(state, "log_directory", values["log_directory"])
    if "learn_rate" not in values or "data_root" not in values:
        raise NameRefusedError("learn_rate and data_root are required")
    for keys, kind in ((_INTS, int), (_FLOATS, float), (_BOOLS, bool), (_TEXTS, str)):
        for key in keys & set(values):
            try:
                values[key] = kind(values[key])
            except (TypeError, ValueError):
                raise NameRefusedError(f"{key} must be a {kind.__name__}; got {values[key]!r}") from None
    values["learn_rate"] = str(values["learn_rate"])
    values["clip_grad_value"] = str(values.get("clip_grad_value", "0.1"))
    values["data_root"] = str(values["data_root"])
    return TrainSettings(**values)


def add_routes(router: APIRouter, state: AppState, run_job) -> None:
    """Register the four routes on ``router`` (under ``/sdapi/v1``)."""

    @router.post("/create/embedding", response_model=CreateResponse)
    async def create_embedding(args: dict[str, Any]) -> CreateResponse:
        _check_keys(args, _CREATE_EMBEDDING_KEYS, "create/embedding")
        check_name("name", args.get("name", ""))
        try:
            path = await run_job(_create_embedding, state, args)
        except ValueError as e:
            return CreateResponse(info=f"create embedding error: {e}")
        return CreateResponse(info=f"create embedding filename: {path}")

    @router.post("/create/hypernetwork", response_model=CreateResponse)
    async def create_hypernetwork(args: dict[str, Any]) -> CreateResponse:
        _check_keys(args, _CREATE_HYPERNETWORK_KEYS, "create/hypernetwork")
        check_name("name", args.get("name", ""))
        try:
            path = await run_job(_create_hypernetwork, state, args)
        except ValueError as e:
            return CreateResponse(info=f"create hypernetwork error: {e}")
        return CreateResponse(info=f"create hypernetwork filename: {path}")

    @router.post("/train/embedding", response_model=TrainResponse)
    async def train_embedding(args: dict[str, Any]) -> TrainResponse:
        name = check_name("embedding_name", args.get("embedding_name", ""))
        settings = settings_from_request(state, args, "embedding_name")
        return await _train(run_job, "embedding", embedding_trainer.train_embedding, state, name, settings)

    @router.post("/train/hypernetwork", response_model=TrainResponse)
    async def train_hypernetwork(args: dict[str, Any]) -> TrainResponse:
        name = check_name("hypernetwork_name", args.get("hypernetwork_name", ""))
        settings = settings_from_request(state, args, "hypernetwork_name")
        return await _train(run_job, "hypernetwork", hypernetwork_trainer.train_hypernetwork, state, name, settings)


async def _train(run_job, kind: str, fn, state: AppState, name: str, settings: TrainSettings) -> TrainResponse:
    filename, error = "", None
    try:
        result = await run_job(fn, state, name, settings)
        filename = str(result.final_path)
    except Exception as e:  # noqa: BLE001 — A1111 reports every training failure in the answer's text
        logger.warning("train %s %s failed: %s", kind, name, e)
        error = e
    return TrainResponse(info=f"train {kind} complete: filename: {filename} error: {error}")


def _create_embedding(state: AppState, args: dict[str, Any]):
    return embedding_trainer.create_embedding(
        state, str(args.get("name", "")), int(args.get("num_vectors_per_token", 1)),
        bool(args.get("overwrite_old", False)), str(args.get("init_text", "*") or ""))


def _create_hypernetwork(state: AppState, args: dict[str, Any]):
    kwargs = {k: v for k, v in args.items() if k in _CREATE_HYPERNETWORK_KEYS and k != "name"}
    if "enable_sizes" not in kwargs:
        kwargs["enable_sizes"] = hypernetwork_trainer.DEFAULT_SIZES
    return hypernetwork_trainer.create_hypernetwork(state, str(args.get("name", "")), **kwargs)
