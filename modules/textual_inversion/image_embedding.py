"""Embedding data carried inside an image, in A1111's two layouts (read both, write both).

A1111's training tab saves "images with the embedding in them" so that a single PNG can be shared and dropped into
``embeddings/``. The embedding's dictionary (the same one its ``.pt`` holds) is serialised as JSON in which every
tensor becomes ``{"TORCHTENSOR": nested list}``, and stored twice:

* **text chunk**: PNG ``tEXt`` chunk ``sd-ti-embedding`` = base64 of that JSON. Lost when an image host re-encodes.
* **pixels**: the zlib'd JSON (level 9) is split into high and low nibbles; each nibble plane is padded (cyclically,
  like ``numpy.resize``) to a whole number of rows × 3 channels for the image's height, decorated with a dot
  pattern in the high nibble (greys taken from the embedding's first vector) and XOR-ed in the low nibble with an
  LCG stream (a=1664525, c=1013904223, m=2**32, seed 0, value = state % 255, masked to 4 bits). The low plane is
  pasted left of the picture and the high plane right of it, each behind a 1-px black column. Decoding crops black
  borders, keeps low nibbles, finds the black columns and undoes the XOR — so it survives anything lossless.

The byte layout must stay A1111's exactly, or images shared since 2022 stop loading; the LCG is checked against the
reference values published in A1111's ``image_embedding.py``.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

logger = logging.getLogger(__name__)

#: Name of the PNG text chunk A1111 writes and reads.
TEXT_CHUNK = "sd-ti-embedding"
_TENSOR_KEY = "TORCHTENSOR"
_LCG_A, _LCG_C, _LCG_M = 1664525, 1013904223, 2**32
_CHANNELS = 3
_STYLE_LENGTH = 1024  # A1111 takes at most this many values of the first vector for the dot greys
#: Refuse pixel data that inflates beyond this (a real embedding's JSON is a few MB at most): zip-bomb guard.
MAX_JSON_BYTES = 64 << 20


# --- JSON with tensors ----------------------------------------------------------------------------------------


def _tensor_to_json(obj: object) -> object:
    """``json.dumps`` hook: a tensor becomes ``{"TORCHTENSOR": nested list}`` (float32 values as Python floats)."""
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
            tensor = tensor.float()
        return {_TENSOR_KEY: tensor.numpy().tolist()}
    raise TypeError(f"{type(obj).__name__} cannot be stored in an embedding image")


def _json_to_tensor(obj: dict) -> object:
    """``json.loads`` hook: ``{"TORCHTENSOR": nested list}`` back to a (float64 or int64) tensor, as A1111 does."""
    if _TENSOR_KEY not in obj:
        return obj
    array = np.array(obj[_TENSOR_KEY])  # ragged lists raise ValueError
    if array.dtype.kind not in "iuf":
        raise ValueError(f"a stored tensor holds {array.dtype} values, not numbers")
    return torch.from_numpy(array)


def dumps(data: Mapping) -> str:
    """The JSON text A1111 stores for an embedding dictionary (default separators, tensors as nested lists)."""
    return json.dumps(data, default=_tensor_to_json)


def loads(text: str | bytes) -> object:
    """Parse stored embedding JSON; tensors come back as tensors. Raises ``ValueError`` when it is not JSON."""
    return json.loads(text, object_hook=_json_to_tensor)


# --- text chunk -------------------------------------------------------------------------------------------------


def embedding_to_b64(data: Mapping) -> str:
    """The value of the ``sd-ti-embedding`` text chunk for ``data``."""
    return base64.b64encode(dumps(data).encode("utf-8")).decode("ascii")


def embedding_from_b64(text: str | bytes) -> object:
    """Decode an ``sd-ti-embedding`` text chunk. Raises ``ValueError`` (bad base64 or JSON)."""
    return loads(base64.b64decode(text))


# --- the LCG and the pixel strips --------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def lcg_stream(count: int) -> np.ndarray:
    """The first ``count`` outputs of A1111's LCG from seed 0 (each ``state % 255``), as a read-only uint8 array.

    Computed by doubling instead of a Python loop: ``state[k + n] = A_n * state[k] + C_n (mod 2**32)``, with
    ``(A_2n, C_2n) = (A_n**2, A_n*C_n + C_n)``. uint64 arithmetic may wrap, which is harmless because 2**32
    divides 2**64.
    """
    states = np.empty(max(count, 1), dtype=np.uint64)
    states[0] = _LCG_C  # (a * 0 + c) % m
    filled, jump_a, jump_c = 1, _LCG_A, _LCG_C
    while filled < count:
        n = min(filled, count - filled)
        states[filled:filled + n] = (np.uint64(jump_a) * states[:n] + np.uint64(jump_c)) % np.uint64(_LCG_M)
        filled += n
        jump_a, jump_c = (jump_a * jump_a) % _LCG_M, (jump_a * jump_c + jump_c) % _LCG_M
    values = (states[:count] % np.uint64(255)).astype(np.uint8)
    values.flags.writeable = False
    return values


def _xor_lcg(block: np.ndarray) -> np.ndarray:
    """XOR a block, in C order, with the low 4 bits of the LCG stream (its own inverse)."""
    noise = (lcg_stream(block.size) & 0x0F).reshape(block.shape)
    return np.bitwise_xor(block.astype(np.uint8), noise)


def _dot_pattern(height: int, width: int, greys: np.ndarray) -> np.ndarray:
    """A1111's strip decoration: 7-px grey dots on an 8-px grid, every other row shifted 4 px; high nibble only.

    Dots are drawn column by column, each taking the next grey from ``greys`` (cycling). Decoding ignores it.
    """
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    index = 0
    for x in range(-6, width, 8):
        for row, y in enumerate(range(-6, height, 8)):
            shift = 4 if row % 2 == 0 else 0
            grey = int(greys[index % len(greys)]) if len(greys) else 0
            index += 1
            draw.ellipse((x + shift, y, x + shift + 6, y + 6), fill=(grey, grey, grey))
    return np.asarray(canvas, dtype=np.uint8) & 0xF0


def _style_greys(data: Mapping) -> np.ndarray:
    """Dot greys: |first vector| (first 1024 values) scaled so its largest value is 255, truncated to uint8."""
    params = data.get("string_to_param")
    if not isinstance(params, Mapping) or not params:
        raise ValueError("pixel-embedding needs A1111's layout: a 'string_to_param' dictionary with one tensor")
    first = next(iter(params.values()))
    row = torch.as_tensor(first).detach().cpu().double().reshape(-1, first.shape[-1])[0][:_STYLE_LENGTH].numpy()
    magnitude = np.abs(row)
    peak = magnitude.max() if magnitude.size else 0.0
    if not peak > 0:  # all zeros (A1111 would divide by zero here); plain black dots instead
        return np.zeros(magnitude.shape, dtype=np.uint8)
    return (magnitude / peak * 255).astype(np.uint8)


def _strip_size(length: int, height: int) -> int:
    """A1111's padded plane size: up to a multiple of ``height`` (always adding), then of ``3 * height`` (same)."""
    size = length + (height - length % height)
    return size + (height * _CHANNELS - size % (height * _CHANNELS))


def insert_pixel_data(image: Image.Image, data: Mapping) -> Image.Image:
    """A new RGB image: ``image`` with ``data`` stored in strips left and right of it (A1111's layout)."""
    payload = np.frombuffer(zlib.compress(dumps(data).encode("utf-8"), level=9), dtype=np.uint8)
    height = image.size[1]
    size = _strip_size(payload.size, height)
    greys = _style_greys(data)
    strips = []
    for plane, pattern_greys in ((payload & 0x0F, greys), (payload >> 4, greys[::-1])):
        block = np.resize(plane, size).reshape(height, -1, _CHANNELS)  # np.resize repeats the data cyclically
        block = block ^ _dot_pattern(height, block.shape[1], pattern_greys)
        strips.append(Image.fromarray(_xor_lcg(block), mode="RGB"))
    low, high = strips
    out = Image.new("RGB", (image.size[0] + low.size[0] + high.size[0] + 2, height), (0, 0, 0))
    out.paste(low, (0, 0))
    out.paste(image.convert("RGB"), (low.size[0] + 1, 0))
    out.paste(high, (low.size[0] + 1 + image.size[0] + 1, 0))
    return out


def _crop_black(pixels: np.ndarray) -> np.ndarray:
    """Drop outer rows and columns in which no pixel has all three channels above zero (A1111's crop)."""
    lit = (pixels > 0).all(axis=2)
    cols, rows = lit.any(axis=0), lit.any(axis=1)
    col_start, col_end = int(cols.argmax()), lit.shape[1] - int(cols[::-1].argmax())
    row_start, row_end = int(rows.argmax()), lit.shape[0] - int(rows[::-1].argmax())
    return pixels[row_start:row_end, col_start:col_end]


def _inflate(raw: bytes) -> bytes:
    """zlib-decompress one stream, ignoring the padding after it; ``zlib.error`` when there is no whole stream."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(raw, MAX_JSON_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"the embedded data inflates beyond {MAX_JSON_BYTES >> 20} MiB; refusing it")
    if not inflater.eof:
        raise zlib.error("incomplete zlib stream")
    return out


def extract_pixel_data(image: Image.Image) -> object | None:
    """The data stored in ``image``'s pixels, or ``None`` when it carries none.

    Raises:
        ValueError: the strips hold a complete zlib stream whose content is not embedding JSON.
    """
    low = _crop_black(np.asarray(image.convert("RGB"), dtype=np.uint8)) & 0x0F
    black = np.flatnonzero(low.sum(axis=(0, 2)) == 0)
    if black.size < 2:
        return None
    lower, upper = low[:, :black.min()], low[:, black.max() + 1:]
    if lower.size == 0 or lower.shape != upper.shape:
        return None
    raw = ((_xor_lcg(upper) << 4) | _xor_lcg(lower)).tobytes()
    try:
        text = _inflate(raw)
    except zlib.error as e:
        logger.debug("No embedding in the pixels of %s (%s).", getattr(image, "filename", "image"), e)
        return None
    return loads(text)


def read_image_data(image: Image.Image) -> object | None:
    """What A1111 reads from an embedding image: the text chunk if present, else the pixel data, else ``None``."""
    text = getattr(image, "text", None)  # PNG only; other formats have no text chunks here
    if isinstance(text, Mapping) and TEXT_CHUNK in text:
        return embedding_from_b64(text[TEXT_CHUNK])
    return extract_pixel_data(image)


def save_embedding_png(path: Path, image: Image.Image, data: Mapping, *, text: bool = True, pixels: bool = True) -> None:
    """Write ``image`` as a PNG carrying ``data`` in a text chunk and/or in pixel strips, as A1111's training does."""
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text(TEXT_CHUNK, embedding_to_b64(data))
    out = insert_pixel_data(image, data) if pixels else image
    out.save(path, "PNG", pnginfo=info)


def caption(image: Image.Image, title: str, left: str, middle: str, right: str) -> Image.Image:
    """A copy of ``image`` captioned as A1111's training captions its embedding images: ``title`` in large type
    at the top and a footer line (``left``, ``middle`` centred, ``right`` right-aligned), white on dark bands that
    fade into the picture, so the card reads at a glance in an image host."""
    out = image.convert("RGB")
    width, height = out.size
    band = max(8, height // 6)
    shade = Image.new("L", (1, band))
    shade.putdata([int(200 * (1 - y / band)) for y in range(band)])  # opaque at the edge, clear inside
    black = Image.new("RGB", (width, band))
    out.paste(black, (0, 0), shade.resize((width, band)))
    out.paste(black, (0, height - band), shade.transpose(Image.Transpose.FLIP_TOP_BOTTOM).resize((width, band)))
    draw = ImageDraw.Draw(out)
    margin = max(2, width // 64)
    title_font = _fitted(draw, [title], band * 2 // 3, width - 2 * margin)
    footer_font = _fitted(draw, [left, middle, right], band // 3, (width - 4 * margin) / 3)
    draw.text((width // 2, band // 2), title, font=title_font, fill="white", anchor="mm")
    baseline = height - margin
    draw.text((margin, baseline), left, font=footer_font, fill="white", anchor="ls")
    draw.text((width // 2, baseline), middle, font=footer_font, fill="white", anchor="ms")
    draw.text((width - margin, baseline), right, font=footer_font, fill="white", anchor="rs")
    return out


def _fitted(draw: ImageDraw.ImageDraw, texts: list[str], size: int, room: float) -> ImageFont.ImageFont:
    """The default font at ``size``, or smaller until each of ``texts`` is at most ``room`` pixels wide."""
    size = max(6, size)
    while True:
        font = ImageFont.load_default(size=size)
        if size <= 6 or all(draw.textlength(text, font=font) <= room for text in texts):
            return font
        size -= 1
