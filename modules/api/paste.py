"""Infotext coming in over the API: ``/png-info`` and txt2img's ``infotext`` field (A1111 §10 steps 8–9).

* :func:`parameters` is :func:`modules.infotext.parse` plus A1111's paste hooks of the LoRA extension: a
  ``<lora:ALIAS:`` whose alias is listed in ``Lora hashes`` is renamed to the local network with that short hash
  (renamed files still resolve), and old kohya ``AddNet Model N`` fields become ``<lora:name:weight>`` tags.
* :func:`apply_to_request` fills the txt2img fields the request did not set from the parsed infotext (pydantic's
  ``model_fields_set`` says which were set), and adds the settings that infotext labels carry to
  ``override_settings`` unless the request already overrides them — A1111's ``apply_infotext``.
* :func:`read_image` decodes a posted image (base64 or a ``data:`` URL) with PIL, limited to picture formats.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from modules import infotext, options
from modules.api.models import Txt2ImgRequest
from modules.state import AppState

logger = logging.getLogger(__name__)

#: (request field, infotext key, type): A1111 1.10's txt2img paste fields that have an ``api`` name.
INFOTEXT_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("prompt", "Prompt", str), ("negative_prompt", "Negative prompt", str), ("steps", "Steps", int),
    ("sampler_name", "Sampler", str), ("scheduler", "Schedule type", str), ("cfg_scale", "CFG scale", float),
    ("seed", "Seed", int), ("width", "Size-1", int), ("height", "Size-2", int), ("batch_size", "Batch size", int),
    ("subseed", "Variation seed", int), ("subseed_strength", "Variation seed strength", float),
    ("seed_resize_from_w", "Seed resize from-1", int), ("seed_resize_from_h", "Seed resize from-2", int),
    ("denoising_strength", "Denoising strength", float), ("hr_scale", "Hires upscale", float),
    ("hr_upscaler", "Hires upscaler", str), ("hr_second_pass_steps", "Hires steps", int),
    ("hr_resize_x", "Hires resize-1", int), ("hr_resize_y", "Hires resize-2", int),
    ("hr_checkpoint_name", "Hires checkpoint", str), ("hr_sampler_name", "Hires sampler", str),
    ("hr_scheduler", "Hires schedule type", str), ("hr_prompt", "Hires prompt", str),
    ("hr_negative_prompt", "Hires negative prompt", str),
)
#: An img2img request's inpainting fields: (field, infotext key, value for each choice) — parsing fills A1111's
#: defaults for the last three (original, whole picture, padding 32), as its paste does.
INPAINT_INFOTEXT_FIELDS: tuple[tuple[str, str, dict[str, object] | type], ...] = (
    ("mask_blur", "Mask blur", int),
    ("inpainting_mask_invert", "Mask mode", {"Inpaint masked": 0, "Inpaint not masked": 1}),
    ("inpainting_fill", "Masked content", {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}),
    ("inpaint_full_res", "Inpaint area", {"Whole picture": False, "Only masked": True}),
    ("inpaint_full_res_padding", "Masked area padding", int),
)
#: A1111 skips the checkpoint while ``disable_weights_auto_swap`` is on (its default; we have no such option).
SKIPPED_OVERRIDES = frozenset({"Model hash"})
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: ``image.info`` keys A1111 leaves out of png-info's ``items``.
IGNORED_INFO_KEYS = frozenset({"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop",
                               "background", "timestamp", "duration", "progressive", "progression", "icc_profile",
                               "chromaticity", "photoshop"})

_LORA_ALIAS = re.compile(r"<lora:([^:]+):")
_ADDNET_NAME = re.compile(r"(.*)\s*\([0-9a-fA-F]+\)")


class ImageDecodeError(ValueError):
    """A posted image that is not a readable picture (answered 422)."""


def parameters(state: AppState, text: str) -> dict[str, object]:
    """A1111's ``parse_generation_parameters`` followed by the LoRA paste hooks."""
    params = infotext.parse(text)
    _lora_alias_fixup(state, params)
    _addnet_fields(params)
    return params


def _lora_alias_fixup(state: AppState, params: dict[str, object]) -> None:
    hashes_text = params.get("Lora hashes")
    library = state.libraries.get("lora")
    if not isinstance(hashes_text, str) or not hashes_text or library is None:
        return
    hashes = {}
    for item in hashes_text.split(","):
        alias, sep, shorthash = item.strip().partition(":")
        if sep:
            hashes[alias.strip().replace(",", "")] = shorthash.strip()

    def replace(match: re.Match[str]) -> str:
        shorthash = hashes.get(match.group(1))
        entry = library.by_shorthash(shorthash) if shorthash else None  # type: ignore[attr-defined]
        return f"<lora:{library.get_alias(entry)}:" if entry is not None else match.group(0)  # type: ignore[attr-defined]

    params["Prompt"] = _LORA_ALIAS.sub(replace, str(params.get("Prompt", "")))


def _addnet_fields(params: dict[str, object]) -> None:
    added = []
    for key in list(params):
        if not key.startswith("AddNet Model "):
            continue
        number = key[len("AddNet Model "):]
        if params.get(f"AddNet Module {number}") != "LoRA" or params.get(key) is None:
            continue
        name = str(params[key])
        match = _ADDNET_NAME.match(name)
        if match:
            name = match.group(1)
        added.append(f"<lora:{name}:{params.get(f'AddNet Weight A {number}', '1.0')}>")
    if added:
        params["Prompt"] = f"{params.get('Prompt', '')}\n{''.join(added)}"


def _cast(value: object, kind: type | dict[str, object], field: str) -> object:
    """An infotext value as the request field's type; ``kind`` a dict: the value its choice stands for."""
    if isinstance(kind, dict):
        if str(value) not in kind:
            raise ValueError(f"infotext: {field} must be one of {', '.join(kind)}; got {value!r}")
        return kind[str(value)]
    try:
        if kind is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
                raise ValueError
            return int(number)  # type: ignore[arg-type]
        if kind is float:
            number = float(value)  # type: ignore[arg-type]
            if not math.isfinite(number):
                raise ValueError
            return number
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"infotext: {field} needs a {kind.__name__}; got {value!r}") from None


def apply_to_request(state: AppState, request: Txt2ImgRequest) -> dict[str, object]:
    """Fill ``request`` from its ``infotext`` (see the module doc); returns the parsed fields ({} without one)."""
    if not request.infotext:
        return {}
    given = set(request.model_fields_set)
    params = parameters(state, request.infotext)
    img2img = "init_images" in type(request).model_fields  # then its inpainting settings too
    for field, key, kind in INFOTEXT_FIELDS + (INPAINT_INFOTEXT_FIELDS if img2img else ()):
        if field in given or params.get(key) is None:
            continue
        if field == "mask_blur" and given & {"mask_blur_x", "mask_blur_y"}:  # the request's own blur wins
            continue
        setattr(request, field, _cast(params[key], kind, key))
    if "enable_hr" not in given and "Denoising strength" in params and any(
            k in params for k in ("Hires upscale", "Hires upscaler", "Hires resize-1")):
        request.enable_hr = True
    overrides = dict(request.override_settings or {})
    current = state.opts.as_dict()
    for label, setting in infotext.INFOTEXT_TO_OPTION.items():
        if label in params and label not in SKIPPED_OVERRIDES and setting in options.OPTIONS and setting not in overrides:
            value = _setting_value(setting, params[label])
            if setting == "sd_vae" and value is not None:
                value = _listed_vae(state, str(value))
            if value is not None and value != current.get(setting):
                overrides[setting] = value
    request.override_settings = overrides
    return params


def _listed_vae(state: AppState, name: str) -> str | None:
    """The listed VAE an infotext's ``VAE: name`` (a file name or stem) means; None (ignored) when there is none."""
    for entry in state.models.vaes:
        if name in (entry.name, Path(entry.name).stem, Path(entry.name).with_suffix("").stem):
            return entry.name
    logger.info("infotext names VAE %r, which is not here; ignored", name)
    return None


def _setting_value(setting: str, value: object) -> object | None:
    """An infotext value as the setting's type, or None when it does not fit (A1111 ignores those too)."""
    if isinstance(options.OPTIONS[setting].default, bool) and isinstance(value, str):
        value = value.strip().lower() == "true"
    try:
        return options.validate(setting, value)
    except (KeyError, ValueError):
        logger.warning("infotext value %r for setting %s ignored", value, setting)
        return None


def read_image(encoded: str) -> Image.Image:
    """A posted image: base64 text or a ``data:image/...;base64,`` URL. URLs to fetch are refused (offline)."""
    text = encoded.strip()
    if text.startswith(("http://", "https://")):
        raise ImageDecodeError("images are not fetched from URLs here; send the image itself as base64")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError(f"image is not valid base64 ({e})") from None
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"image is not a picture PIL can read as {', '.join(IMAGE_FORMATS)} ({e})") from None
    return image


def read_picture(encoded: object, field: str) -> Image.Image:
    """A posted picture to generate from (:func:`read_image`), fully decoded now, so that a truncated or corrupt
    file is refused with the field's name before any job is queued."""
    if not isinstance(encoded, str) or not encoded.strip():
        raise ImageDecodeError(f"{field} is empty; send a base64 PNG, JPEG or WEBP")
    try:
        image = read_image(encoded)
        image.load()
    except ImageDecodeError as e:
        raise ImageDecodeError(f"{field}: {e}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{field}: the picture cannot be decoded ({e})") from None
    return image


def info_items(image: Image.Image) -> dict[str, Any]:
    """``image.info`` without the infotext and A1111's ignored keys, made JSON-safe (png-info's ``items``)."""
    items: dict[str, Any] = {}
    for key, value in (image.info or {}).items():
        if key == "parameters" or key in IGNORED_INFO_KEYS or not isinstance(key, str):
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, (tuple, list)):
            value = [v if isinstance(v, (str, int, bool)) or (isinstance(v, float) and math.isfinite(v)) else str(v)
                     for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        if isinstance(value, (str, int, float, bool, list)):
            items[key] = value
    return items
