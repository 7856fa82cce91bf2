"""Build and parse A1111's infotext: the "parameters" text stored in every generated image.

Users paste infotexts from other A1111 installs and from sites like Civitai, so both directions follow A1111 1.10
byte for byte (reference §10): ``prompt``, ``Negative prompt: ...``, then one ``Key: value, ...`` line. Everything
here is pure (no app state); the app applies styles, paste hooks and setting overrides on top of :func:`parse`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping

from PIL import Image, PngImagePlugin

log = logging.getLogger(__name__)

PARAMS_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)
"""A1111's fixed key order (``processing.create_infotext``); extra params, Version and User follow."""

INFOTEXT_TO_OPTION: dict[str, str] = {
    "Model hash": "sd_model_checkpoint",  # A1111 skips this one while disable_weights_auto_swap is on (default)
    "VAE": "sd_vae", "Clip skip": "CLIP_stop_at_last_layers", "RNG": "randn_source", "Tiling": "tiling",
    "Face restoration": "face_restoration", "Emphasis": "emphasis",
    "Conditional mask weight": "inpainting_mask_weight", "Noise multiplier": "initial_noise_multiplier",
    "Extra noise": "img2img_extra_noise", "VAE Encoder": "sd_vae_encode_method",
    "VAE Decoder": "sd_vae_decode_method", "NGMS": "s_min_uncond", "NGMS all steps": "s_min_uncond_all",
    "Token merging ratio": "token_merging_ratio", "Token merging ratio hr": "token_merging_ratio_hr",
    "Pad conds": "pad_cond_uncond", "Pad conds v0": "pad_cond_uncond_v0",
    "Old prompt editing timelines": "use_old_scheduling", "Downcast alphas_cumprod": "use_downcasted_alpha_bar",
    "Refiner switch by sampling steps": "refiner_switch_by_sample_steps", "Eta DDIM": "eta_ddim",
    "Eta": "eta_ancestral", "Sigma churn": "s_churn", "Sigma tmin": "s_tmin", "Sigma tmax": "s_tmax",
    "Sigma noise": "s_noise", "Schedule min sigma": "sigma_min", "Schedule max sigma": "sigma_max",
    "Schedule rho": "rho", "ENSD": "eta_noise_seed_delta",
    "Discard penultimate sigma": "always_discard_next_to_last_sigma", "UniPC variant": "uni_pc_variant",
    "UniPC skip type": "uni_pc_skip_type", "UniPC order": "uni_pc_order",
    "UniPC lower order final": "uni_pc_lower_order_final", "Noise Schedule": "sd_noise_schedule",
    "Skip Early CFG": "skip_early_cond", "Beta scheduler alpha": "beta_dist_alpha",
    "Beta scheduler beta": "beta_dist_beta",
}
"""Infotext label -> A1111 setting name, from the ``infotext=`` labels of A1111 1.10's settings."""

NEGATIVE_PREFIX = "Negative prompt:"
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")

# Applied in this order when the key is absent (A1111 1.10 parse_generation_parameters, step 4 of §10).
_DEFAULTS_BEFORE_HIRES_FIX: tuple[tuple[str, object], ...] = (
    ("Hires sampler", "Use same sampler"), ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"), ("Hires prompt", ""), ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"), ("Masked content", "original"), ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_DEFAULTS_AFTER_HIRES_FIX: tuple[tuple[str, object], ...] = (
    ("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0), ("Schedule min sigma", 0),
    ("Schedule rho", 0), ("VAE Encoder", "Full"), ("VAE Decoder", "Full"), ("FP8 weight", "Disable"),
)


# ---------------------------------------------------------------------------------------------------------- build
def quote(value: object) -> str:
    """Write one param value: ``str(value)``, or JSON when it holds ``,``, ``:`` or a newline.

    Like A1111, the value itself is JSON-encoded (a list becomes a JSON array); values JSON cannot encode fall
    back to their ``str``. Without the quotes, such a value would break the ``Key: value, ...`` line apart.
    """
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(text, ensure_ascii=False)


def build(prompt: str, negative_prompt: str, params: Mapping[str, object | None]) -> str:
    """The infotext of one image; ``params`` must already be in A1111's order (see :func:`ordered_params`).

    A value equal to its key is written bare (A1111's flag style); ``None`` values are left out.
    """
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def ordered_params(fixed: Mapping[str, object | None], extra: Mapping[str, object | None], version: str | None,
                   user: str | None = None) -> dict[str, object | None]:
    """A1111's params dict: ``fixed`` keys in :data:`PARAMS_ORDER`, then ``extra`` in insertion order, Version, User.

    Mirrors A1111's dict literal: an ``extra`` key that repeats a fixed key replaces its value in place.
    Raises ValueError for a fixed key A1111 does not have, so a typo cannot silently move a field.
    """
    unknown = [k for k in fixed if k not in PARAMS_ORDER]
    if unknown:
        raise ValueError(f"fixed infotext keys {unknown} are not in PARAMS_ORDER; pass them in `extra` instead")
    result: dict[str, object | None] = {k: fixed[k] for k in PARAMS_ORDER if k in fixed}
    result.update(extra)
    result["Version"] = version
    result["User"] = user
    return result


# ---------------------------------------------------------------------------------------------------------- parse
def parse(text: str, *, backcompat: bool = True, skip_fields: Iterable[str] = ()) -> dict[str, object]:
    """A1111's ``parse_generation_parameters`` without app state (no styles, paste hooks or overrides).

    Values are strings as written (``Size`` gives ``Size-1``/``Size-2``); the defaults A1111 implies for absent
    keys are filled in with A1111's types. ``backcompat`` is A1111's ``auto_backcompat`` option and
    ``skip_fields`` its ``infotext_skip_pasting`` option.
    """
    prompt, negative_prompt, params_line = _split_sections(text)
    res = _parse_params_line(params_line)
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.setdefault("Clip skip", "1")
    if "Hypernet" in res:
        res["Prompt"] = f"{prompt}<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, value in _DEFAULTS_BEFORE_HIRES_FIX:
        res.setdefault(key, value)
    _restore_old_hires_fix_params(res)
    for key, value in _DEFAULTS_AFTER_HIRES_FIX:
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and (uses_emphasis(prompt) or uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    if backcompat:
        _apply_backcompat(res)
    for key in skip_fields:
        res.pop(key, None)
    return res


def _split_sections(text: str) -> tuple[str, str, str]:
    """Split into (prompt, negative prompt, params line); the last line counts as params only with 3+ pairs."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            target = negative
            line = line[len(NEGATIVE_PREFIX):].strip()
        # A1111 appends "\n" + line only once the text so far is non-empty, so leading empty lines vanish.
        if target or line:
            target.append(line)
    return "\n".join(prompt), "\n".join(negative), last


def _parse_params_line(line: str) -> dict[str, object]:
    """``Key: value`` pairs; quoted values are JSON-decoded, ``WxH`` values split into ``Key-1``/``Key-2``."""
    res: dict[str, object] = {}
    for key, value in _PARAM.findall(line):
        if not value:  # A1111 fails on value[0] here, logs the error and drops the pair
            log.warning("infotext: no value for %r; ignored", key)
            continue
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = _IMAGE_SIZE.match(value) if isinstance(value, str) else None
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value
    return res


def _restore_old_hires_fix_params(res: dict[str, object]) -> None:
    """Pre-1.0 infotexts stored ``First pass size``; turn it into Size + ``Hires resize`` as A1111 does.

    This is A1111's path for the default ``use_old_hires_fix_width_height=False``.
    """
    if res.get("First pass size-1") is None or res.get("First pass size-2") is None:
        return
    try:
        first_w, first_h = int(res["First pass size-1"]), int(res["First pass size-2"])  # type: ignore[arg-type]
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))  # type: ignore[arg-type]
    except ValueError:
        log.warning("infotext: unreadable First pass size or Size; left as is")
        return
    if width * height == 0:  # A1111 would divide by zero below
        return
    if first_w == 0 or first_h == 0:  # the old hires fix picked a ~512x512 first pass in multiples of 64
        scale = math.sqrt(512 * 512 / (width * height))
        first_w, first_h = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


# ------------------------------------------------------------------------------------------------------- emphasis
_ATTENTION_TOKEN = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:\s*([+-]?[.\d]+)\s*\)|[)\]]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def attention_segments(text: str) -> list[tuple[str, float]]:
    """(text, weight) runs with A1111's emphasis rules: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)``, ``\\(`` literal.

    BREAK becomes ``("BREAK", -1)``; unclosed brackets still apply; neighbours of equal weight are merged. The
    float products are taken in A1111's order, so a weight that returns to exactly 1.0 there does here too.
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for seg in res[start:]:
            seg[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token in ("(", "["):
            (round_open if token == "(" else square_open).append(len(res))
        elif weight is not None and round_open and _is_float(weight):
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)
    merged: list[list] = []
    for seg in res or [["", 1.0]]:
        if merged and merged[-1][1] == seg[1]:
            merged[-1][0] += seg[0]
        else:
            merged.append(seg)
    return [(t, w) for t, w in merged]


def _is_float(text: str) -> bool:
    """Whether ``float(text)`` works; A1111 raises on weights like ``1.2.3``, we read them as plain text."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def uses_emphasis(text: str) -> bool:
    """A1111's test for adding ``Emphasis: Original``: some non-BREAK segment has a weight other than 1.0.

    As in A1111, prompt-editing brackets count too: ``[dog:cat:10]`` reads as a ``[de-emphasis]``.
    """
    return any(w != 1.0 and t != "BREAK" for t, w in attention_segments(text))


# ------------------------------------------------------------------------------------------------------ versions
_PEP440 = re.compile(
    r"v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>\d+)?)?"
    r"(?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d+)?)?"
    r"(?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d+)?)?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?",
    re.I,
)
_PRE_LETTER = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "c": "rc", "pre": "rc", "preview": "rc", "rc": "rc"}


def version_key(text: str | None) -> tuple | None:
    """A sortable key for an infotext ``Version``, ordered like ``packaging.version`` (PEP 440), or None.

    As A1111 does, ``v1.6.0-2-gabcdef`` is cut to ``v1.6.0-2`` (a post-release) before parsing. Local
    version labels are ignored, which does not change any ``<`` against a label-less version.
    """
    if text is None:
        return None
    cut = re.match(r"([^-]+-[^-]+)-.*", text)
    m = _PEP440.fullmatch((cut.group(1) if cut else text).strip())
    if m is None:
        return None
    release = tuple(int(p) for p in m["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    has_post = m["post_n1"] is not None or m["post_l"] is not None
    post = int(m["post_n1"] or m["post_n2"] or 0) if has_post else -1
    dev = int(m["dev_n"] or 0) if m["dev_l"] else math.inf
    if m["pre_l"]:
        pre: tuple = (1, _PRE_LETTER[m["pre_l"].lower()], int(m["pre_n"] or 0))
    else:  # PEP 440: 1.0.dev1 < 1.0a1 < 1.0 ; a final release sorts after its pre-releases
        pre = (0,) if not has_post and m["dev_l"] else (2,)
    return int(m["epoch"] or 0), release, pre, post, dev


def _apply_backcompat(res: dict[str, object]) -> None:
    """Turn on A1111's compatibility options implied by an old ``Version`` (``infotext_versions.backcompat``)."""
    ver = version_key(str(res["Version"])) if "Version" in res else None
    if ver is None:
        return
    v160, v170_225, v180 = (version_key(v) for v in ("1.6.0", "v1.7.0-225", "1.8.0"))
    if ver < v160 and "[" in str(res.get("Prompt", "")):  # type: ignore[operator]
        res["Old prompt editing timelines"] = True
    if ver < v160 and res.get("Sampler", "") in ("DDIM", "PLMS"):  # type: ignore[operator]
        res["Pad conds v0"] = True
    if ver < v170_225:  # type: ignore[operator]
        res["Downcast alphas_cumprod"] = True
    if ver < v180 and res.get("Refiner"):  # type: ignore[operator]
        res["Refiner switch by sampling steps"] = True


# -------------------------------------------------------------------------------------------------------- images
def read_from_image(image: Image.Image) -> str | None:
    """The infotext stored in an image, with A1111's precedence.

    PNG ``parameters`` text, replaced by a non-empty EXIF UserComment (JPEG/WEBP), or else by a ``comment``
    (GIF) when there is no EXIF at all. None when the image carries none of them.
    """
    info = image.info or {}
    text = info.get("parameters")
    if "exif" in info:
        comment = decode_user_comment(_exif_user_comment(info["exif"]))
        if comment:
            text = comment
    elif "comment" in info:
        comment = info["comment"]
        text = comment.decode("utf-8", errors="ignore") if isinstance(comment, bytes) else comment
    return None if text is None else str(text)


def _exif_user_comment(raw: bytes) -> bytes:
    """The raw UserComment bytes (Exif IFD tag 0x9286) of an EXIF block, or b"" when absent or unreadable."""
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get_ifd(0x8769).get(0x9286, b"")
    except Exception as exc:  # a broken EXIF block must not stop reading the image
        log.warning("infotext: unreadable EXIF: %s", exc)
        return b""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def decode_user_comment(data: bytes) -> str:
    """Decode an EXIF UserComment the way piexif's ``UserComment.load`` does, as A1111 reads it.

    8-byte charset header: ``UNICODE\\0`` (UTF-16), ``ASCII\\0\\0\\0``, ``JIS\\0\\0\\0\\0\\0`` (Shift-JIS). For
    an unknown header A1111 falls back to UTF-8 of the whole field. Two choices of ours: an all-zero
    ("undefined") header is dropped instead of decoded as eight NULs, and UTF-16 honours a byte-order mark or
    reads little-endian text (zero bytes at odd offsets) that piexif would garble; otherwise big-endian, as
    piexif writes and reads it.
    """
    header, body = data[:8], data[8:]
    if len(data) >= 8 and header == b"UNICODE\0":
        return _decode_utf16(body)
    if len(data) >= 8 and header == b"ASCII\0\0\0":
        return body.decode("ascii", errors="replace")
    if len(data) >= 8 and header == b"JIS\0\0\0\0\0":
        return body.decode("shift_jis", errors="replace")
    if len(data) >= 8 and header == b"\0" * 8:
        return body.decode("utf-8", errors="ignore")
    return data.decode("utf-8", errors="ignore")


def _decode_utf16(body: bytes) -> str:
    """UTF-16 with a BOM if present, else big-endian unless the zero bytes say little-endian."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body[2:].decode("utf-16-be" if body[:2] == b"\xfe\xff" else "utf-16-le", errors="replace")
    little = body[1::2].count(0) > body[0::2].count(0)
    return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")


def add_to_png(infotext: str) -> PngImagePlugin.PngInfo:
    """PNG metadata holding the infotext as ``parameters``; PIL writes tEXt, or iTXt if it is not Latin-1."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    return info


def add_to_exif(infotext: str) -> bytes:
    """EXIF bytes (``exif=`` of PIL's JPEG/WEBP save) with the infotext as UserComment, in A1111's encoding.

    A1111 writes it with piexif as ``UNICODE\\0`` + UTF-16 big-endian; the result reads back with
    :func:`read_from_image` and with A1111.
    """
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + infotext.encode("utf-16-be")
    return exif.tobytes()
