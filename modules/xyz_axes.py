"""The axes of A1111's X/Y/Z plot script: what each one changes in a job, how its values are written and read.

An axis value list is A1111's text: comma-separated (CSV, so ``"a, b",c`` is two values), with ranges for number
axes — ``1-5`` (1, 2, 3, 4, 5), ``1-9 (+2)`` (every 2nd), ``10-20 [3]`` (3 values spread evenly) and the same with
decimals for float axes. One difference: ``5-1 (-2)`` ends at 1 (A1111's stops at 3, one short). Choice axes (sampler, checkpoint, ...) can also come as a list (the page's dropdown).

:data:`A1111_AXES` is A1111 1.10's list in its order: the API's ``script_args`` name an axis by its index in the
tab's part of that list (txt2img's has no img2img-only axis and vice versa). The axes this server can vary are
:data:`AXES`; the others are refused with their name, never silently ignored.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from modules import hires, samplers, styles
from modules.options import OPTIONS
from modules.processing_params import GenerationParams, ParamsError
from modules.state import AppState

#: A1111 1.10's axes in order, each with the only tab it appears on (None: both).
A1111_AXES: tuple[tuple[str, str | None], ...] = (
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None), ("Sigma min", None),
    ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None), ("Schedule min sigma", None),
    ("Schedule max sigma", None), ("Schedule rho", None), ("Beta schedule alpha", None),
    ("Beta schedule beta", None), ("Eta", None), ("Clip skip", None), ("Denoising", None),
    ("Initial noise multiplier", None), ("Extra noise", None), ("Hires upscaler", "txt2img"),
    ("Cond. Image Mask Weight", "img2img"), ("VAE", None), ("Styles", None), ("UniPC Order", None),
    ("Face restore", None), ("Token merging ratio", None), ("Token merging ratio high-res", None),
    ("Always discard next-to-last sigma", None), ("SGM noise multiplier", None), ("Refiner checkpoint", None),
    ("Refiner switch at", None), ("RNG source", None), ("FP8 mode", None), ("Size", None),
)

PERMUTATIONS = "permutations"  # an axis whose values are every order of the listed words (Prompt order)

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE_STEP_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_COUNT_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*\[(\d+)\s*\]\s*")
_RANGE_STEP_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[(\d+)\s*\]\s*")


class AxisError(ValueError):
    """An axis or one of its values cannot be used; the message names the axis, the value and the fix."""


Apply = Callable[[AppState, GenerationParams, object, Sequence[object]], GenerationParams]


@dataclass(frozen=True)
class Axis:
    """One thing the grid varies. ``apply`` returns the job with one value set (it may raise AxisError);
    ``choices`` lists the values the page offers; ``cost`` puts slow axes (checkpoints) in the outer loop."""

    label: str
    kind: object  # int, float, str or PERMUTATIONS
    apply: Apply
    label_value: bool = True  # the legend reads "Label: value" (else the value alone)
    choices: Callable[[AppState], list[str]] | None = None
    cost: float = 0.0
    mode: str | None = None  # the only tab it is on

    def format(self, value: object) -> str:
        """The legend text of one value (A1111's: floats rounded to 8 places, checkpoints without folders)."""
        if self.label == "Nothing":
            return ""
        if self.kind is PERMUTATIONS:
            return ", ".join(value)  # type: ignore[arg-type]
        if isinstance(value, float):
            value = round(value, 8)
        if self.label == "Checkpoint name":
            return PurePath(str(value)).name
        return f"{self.label}: {value}" if self.label_value else str(value)


def _field(name: str) -> Apply:
    return lambda state, params, value, values: dataclasses.replace(params, **{name: value})


def _override(key: str) -> Apply:
    def apply(state: AppState, params: GenerationParams, value: object, values: Sequence[object]) -> GenerationParams:
        return dataclasses.replace(params, override_settings={**params.override_settings, key: value})
    return apply


def _prompt_sr(state: AppState, params: GenerationParams, value: object, values: Sequence[object]) -> GenerationParams:
    """Prompt S/R: the first value is searched for; each value replaces it in the prompt and negative prompt."""
    search = str(values[0])
    if search not in params.prompt and search not in params.negative_prompt:
        raise AxisError(f"Prompt S/R did not find {search} in prompt or negative prompt. The first value is the "
                        "text searched for: write it in the prompt as it is in the list.")
    return dataclasses.replace(params, prompt=params.prompt.replace(search, str(value)),
                               negative_prompt=params.negative_prompt.replace(search, str(value)))


def _prompt_order(state: AppState, params: GenerationParams, value: object,
                  values: Sequence[object]) -> GenerationParams:
    """Prompt order: the listed words, wherever they are in the prompt, put back in this order."""
    words = list(value)  # type: ignore[call-overload]
    prompt = params.prompt
    missing = [w for w in words if w not in prompt]
    if missing:
        raise AxisError(f"Prompt order did not find {', '.join(missing)} in the prompt")
    found = sorted((prompt.find(w), w) for w in words)
    pieces, rest = [], prompt
    for _, word in found:  # the text between the words, in prompt order
        at = rest.find(word)
        pieces.append(rest[:at])
        rest = rest[at + len(word):]
    return dataclasses.replace(params, prompt="".join(p + w for p, w in zip(pieces, words)) + rest)


def _checkpoint(state: AppState, params: GenerationParams, value: object,
                values: Sequence[object]) -> GenerationParams:
    try:
        info = state.models.find(str(value))
    except LookupError as e:
        raise AxisError(f"Checkpoint name: {e}") from None
    return _override("sd_model_checkpoint")(state, params, info.title, values)


def _vae(state: AppState, params: GenerationParams, value: object, values: Sequence[object]) -> GenerationParams:
    """A VAE by name; A1111's shortcuts: ``auto``/``automatic``, ``none``, or the shortest name containing it."""
    text = str(value).strip()
    if text.lower() in ("auto", "automatic"):
        name = "Automatic"
    elif text.lower() == "none":
        name = "None"
    else:
        matches = sorted((v.name for v in state.models.vaes if text.lower() in v.name.lower()), key=len)
        if not matches:
            known = ", ".join(v.name for v in state.models.vaes) or "none in models/VAE"
            raise AxisError(f"VAE {text!r} not found; use Automatic, None or one of: {known}")
        name = matches[0]
    return _override("sd_vae")(state, params, name, values)


def _styles(state: AppState, params: GenerationParams, value: object, values: Sequence[object]) -> GenerationParams:
    """Styles: the value's comma-separated style names applied to both prompts ("" applies none)."""
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    try:
        prompt, negative = styles.for_state(state).apply(params.prompt, params.negative_prompt, names)
    except LookupError as e:
        raise AxisError(f"Styles: {e}") from None
    return dataclasses.replace(params, prompt=prompt, negative_prompt=negative)


def _size(state: AppState, params: GenerationParams, value: object, values: Sequence[object]) -> GenerationParams:
    width, _, height = str(value).partition("x")
    try:
        return dataclasses.replace(params, width=int(width.strip()), height=int(height.strip()))
    except ValueError:
        raise AxisError(f"Size {value!r} is not WIDTHxHEIGHT (for example 512x768)") from None


def _sampler_names(state: AppState) -> list[str]:
    return [s.name for s in samplers.SAMPLERS]


AXES: tuple[Axis, ...] = (
    Axis("Nothing", str, lambda state, params, value, values: params),
    Axis("Seed", int, _field("seed")),
    Axis("Var. seed", int, _field("subseed")),
    Axis("Var. strength", float, _field("subseed_strength")),
    Axis("Steps", int, _field("steps")),
    Axis("Hires steps", int, _field("hr_second_pass_steps"), mode="txt2img"),
    Axis("CFG Scale", float, _field("cfg_scale")),
    Axis("Prompt S/R", str, _prompt_sr, label_value=False),
    Axis("Prompt order", PERMUTATIONS, _prompt_order),
    Axis("Sampler", str, _field("sampler_name"), label_value=False, choices=_sampler_names),
    Axis("Hires sampler", str, _field("hr_sampler_name"), choices=_sampler_names, mode="txt2img"),
    Axis("Checkpoint name", str, _checkpoint, cost=1.0,
         choices=lambda state: sorted((i.title for i in state.models.checkpoints), key=str.casefold)),
    Axis("Schedule type", str, _field("scheduler"), choices=lambda state: list(samplers.SCHEDULE_NAMES.values())),
    Axis("Clip skip", int, _field("clip_skip")),
    Axis("Denoising", float, _field("denoising_strength")),
    Axis("Initial noise multiplier", float, _field("initial_noise_multiplier")),
    Axis("Hires upscaler", str, _field("hr_upscaler"), choices=lambda state: list(hires.UPSCALERS), mode="txt2img"),
    Axis("Cond. Image Mask Weight", float, _override("inpainting_mask_weight"), mode="img2img"),
    Axis("VAE", str, _vae, cost=0.7,
         choices=lambda state: ["Automatic", "None", *(v.name for v in state.models.vaes)]),
    Axis("Styles", str, _styles, choices=lambda state: [s.name for s in styles.for_state(state).styles]),
    Axis("RNG source", str, _override("randn_source"), choices=lambda state: list(OPTIONS["randn_source"].choices)),
    Axis("Size", str, _size),
)


def axes_for(mode: str) -> list[Axis]:
    """The axes the ``txt2img`` or ``img2img`` tab offers, in A1111's order."""
    return [a for a in AXES if a.mode in (None, mode)]


def find_axis(key: object, mode: str) -> Axis:
    """The axis an API client or pasted infotext names: A1111's index into the tab's list, or a label."""
    names = [label for label, only in A1111_AXES if only in (None, mode)]
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise AxisError(f"an axis type must be A1111's index (0-{len(names) - 1}) or a label; got {key!r}")
    if isinstance(key, int) or key.strip().isdigit():
        index = int(key)
        if not 0 <= index < len(names):
            raise AxisError(f"axis index {index} is outside A1111's {mode} list (0-{len(names) - 1})")
        key = names[index]
    for axis in axes_for(mode):
        if axis.label.lower() == str(key).strip().lower():
            return axis
    supported = ", ".join(a.label for a in axes_for(mode))
    if str(key).strip().lower() in (n.lower() for n in names):
        raise AxisError(f"the X/Y/Z plot axis {key!r} is not supported here; use one of: {supported}")
    other = {label.lower(): only for label, only in A1111_AXES if only not in (None, mode)}
    if str(key).strip().lower() in other:
        raise AxisError(f"the X/Y/Z plot axis {key!r} is for {other[str(key).strip().lower()]} only; on {mode} use "
                        f"one of: {supported}")
    raise AxisError(f"unknown X/Y/Z plot axis {key!r}; use one of: {supported}")


def split_csv(text: str) -> list[str]:
    """A1111's value list: CSV fields (quotes keep commas in a value), stripped; empty fields dropped."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [field.strip() for field in itertools.chain.from_iterable(rows) if field.strip()]


def to_csv(values: Sequence[str]) -> str:
    """The inverse of :func:`split_csv` (what the infotext's ``X Values`` holds for a dropdown list)."""
    out = io.StringIO()
    csv.writer(out).writerow(list(values))
    return out.getvalue().strip()


def parse_values(axis: Axis, text: str, listed: Sequence[str] | None = None) -> list[object]:
    """The values of ``axis``: ``listed`` (a dropdown's choice) if given, else ``text`` read as A1111 reads it.

    Raises:
        AxisError: an empty list, or a value that is not a number of the axis's kind.
    """
    if axis.label == "Nothing":
        return [0]
    raw = [str(v).strip() for v in listed] if listed else split_csv(text)
    if not raw:
        raise AxisError(f"{axis.label}: no values given; list them separated by commas")
    if axis.kind is PERMUTATIONS:
        return [tuple(p) for p in itertools.permutations(raw)]
    if axis.kind is int:
        return [v for item in raw for v in _int_range(axis, item)]
    if axis.kind is float:
        return [v for item in raw for v in _float_range(axis, item)]
    return raw


def _int_range(axis: Axis, item: str) -> list[int]:
    if match := _RANGE_STEP_INT.fullmatch(item):
        start, end = int(match[1].replace(" ", "")), int(match[2].replace(" ", ""))
        step = int(match[3]) if match[3] else 1
        if step == 0:
            raise AxisError(f"{axis.label}: the range {item!r} has a step of 0")
        return list(range(start, end + (1 if step > 0 else -1), step))  # A1111 stops short going down
    if match := _RANGE_COUNT_INT.fullmatch(item):
        start, end, count = int(match[1].replace(" ", "")), int(match[2].replace(" ", "")), int(match[3])
        return [int(v) for v in np.linspace(start, end, count).tolist()]
    try:
        return [int(item)]
    except ValueError:
        raise AxisError(f"{axis.label}: {item!r} is not a whole number or a range such as 1-5, 1-9 (+2) or "
                        "10-20 [3]") from None


def _float_range(axis: Axis, item: str) -> list[float]:
    if match := _RANGE_STEP_FLOAT.fullmatch(item):
        start, end = float(match[1].replace(" ", "")), float(match[2].replace(" ", ""))
        step = float(match[3]) if match[3] else 1.0
        if step == 0:
            raise AxisError(f"{axis.label}: the range {item!r} has a step of 0")
        return np.arange(start, end + step, step).tolist()
    if match := _RANGE_COUNT_FLOAT.fullmatch(item):
        start, end, count = float(match[1].replace(" ", "")), float(match[2].replace(" ", "")), int(match[3])
        return np.linspace(start, end, count).tolist()
    try:
        return [float(item)]
    except ValueError:
        raise AxisError(f"{axis.label}: {item!r} is not a number or a range such as 0-1 (+0.25) or 0-1 [5]") from None


def check_cell(params: GenerationParams) -> GenerationParams:
    """A cell's job validated, its error as an AxisError (so the whole grid is refused before anything runs)."""
    try:
        return params.validate()
    except ParamsError as e:
        raise AxisError(str(e)) from None
