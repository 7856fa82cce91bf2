"""Styles on the txt2img and img2img tabs (A1111's styles.csv): choose styles, apply them into the prompt, edit and
save them.

The style database (:mod:`modules.styles`) owns the files and the merge rules; this module only wires controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules import styles
from modules.state import AppState


@dataclass(frozen=True)
class StyleControls:
    selected: gr.Dropdown
    apply: gr.Button


def names(state: AppState) -> list[str]:
    return [s.name for s in styles.for_state(state).styles]


def apply_selected(state: AppState, prompt: str, negative: str, selected: list[str] | None) -> tuple[str, str]:
    """The prompts with the selected styles merged in (A1111's rules); unknown names are a clear error."""
    if not selected:
        return prompt, negative
    try:
        return styles.for_state(state).apply(prompt, negative, list(selected))
    except LookupError as e:
        raise gr.Error(str(e)) from e


def create_row(state: AppState, tab: str = "txt2img") -> StyleControls:
    """The styles dropdown and its 📋 button (placed under the Generate button, as in A1111)."""
    with gr.Row(elem_id=f"{tab}_styles_row"):
        selected = gr.Dropdown(label="Styles", choices=names(state), value=[], multiselect=True,
                               elem_id=f"{tab}_styles", scale=4)
        apply = gr.Button("📋", elem_id=f"{tab}_style_apply", scale=0, min_width=40)
    return StyleControls(selected, apply)


def create_editor(state: AppState, prompt: gr.Textbox, negative: gr.Textbox, controls: StyleControls,
                  tab: str = "txt2img") -> None:
    """The "Styles" accordion: pick a style by name (or type a new one), copy the prompts into it, save, delete."""
    with gr.Accordion("Edit styles", open=False, elem_id=f"{tab}_styles_editor"):
        with gr.Row():
            name = gr.Dropdown(label="Style", choices=names(state), value=None, allow_custom_value=True,
                               elem_id=f"{tab}_edit_style_name", scale=4)
            copy = gr.Button("Copy from prompt", elem_id=f"{tab}_edit_style_copy", scale=1)
        style_prompt = gr.Textbox(label="Style prompt", lines=2, elem_id=f"{tab}_edit_style_prompt")
        style_negative = gr.Textbox(label="Style negative prompt", lines=2, elem_id=f"{tab}_edit_style_neg_prompt")
        with gr.Row():
            save = gr.Button("Save style", variant="primary", elem_id=f"{tab}_edit_style_save")
            delete = gr.Button("Delete style", variant="stop", elem_id=f"{tab}_edit_style_delete")

    def show(style_name: str | None):
        database = styles.for_state(state)
        known = {s.name: s for s in database.styles}
        style = known.get(style_name or "")
        return (style.prompt, style.negative_prompt) if style else (gr.skip(), gr.skip())

    def save_style(style_name: str | None, text: str, negative_text: str):
        if not (style_name or "").strip():
            raise gr.Error("Type a name for the style first")
        try:
            styles.for_state(state).save_style(style_name.strip(), text, negative_text)
        except (ValueError, OSError) as e:
            raise gr.Error(f"Style not saved: {e}") from e
        gr.Info(f"Style {style_name.strip()!r} saved")
        return _refreshed(state, style_name.strip())

    def delete_style(style_name: str | None, chosen: list[str] | None):
        try:
            styles.for_state(state).delete_style(style_name or "")
        except (LookupError, OSError) as e:
            raise gr.Error(str(e)) from e
        choices = names(state)
        return (gr.update(choices=choices, value=[n for n in (chosen or []) if n != style_name]),
                gr.update(choices=choices, value=None), "", "")

    name.input(show, inputs=name, outputs=[style_prompt, style_negative], queue=False, api_visibility="private")
    copy.click(lambda p, n: (p, n), inputs=[prompt, negative], outputs=[style_prompt, style_negative], queue=False,
               api_visibility="private")
    save.click(save_style, inputs=[name, style_prompt, style_negative], outputs=[controls.selected, name],
               api_visibility="private")
    delete.click(delete_style, inputs=[name, controls.selected],
                 outputs=[controls.selected, name, style_prompt, style_negative],
                 api_visibility="private")


def _refreshed(state: AppState, name: str | None) -> tuple:
    choices = names(state)
    return gr.update(choices=choices), gr.update(choices=choices, value=name)


def wire_apply(state: AppState, controls: StyleControls, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    """📋: merge the selected styles into the prompt boxes and clear the selection (A1111's behaviour)."""

    def apply(text: str, negative_text: str, selected: list[str] | None):
        new_prompt, new_negative = apply_selected(state, text, negative_text, selected)
        return new_prompt, new_negative, gr.update(value=[])

    controls.apply.click(apply, inputs=[prompt, negative, controls.selected],
                         outputs=[prompt, negative, controls.selected], api_visibility="private")
