"""Read one textual-inversion embedding file, in every layout A1111 accepts.

| File | Layout |
|---|---|
| ``.pt`` / ``.bin`` | A1111 / original TI: ``{"string_to_param": {"*": (n, C)}, "name", "step", ...}`` (one entry) |
| ``.bin`` / ``.pt`` | diffusers concept: ``{"<token>": (C,) or (n, C)}`` (one key) |
| ``.safetensors`` | ``{"emb_params": (n, C)}`` or any other single tensor; SDXL ``{"clip_g", "clip_l"}`` |
| ``.png`` / ``.webp`` / ``.jxl`` / ``.avif`` | A1111's ``sd-ti-embedding`` text chunk, else pixel-embedded data |

The rules are A1111's: the name is the file stem, except for images, whose stored ``name`` wins; an image that
carries no embedding (or is named ``*.preview.png``) is simply not an embedding. Pickles are read with
``torch.load(weights_only=True)``: a file that asks to build anything but tensors and inert containers is refused
before any of it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
IMAGE_SUFFIXES = (".png", ".webp", ".jxl", ".avif")
EMBEDDING_SUFFIXES = PICKLE_SUFFIXES + SAFETENSORS_SUFFIXES + IMAGE_SUFFIXES

#: Layout names reported in :attr:`EmbeddingData.layout`.
LAYOUT_A1111 = "textual_inversion"
LAYOUT_SINGLE_TENSOR = "diffusers"
LAYOUT_SDXL = "sdxl"


class EmbeddingFileError(ValueError):
    """An embedding file cannot be used; the message names the file and says why, for the user."""


@dataclass(frozen=True, eq=False)
class EmbeddingData:
    """The content of one embedding file.

    ``vectors`` is ``(n, C)`` float32 on the CPU. For SDXL files it is ``clip_g ‖ clip_l`` along C (1280 + 768 =
    2048, A1111's "shape"), which is what lets a width check skip them on SD1.
    """

    name: str
    vectors: torch.Tensor
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    layout: str = LAYOUT_A1111


def is_preview_image(path: Path) -> bool:
    """``x.preview.png`` and friends: Extra Networks thumbnails, never embeddings."""
    return path.suffix.lower() in IMAGE_SUFFIXES and Path(path.stem).suffix.lower() == ".preview"


def is_candidate(path: Path) -> bool:
    """Whether the database should look at ``path`` at all (a known suffix, not a preview image)."""
    return path.suffix.lower() in EMBEDDING_SUFFIXES and not is_preview_image(path)


def read_embedding_file(path: Path) -> EmbeddingData | None:
    """Read an embedding file; ``None`` when it is an image that carries no embedding (or a preview image).

    Raises:
        EmbeddingFileError: unreadable, corrupt, unsafe, of an unknown layout, or holding several tokens.
    """
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if is_preview_image(path):
            return None
        data = _read_image(path)
        if data is None:
            return None
        if not isinstance(data, dict):
            raise EmbeddingFileError(f"{path.name}: the data stored in the image is not a dictionary; "
                                     "it is not an A1111 embedding image.")
        stored_name = data.get("name")
        name = stored_name if isinstance(stored_name, str) and stored_name.strip() else path.stem
        return embedding_from_data(data, name, path.name)
    if suffix in SAFETENSORS_SUFFIXES:
        return embedding_from_data(_read_safetensors(path), path.stem, path.name)
    if suffix in PICKLE_SUFFIXES:
        return embedding_from_data(_read_pickle(path), path.stem, path.name)
    raise EmbeddingFileError(f"{path.name}: {path.suffix or 'no'} extension; embeddings are "
                             f"{', '.join(EMBEDDING_SUFFIXES)} files.")


def embedding_from_data(data: object, name: str, filename: str) -> EmbeddingData:
    """Recognise A1111's layouts in a loaded file's content, in A1111's order.

    1. ``string_to_param`` (A1111 and the original TI code): exactly one entry.
    2. ``clip_g`` and ``clip_l``: SDXL.
    3. a dictionary whose first value is a tensor: diffusers concept / ``emb_params``; exactly one key.
    """
    if not isinstance(data, Mapping):
        raise EmbeddingFileError(f"{filename} holds a {type(data).__name__}, not an embedding dictionary.")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # an nn.ParameterDict in files from the original TI code
        if not isinstance(params, Mapping) or not params:
            raise EmbeddingFileError(f"{filename}: 'string_to_param' holds no tensor.")
        _require_one(params, filename)
        vectors, layout = _as_vectors(next(iter(params.values())), filename), LAYOUT_A1111
    elif "clip_g" in data and "clip_l" in data:
        vectors, layout = _sdxl_vectors(data, filename), LAYOUT_SDXL
    elif data and isinstance(next(iter(data.values())), torch.Tensor):
        _require_one(data, filename)
        vectors, layout = _as_vectors(next(iter(data.values())), filename), LAYOUT_SINGLE_TENSOR
    else:
        keys = ", ".join(repr(k) for k in list(data)[:6]) or "nothing"
        raise EmbeddingFileError(
            f"{filename} is not a textual-inversion embedding: no 'string_to_param', no SDXL 'clip_g'/'clip_l' and no "
            f"single token tensor (it holds {keys}). It may be a LoRA, a hypernetwork or a checkpoint; those belong in "
            "their own folders.")
    return EmbeddingData(
        name=name, vectors=vectors, step=_as_int(data.get("step")), sd_checkpoint=_as_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_as_str(data.get("sd_checkpoint_name")), layout=layout)


def to_a1111_dict(data: EmbeddingData) -> dict:
    """The dictionary A1111 saves in an embedding ``.pt`` (and stores in embedding images) for ``data``."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": data.vectors},
        "name": data.name,
        "step": data.step,
        "sd_checkpoint": data.sd_checkpoint,
        "sd_checkpoint_name": data.sd_checkpoint_name,
    }


def _require_one(entries: Mapping, filename: str) -> None:
    if len(entries) != 1:
        keys = ", ".join(repr(k) for k in list(entries)[:6])
        raise EmbeddingFileError(
            f"{filename} holds {len(entries)} entries ({keys}); an embedding file must hold exactly one token. "
            "Split it into one file per token.")


def _as_vectors(value: object, filename: str) -> torch.Tensor:
    """A token's tensor as ``(n, C)`` float32 on the CPU; a 1-D tensor is one vector."""
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{filename}: the token's value is a {type(value).__name__}, not a tensor.")
    if value.dtype == torch.bool or value.is_complex():
        raise EmbeddingFileError(f"{filename}: the token's tensor holds {value.dtype} values, not numbers.")
    tensor = value.detach()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise EmbeddingFileError(f"{filename}: the token's tensor has shape {tuple(value.shape)}, "
                                 "not (vectors, width).")
    return tensor.to(device="cpu", dtype=torch.float32).contiguous()


def _sdxl_vectors(data: Mapping, filename: str) -> torch.Tensor:
    clip_g, clip_l = _as_vectors(data["clip_g"], filename), _as_vectors(data["clip_l"], filename)
    if clip_g.shape[0] != clip_l.shape[0]:
        raise EmbeddingFileError(f"{filename}: SDXL embedding with {clip_g.shape[0]} clip_g vectors but "
                                 f"{clip_l.shape[0]} clip_l vectors.")
    return torch.cat([clip_g, clip_l], dim=1)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _as_str(value: object) -> str | None:
    return None if value is None else str(value)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from modules.model_loading import ModelFileError, read_state_dict

    try:
        return read_state_dict(path)
    except ModelFileError as e:
        raise EmbeddingFileError(str(e)) from e


def _read_pickle(path: Path) -> object:
    """The whole pickled object (``read_state_dict`` would keep only top-level tensors and lose A1111's nested
    ``string_to_param`` with its ``step``/checkpoint fields), through the one safe pickle reader."""
    from modules.model_loading import ModelFileError, read_pickle_object

    try:
        return read_pickle_object(path, kind="embedding")
    except ModelFileError as e:
        raise EmbeddingFileError(str(e)) from e


def _read_image(path: Path) -> object | None:
    from PIL import Image, UnidentifiedImageError

    from modules.textual_inversion import image_embedding

    try:
        with Image.open(path) as image:
            image.load()
            return image_embedding.read_image_data(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise EmbeddingFileError(f"{path.name} is not a readable image ({_first_line(e)}).") from e
    except ValueError as e:  # bad base64, JSON or tensor lists in the stored data
        raise EmbeddingFileError(f"{path.name}: the embedding data stored in the image is damaged ({_first_line(e)}).") from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
