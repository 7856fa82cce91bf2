"""Settings tab: every setting of :data:`modules.options.OPTIONS`, grouped by section, saved to config.json.

Each control is built from the setting's declaration (type, choices, range), so a new option appears here
without UI code. "Apply settings" validates everything first and changes nothing when one value is wrong;
settings whose change loads something (the checkpoint cache size) are applied on the job queue's worker.
With ``--freeze-settings`` the controls are read-only and the handler refuses, as the API does.
"""

from __future__ import annotations

import gradio as gr

from modules import options
from modules.options import FrozenSettingsError, OptionInfo
from modules.state import AppState
from modules.ui import common

SECTION_TITLES = {
    "sd": "Stable Diffusion", "sampler": "Sampler parameters", "extra_networks": "Extra Networks",
    "img2img": "img2img", "ui": "User interface", "saving": "Saving images/grids", "infotext": "Infotext",
    "compatibility": "Compatibility",
}
QUICKSETTINGS = frozenset({"sd_model_checkpoint", "sd_vae"})  # shown at the top of the page instead
ON_WORKER = frozenset({"sd_checkpoints_limit", "sd_model_checkpoint", "sd_vae"})  # touch the loaded models


def keys() -> list[str]:
    """The settings shown in the tab, in section order (first appearance) then declaration order."""
    order = list(dict.fromkeys(info.section for info in options.OPTIONS.values()))
    return [key for section in order for key, info in options.OPTIONS.items()
            if info.section == section and key not in QUICKSETTINGS]


def sections() -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key in keys():
        grouped.setdefault(options.OPTIONS[key].section, []).append(key)
    return grouped


def control(key: str, info: OptionInfo, value: object, interactive: bool) -> gr.components.Component:
    """The Gradio control for one setting (A1111's ``setting_<key>`` elem_id)."""
    common_args = {"label": info.label, "elem_id": f"setting_{key}", "interactive": interactive, "value": value}
    kind = type(info.default)
    if kind is bool:
        return gr.Checkbox(**common_args)
    if info.choices is not None:
        return gr.Dropdown(choices=list(info.choices), **common_args)
    if kind in (int, float) and info.minimum is not None and info.maximum is not None:
        step = 1 if kind is int else 0.01
        return gr.Slider(minimum=info.minimum, maximum=info.maximum, step=step, **common_args)
    if kind in (int, float):
        return gr.Number(precision=0 if kind is int else None, minimum=info.minimum, maximum=info.maximum,
                         **common_args)
    return gr.Textbox(**common_args)


def apply(state: AppState, values: dict[str, object]) -> str:
    """Validate all ``values``, then store and save the changed ones; returns A1111's summary line.

    Raises:
        gr.Error: frozen settings, or a value that does not fit its setting (nothing is changed then).
    """
    if common.frozen(state):
        raise gr.Error(str(FrozenSettingsError("settings are frozen (--freeze-settings); nothing was changed")))
    changes: dict[str, object] = {}
    for key, value in values.items():
        try:
            checked = options.validate(key, value)
        except (KeyError, ValueError) as e:
            raise gr.Error(f"{options.OPTIONS[key].label}: {e}; nothing was changed") from e
        if checked != state.opts[key]:
            changes[key] = checked
    try:
        for key, value in changes.items():
            if key in ON_WORKER:
                state.queue.run(state.opts.set, key, value)
            else:
                state.opts.set(key, value)
        state.opts.save()
    except (ValueError, LookupError, PermissionError, OSError) as e:
        raise gr.Error(f"Settings not saved: {e}") from e
    labels = ", ".join(changes)
    return f"{len(changes)} settings changed{': ' + labels if labels else ''}."


def create_tab(state: AppState) -> tuple[dict[str, gr.components.Component], gr.Button, gr.HTML]:
    """Build the tab (inside a ``gr.Tab``); returns the controls by key, the apply button and the result line."""
    is_frozen = common.frozen(state)
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        submit = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", interactive=not is_frozen)
    result = gr.HTML("Settings are frozen (--freeze-settings): they cannot be changed here." if is_frozen else "",
                     elem_id="settings_result")
    with gr.Tabs(elem_id="settings_sections"):
        for section, section_keys in sections().items():
            with gr.Tab(SECTION_TITLES.get(section, section.replace("_", " ").title()),
                        id=f"settings_{section}", elem_id=f"settings_{section}"):
                for key in section_keys:
                    controls[key] = control(key, options.OPTIONS[key], state.opts[key], not is_frozen)

        with gr.Tab("Actions", id="settings_actions", elem_id="settings_actions"):
            unload = gr.Button("Unload SD checkpoint to RAM", elem_id="sett_unload_sd_model")
            reload = gr.Button("Load SD checkpoint to VRAM", elem_id="sett_reload_sd_model")
    unload.click(lambda: unload_checkpoint(state), outputs=result)
    reload.click(lambda: reload_checkpoint(state), outputs=result)

    names = list(controls)
    submit.click(lambda *values: apply(state, dict(zip(names, values))), inputs=list(controls.values()),
                 outputs=result, api_name="apply_settings")
    return controls, submit, result


def unload_checkpoint(state: AppState) -> str:
    """The Actions button: the model leaves the GPU (kept in RAM); the next job brings it back."""
    model = state.queue.run(state.models.unload_to_ram)
    return f"Unloaded to RAM: {model.info.title}" if model is not None else "No checkpoint is loaded."


def reload_checkpoint(state: AppState) -> str:
    """The Actions button: the model back on its device (loading the selected checkpoint if none is loaded)."""
    try:
        model = state.queue.run(state.models.reload_to_device, str(state.opts["sd_model_checkpoint"] or ""))
    except LookupError as e:
        return f"Error: {e}"
    if model is None:
        return "No checkpoint is selected; put a .safetensors file in models/Stable-diffusion."
    return f"Loaded to {state.policy.device}: {model.info.title}"


def current_values(state: AppState) -> list[object]:
    """The settings as stored now, in the order of :func:`keys` (the page refreshes its controls on load)."""
    return [state.opts[key] for key in keys()]
