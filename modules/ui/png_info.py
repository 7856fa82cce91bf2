"""PNG Info tab: drop an image, read its A1111 infotext, and send every field it names to txt2img (or the image
and its fields to img2img).

:func:`paste_values` is the pure part (infotext → control values, the checkpoint it names, the settings it
overrides); the tab only shows the text and hands the values to the txt2img controls. The checkpoint is switched
through the job queue, as the quicksettings dropdown does.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from modules import hires, infotext, options, samplers, xyz_axes, xyz_grid
from modules.sd_models import CheckpointInfo
from modules.state import AppState

logger = logging.getLogger(__name__)

# infotext key -> txt2img control name, converter (A1111's paste fields for txt2img)
PASTE_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("Prompt", "prompt", str), ("Negative prompt", "negative", str), ("Steps", "steps", int),
    ("CFG scale", "cfg_scale", float), ("Seed", "seed", int), ("Size-1", "width", int), ("Size-2", "height", int),
    ("Batch size", "batch_size", int), ("Variation seed", "subseed", int),
    ("Variation seed strength", "subseed_strength", float), ("Clip skip", "clip_skip", int),
    ("Seed resize from-1", "seed_resize_from_w", int), ("Seed resize from-2", "seed_resize_from_h", int),
    ("Denoising strength", "denoising_strength", float), ("Hires upscale", "hr_scale", float),
    ("Hires steps", "hr_second_pass_steps", int), ("Hires resize-1", "hr_resize_x", int),
    ("Hires resize-2", "hr_resize_y", int), ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    # img2img's inpainting controls (parsing fills A1111's defaults for the last four when they are absent)
    ("Mask blur", "mask_blur", int), ("Mask mode", "mask_mode", str), ("Masked content", "inpainting_fill", str),
    ("Inpaint area", "inpaint_area", str), ("Masked area padding", "padding", int),
    # the X/Y/Z plot of a grid's infotext (an infotext without one sets the Script back to None, as in A1111)
    ("Script", "script", str), ("X Type", "x_type", str), ("X Values", "x_values", str), ("Y Type", "y_type", str),
    ("Y Values", "y_values", str), ("Z Type", "z_type", str), ("Z Values", "z_values", str),
)
# the hires sampler/schedule dropdowns' first choice (A1111's words): the first pass's
SAME_SAMPLER, SAME_SCHEDULER, SAME_CHECKPOINT = hires.SAME_SAMPLER, hires.SAME_SCHEDULER, hires.SAME_CHECKPOINT
# settings with their own control (or switched directly), so they are not offered as overrides
NOT_OVERRIDES = frozenset({"sd_model_checkpoint", "CLIP_stop_at_last_layers"})
OPTION_TO_INFOTEXT = {key: label for label, key in infotext.INFOTEXT_TO_OPTION.items()}


@dataclass
class Paste:
    """What an infotext asks of the txt2img tab."""

    values: dict[str, object] = field(default_factory=dict)  # control name -> value
    checkpoint: CheckpointInfo | None = None
    overrides: list[str] = field(default_factory=list)  # "Emphasis: No norm" entries
    warnings: list[str] = field(default_factory=list)


def paste_values(state: AppState, text: str) -> Paste:
    """Parse ``text`` (A1111 rules) into control values, the checkpoint it names and setting overrides."""
    res = infotext.parse(text)
    if "Seed resize from-1" not in res:  # absent means off: a resize pasted before must not stay
        res["Seed resize from-1"] = res["Seed resize from-2"] = 0
    _script(res)
    paste = Paste()
    for key, name, convert in PASTE_FIELDS:
        if key in res:
            try:
                paste.values[name] = convert(res[key])
            except (TypeError, ValueError):
                paste.warnings.append(f"{key}: {res[key]!r} is not a {convert.__name__}; left unchanged")
    for letter in "XYZ":  # a choice axis (sampler, checkpoint, ...) shows its values in its dropdown
        if f"{letter} Values" in res:
            paste.values[f"{letter.lower()}_values_dropdown"] = xyz_axes.split_csv(str(res[f"{letter} Values"]))
    _sampler(res, paste)
    _hires(state, res, paste)
    _checkpoint(state, res, paste)
    current = state.opts.as_dict()
    for label, key in infotext.INFOTEXT_TO_OPTION.items():
        if key in NOT_OVERRIDES or key not in options.OPTIONS or label not in res:
            continue
        value = _option_value(state, key, res[label])
        if value is None:
            paste.warnings.append(f"{label}: {res[label]!r} is not a value this program knows; not applied")
        elif value != current.get(key):
            paste.overrides.append(f"{label}: {value}")
    return paste


def _script(res: dict[str, object]) -> None:
    """A1111's paste of the Script field: None when the infotext names none; for an X/Y/Z plot, an axis it does
    not name is Nothing (so the plot pasted is the plot that was made)."""
    res.setdefault("Script", "None")
    if res["Script"] == xyz_grid.TITLE:
        for letter in "XYZ":
            res.setdefault(f"{letter} Type", "Nothing")


def parse_overrides(entries: list[str] | None) -> dict[str, object]:
    """The override dropdown's ``"Label: value"`` entries → ``{setting key: value}`` (validated)."""
    result: dict[str, object] = {}
    for entry in entries or []:
        label, sep, text = entry.partition(": ")
        key = infotext.INFOTEXT_TO_OPTION.get(label)
        if not sep or key is None or key not in options.OPTIONS:
            raise ValueError(f"override {entry!r} is not 'Setting: value' for a known setting")
        result[key] = options.validate(key, _typed(key, text))
    return result


def _find_sampler(name: str, schedule: str) -> tuple[str | None, str]:
    """``(sampler name or None if unknown, schedule)``; a pre-1.9 name ("DPM++ 2M Karras") gives its schedule
    when ``schedule`` is "Automatic"."""
    try:
        return samplers.find_sampler(name).name, schedule
    except samplers.SamplerError:
        pass
    for suffix in ("Karras", "Exponential"):
        base = name.removesuffix(" " + suffix)
        if base != name:
            try:
                found = samplers.find_sampler(base).name
            except samplers.SamplerError:
                return None, schedule
            return found, suffix if schedule == "Automatic" else schedule
    return None, schedule


def _sampler(res: dict[str, object], paste: Paste) -> None:
    name, schedule = str(res.get("Sampler", "")), str(res.get("Schedule type", "Automatic"))
    if not name:
        return
    found, schedule = _find_sampler(name, schedule)
    if found is None:
        paste.warnings.append(f"Sampler: {name!r} is not available; left unchanged")
    else:
        paste.values["sampler"] = found
    try:
        paste.values["schedule"] = samplers.schedule_label(schedule)
    except samplers.SamplerError:
        paste.warnings.append(f"Schedule type: {schedule!r} is not available; left unchanged")


def _hires(state: AppState, res: dict[str, object], paste: Paste) -> None:
    """The Hires. fix checkbox, upscaler, checkpoint, sampler and schedule (the numbers and prompts are in
    PASTE_FIELDS).

    The checkbox follows A1111's rule on the parsed fields: on with ``Denoising strength`` and any of ``Hires
    upscale``, ``Hires upscaler``, ``Hires resize-1``, else off. As parsing always fills ``Hires resize-1``, A1111
    turns it on for any infotext with a denoising strength, and so does this. A hires sampler or schedule equal to
    the first pass's is pasted as "Use same ...", as A1111 does. The hires checkpoint (A1111 writes its short title,
    ``stem [shorthash]``) is pasted as the title of the checkpoint here it names, the dropdown's choice.
    """
    paste.values["enable_hr"] = "Denoising strength" in res and any(
        key in res for key in ("Hires upscale", "Hires upscaler", "Hires resize-1"))
    if "Hires upscaler" in res:
        upscaler = str(res["Hires upscaler"])
        if upscaler in hires.UPSCALERS:
            paste.values["hr_upscaler"] = upscaler
        else:
            paste.warnings.append(f"Hires upscaler: {upscaler!r} is not available here (use one of "
                                  f"{', '.join(hires.UPSCALERS)}); left unchanged")
    paste.values["hr_checkpoint"] = _hires_checkpoint(state, str(res.get("Hires checkpoint", SAME_CHECKPOINT)),
                                                      paste)
    name, schedule = str(res.get("Hires sampler", SAME_SAMPLER)), str(res.get("Hires schedule type", SAME_SCHEDULER))
    if name == SAME_SAMPLER:
        paste.values["hr_sampler"] = SAME_SAMPLER
    else:
        found, implied = _find_sampler(name, "Automatic")
        if found is None:
            paste.warnings.append(f"Hires sampler: {name!r} is not available; left unchanged")
        else:
            paste.values["hr_sampler"] = SAME_SAMPLER if found == paste.values.get("sampler") else found
            if schedule == SAME_SCHEDULER and implied != "Automatic":
                schedule = implied
    if schedule == SAME_SCHEDULER:
        paste.values["hr_scheduler"] = SAME_SCHEDULER
        return
    try:
        label = samplers.schedule_label(schedule)
    except samplers.SamplerError:
        paste.warnings.append(f"Hires schedule type: {schedule!r} is not available; left unchanged")
        return
    paste.values["hr_scheduler"] = SAME_SCHEDULER if label == paste.values.get("schedule") else label


def _hires_checkpoint(state: AppState, named: str, paste: Paste) -> str:
    """The "Hires checkpoint" choice for ``named``: its title, or "Use same checkpoint" (with a warning) when no
    checkpoint here matches, as an unknown ``Model`` keeps the current checkpoint."""
    if named in ("", SAME_CHECKPOINT):
        return SAME_CHECKPOINT
    try:
        return state.models.find(named).title
    except LookupError:
        paste.warnings.append(f"Hires checkpoint: {named!r} is not in models/Stable-diffusion; "
                              f"{SAME_CHECKPOINT!r} is set instead")
        return SAME_CHECKPOINT


def _checkpoint(state: AppState, res: dict[str, object], paste: Paste) -> None:
    for key in ("Model hash", "Model"):
        if key in res:
            try:
                paste.checkpoint = state.models.find(str(res[key]))
                return
            except LookupError:
                continue
    if "Model hash" in res or "Model" in res:
        named = res.get("Model") or res.get("Model hash")
        paste.warnings.append(f"checkpoint {named!r} is not in models/Stable-diffusion; the current one is kept")


def _option_value(state: AppState, key: str, raw: object) -> object | None:
    if key == "sd_vae":  # the infotext names the VAE's stem; the setting holds its file name
        stem = str(raw)
        return next((v.name for v in state.models.vaes if Path(v.name).stem == stem or v.name == stem), None)
    try:
        return options.validate(key, _typed(key, raw))
    except (KeyError, ValueError):
        return None


def _typed(key: str, raw: object) -> object:
    kind = type(options.OPTIONS[key].default)
    if kind is bool and isinstance(raw, str):
        return {"true": True, "false": False}.get(raw.strip().lower(), raw)
    if kind is int and isinstance(raw, str):
        return int(float(raw)) if raw.strip().replace(".", "", 1).lstrip("-").isdigit() else raw
    return raw


# ------------------------------------------------------------------------------------------------------------ UI
def read_image(path: str | None) -> tuple[str, str]:
    """``(parameters text, HTML of every text chunk)`` of the dropped image."""
    if not path:
        return "", ""
    with Image.open(path) as image:
        text = infotext.read_from_image(image) or ""
        items = {k: v for k, v in (image.info or {}).items() if isinstance(v, str) and k != "parameters"}
    rows = [("parameters", text)] if text else []
    rows += list(items.items())
    if not rows:
        return "", "<div class='pnginfo'><p>Nothing found in the image.</p></div>"
    body = "".join(f"<div><p><b>{html.escape(k)}</b></p><p>{html.escape(v).replace(chr(10), '<br>')}</p></div>"
                   for k, v in rows)
    return text, f"<div class='pnginfo'>{body}</div>"


def create_tab(state: AppState) -> tuple[gr.Image, gr.Textbox, gr.Button, gr.Button]:
    """Build the tab's controls (inside a ``gr.Tab``); returns the image, the parameters box and the two send
    buttons (to txt2img, to img2img)."""
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(label="Source", sources=["upload"], type="filepath", image_mode=None,
                             elem_id="pnginfo_image", height=400)
        with gr.Column():
            html_info = gr.HTML(elem_id="pnginfo_html")
            parameters = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_generation_info")
            with gr.Row():
                send = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img", variant="primary")
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img", variant="primary")
    image.change(read_image, inputs=image, outputs=[parameters, html_info], queue=False, api_visibility="private")
    return image, parameters, send, send_img2img


def wire_send(state: AppState, send: gr.Button, inputs: list[gr.components.Component],
              controls: dict[str, gr.components.Component], checkpoint: gr.Dropdown, overrides: gr.Dropdown,
              tabs: gr.Tabs, tab: str = "txt2img", image_box: gr.Image | None = None,
              source: Callable[..., tuple[str, object]] | None = None,
              also: list[tuple[gr.components.Component, Callable[[], object]]] | None = None) -> None:
    """A "Send to txt2img/img2img" button: fill the controls the infotext names (those ``controls`` has: img2img
    has no Hires. fix), switch the checkpoint, show the overrides and select ``tab``; with ``image_box`` the picture
    goes there too. ``source(*inputs)`` gives ``(infotext, picture)``; by default ``inputs`` are the infotext box
    and, with ``image_box``, the component holding the picture. ``also``: further (component, value maker) pairs
    set on every send (the img2img sub-tab that shows the picture)."""
    from modules.ui import common

    names = list(controls)

    def control_value(control: gr.components.Component, value: object) -> object:
        """The value for ``control``; the hires checkpoint's list is renewed with it, as the title pasted may be
        newer than the page's list (a checkpoint added since, or titled with its hash once loaded)."""
        if control is controls.get("hr_checkpoint"):
            return gr.update(choices=common.hires_checkpoint_choices(state), value=value)
        if isinstance(control, (gr.Radio, gr.Dropdown)) and not getattr(control, "multiselect", False) and \
                not getattr(control, "allow_custom_value", False) and \
                value not in [choice[1] for choice in control.choices]:
            gr.Warning(f"{control.label}: {value!r} is not one of its choices; left unchanged")
            return gr.skip()
        return common.clamp(control, value)

    def handler(*values):
        text, image = source(*values) if source is not None else (values[0], values[1] if image_box else None)
        sent = ([image] if image_box is not None else []) + [make() for _, make in also or []]
        if image_box is not None and image is None:
            raise gr.Error("No picture to send: make or drop an image first.")
        if not (text or "").strip():
            if image_box is None:
                raise gr.Error("No parameters to send: drop a PNG made by this program or by A1111 first.")
            return [*(gr.skip() for _ in names), gr.skip(), gr.skip(), *sent, gr.Tabs(selected=tab)]
        paste = paste_values(state, text)
        for warning in paste.warnings:
            gr.Warning(warning)
        model_update = gr.skip()
        if paste.checkpoint is not None:
            current = state.models.current
            if not common.frozen(state):  # queued behind any pending switch; a no-op when it is the current one
                common.switch_checkpoint(state, paste.checkpoint.title)
                model_update = gr.update(value=common.current_title(state))
            elif current is None or current.info.path != paste.checkpoint.path:
                gr.Warning(f"Settings are frozen (--freeze-settings): {paste.checkpoint.title} was not loaded")
        updates = [control_value(controls[n], paste.values[n]) if n in paste.values else gr.skip() for n in names]
        override_update = gr.update(choices=paste.overrides, value=paste.overrides, visible=bool(paste.overrides))
        return [*updates, model_update, override_update, *sent, gr.Tabs(selected=tab)]

    targets = ([image_box] if image_box is not None else []) + [component for component, _ in also or []]
    send.click(handler, inputs=inputs, outputs=[*controls.values(), checkpoint, overrides, *targets, tabs],
               api_visibility="private")
