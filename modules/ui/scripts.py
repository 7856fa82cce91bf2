"""The "Script" dropdown at the bottom of the txt2img and img2img settings, with the controls of the X/Y/Z plot and
of Prompts from file or textbox (A1111 1.10's labels, defaults and element ids: ``script_txt2img_xyz_plot_x_type``
and so on; the dropdown, which A1111 calls ``script_list`` on both tabs, is ``txt2img_script_list`` /
``img2img_script_list``: ids are unique here).

An axis with a list of choices (sampler, checkpoint, VAE, ...) takes its values from a multi-select dropdown, which
📒 fills with every choice; "Use text inputs instead of dropdowns" writes them as text instead. The handlers only
move values between controls; :func:`settings_of` turns the controls into the chosen script's settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules import prompts_from_file, scripts, xyz_axes, xyz_grid
from modules.state import AppState

NONE = "None"
FILL = "📒"


@dataclass
class AxisControls:
    type: gr.Dropdown
    values: gr.Textbox
    dropdown: gr.Dropdown
    fill: gr.Button

    def inputs(self) -> list[gr.components.Component]:
        return [self.type, self.values, self.dropdown]


@dataclass
class PromptsControls:
    """Prompts from file or textbox: its two seed checkboxes, where the prompts go, and the list (a file dropped
    on "Upload prompt inputs" fills it)."""

    box: gr.Column
    iterate: gr.Checkbox
    same_seed: gr.Checkbox
    position: gr.Radio
    text: gr.Textbox
    upload: gr.File

    def inputs(self) -> list[gr.components.Component]:
        return [self.iterate, self.same_seed, self.position, self.text]


@dataclass
class ScriptControls:
    """The Script dropdown and the X/Y/Z plot's controls; :meth:`job_inputs` are :func:`settings_of`'s arguments."""

    script: gr.Dropdown
    box: gr.Column
    axes: tuple[AxisControls, AxisControls, AxisControls]
    draw_legend: gr.Checkbox
    include_lone_images: gr.Checkbox
    include_sub_grids: gr.Checkbox
    no_fixed_seeds: gr.Checkbox
    vary_seeds: tuple[gr.Checkbox, gr.Checkbox, gr.Checkbox]
    margin_size: gr.Slider
    csv_mode: gr.Checkbox
    prompts: PromptsControls

    def job_inputs(self) -> list[gr.components.Component]:
        return [self.script, *(c for a in self.axes for c in a.inputs()), self.draw_legend, self.include_lone_images,
                self.include_sub_grids, self.no_fixed_seeds, *self.vary_seeds, self.margin_size, self.csv_mode,
                *self.prompts.inputs()]

    def paste_targets(self) -> dict[str, gr.components.Component]:
        """The controls a pasted grid infotext fills (``png_info.PASTE_FIELDS`` names)."""
        targets: dict[str, gr.components.Component] = {"script": self.script}
        for letter, axis in zip("xyz", self.axes):
            targets |= {f"{letter}_type": axis.type, f"{letter}_values": axis.values,
                        f"{letter}_values_dropdown": axis.dropdown}
        return targets


def create(state: AppState, tab: str) -> ScriptControls:
    """The dropdown and, shown while "X/Y/Z plot" is chosen, the plot's controls."""
    labels = [a.label for a in xyz_axes.axes_for(tab)]
    with gr.Column(elem_id=f"{tab}_script_container"):
        script = gr.Dropdown(label="Script", choices=[NONE, *(s.title for s in scripts.SCRIPTS)], value=NONE,
                             elem_id=f"{tab}_script_list")
        with gr.Column(visible=False, elem_id=f"script_{tab}_xyz_plot") as box:
            axes = []
            for letter, default in (("x", "Seed"), ("y", "Nothing"), ("z", "Nothing")):
                with gr.Row():
                    kind = gr.Dropdown(label=f"{letter.upper()} type", choices=labels, value=default,
                                       elem_id=f"script_{tab}_xyz_plot_{letter}_type")
                    values = gr.Textbox(label=f"{letter.upper()} values", value="", lines=1,
                                        elem_id=f"script_{tab}_xyz_plot_{letter}_values")
                    dropdown = gr.Dropdown(label=f"{letter.upper()} values", choices=[], value=[], multiselect=True,
                                           allow_custom_value=True, visible=False,
                                           elem_id=f"script_{tab}_xyz_plot_{letter}_values_dropdown")
                    fill = gr.Button(FILL, visible=False, scale=0, min_width=40,
                                     elem_id=f"xyz_grid_fill_{letter}_tool_button_{tab}")
                axes.append(AxisControls(kind, values, dropdown, fill))
            with gr.Row(elem_id=f"{tab}_xyz_axis_options"):
                with gr.Column():
                    draw_legend = gr.Checkbox(label="Draw legend", value=True,
                                              elem_id=f"script_{tab}_xyz_plot_draw_legend")
                    no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False,
                                                 elem_id=f"script_{tab}_xyz_plot_no_fixed_seeds")
                    with gr.Row():
                        vary = tuple(gr.Checkbox(label=f"Vary seeds for {letter}", value=False,
                                                 elem_id=f"script_{tab}_xyz_plot_vary_seeds_{letter.lower()}")
                                     for letter in "XYZ")
                with gr.Column():
                    lone = gr.Checkbox(label="Include Sub Images", value=False,
                                       elem_id=f"script_{tab}_xyz_plot_include_lone_images")
                    sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                            elem_id=f"script_{tab}_xyz_plot_include_sub_grids")
                with gr.Column():
                    margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)",
                                       elem_id=f"script_{tab}_xyz_plot_margin_size")
                with gr.Column():
                    csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                           elem_id=f"script_{tab}_xyz_plot_csv_mode")
            with gr.Row():
                swaps = [gr.Button(f"Swap {a}/{b} axes", size="sm", elem_id=f"{tab}_{a.lower()}{b.lower()}_grid_swap_axes_button")
                         for a, b in (("X", "Y"), ("Y", "Z"), ("X", "Z"))]
        prompts = _prompts_controls(tab)
    controls = ScriptControls(script, box, tuple(axes), draw_legend, lone, sub_grids, no_fixed_seeds, vary, margin,
                              csv_mode, prompts)  # type: ignore[arg-type]
    _wire(state, tab, controls, swaps)
    return controls


def _prompts_controls(tab: str) -> PromptsControls:
    prefix = f"script_{tab}_prompts_from_file_or_textbox_"
    with gr.Column(visible=False, elem_id=f"script_{tab}_prompts_from_file") as box:
        iterate = gr.Checkbox(label="Iterate seed every line", value=False, elem_id=prefix + "checkbox_iterate")
        same_seed = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                elem_id=prefix + "checkbox_iterate_batch")
        position = gr.Radio(label="Insert prompts at the", choices=list(prompts_from_file.POSITIONS), value="start",
                            elem_id=prefix + "prompt_position")
        text = gr.Textbox(label="List of prompt inputs", value="", lines=1, elem_id=prefix + "prompt_txt")
        upload = gr.File(label="Upload prompt inputs", type="binary", height=120, elem_id=prefix + "file")
    return PromptsControls(box, iterate, same_seed, position, text, upload)


def read_upload(data: bytes | None) -> tuple[object, dict]:
    """A dropped prompt file into the list (UTF-8; A1111 reads it as text too), one line per job shown."""
    if not data:
        return gr.skip(), gr.skip()
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise gr.Error(f"The prompt file is not UTF-8 text ({e}); save it as UTF-8 and drop it again") from e
    return None, gr.update(value=text, lines=min(max(text.count("\n") + 1, 1), 7))


def _wire(state: AppState, tab: str, c: ScriptControls, swaps: list[gr.Button]) -> None:
    quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
    c.script.change(lambda name: (gr.update(visible=name == xyz_grid.TITLE),
                                  gr.update(visible=name == prompts_from_file.TITLE)),
                    inputs=c.script, outputs=[c.box, c.prompts.box], **quiet)
    c.prompts.upload.upload(read_upload, inputs=c.prompts.upload, outputs=[c.prompts.upload, c.prompts.text],
                            **quiet)
    x, y, z = c.axes
    for first, second, button in ((x, y, swaps[0]), (y, z, swaps[1]), (x, z, swaps[2])):
        pair = [*first.inputs(), *second.inputs()]
        button.click(lambda *v: (*v[3:], *v[:3]), inputs=pair, outputs=pair, **quiet)
    for axis in c.axes:
        # .change also follows a paste (which sets the values itself); .input is the user's pick, whose values
        # are carried over to the new axis as A1111 does
        axis.type.change(lambda label, csv: show_axis(state, tab, label, csv), inputs=[axis.type, c.csv_mode],
                         outputs=[axis.fill, axis.values, axis.dropdown], **quiet)
        axis.type.input(lambda label, text, listed, csv: carry_values(state, tab, label, text, listed, csv),
                        inputs=[axis.type, axis.values, axis.dropdown, c.csv_mode],
                        outputs=[axis.values, axis.dropdown], **quiet)
        axis.fill.click(lambda label, csv: fill(state, tab, label, csv), inputs=[axis.type, c.csv_mode],
                        outputs=[axis.values, axis.dropdown], **quiet)
    every = [c.csv_mode, *(i for a in c.axes for i in a.inputs())]

    def csv_changed(csv: bool, *values):
        out = []
        for i in range(3):
            label, text, listed = values[i * 3:i * 3 + 3]
            fill_button, text_box, dropdown = show_axis(state, tab, label, csv)
            text, listed = carry_values(state, tab, label, text, listed, csv)
            out += [fill_button, {**text_box, **text}, {**dropdown, **listed}]
        return out

    c.csv_mode.change(csv_changed, inputs=every, outputs=[o for a in c.axes for o in (a.fill, a.values, a.dropdown)],
                      **quiet)


def _choices(state: AppState, tab: str, label: str) -> list[str] | None:
    axis = _axis(label, tab)
    return axis.choices(state) if axis is not None and axis.choices is not None else None


def show_axis(state: AppState, tab: str, label: str, csv: bool) -> tuple[dict, dict, dict]:
    """Which value control an axis shows: a choice axis 📒 and (unless ``csv``) the dropdown with its choices."""
    choices = _choices(state, tab, label)
    if choices is None:
        return gr.update(visible=False), gr.update(visible=True), gr.update(visible=False)
    return (gr.update(visible=True), gr.update(visible=csv),
            gr.update(visible=not csv, choices=choices))


def carry_values(state: AppState, tab: str, label: str, text: str, listed: list[str] | None,
                 csv: bool) -> tuple[dict, dict]:
    """The values kept when the user picks another axis or text mode (as A1111 does): into the dropdown, those of
    the text (or of the dropdown) that are choices of the axis; into the text, the dropdown's as CSV."""
    choices = _choices(state, tab, label)
    if choices is None:
        return gr.update(value=text or ""), gr.update(value=[])
    if csv:
        return gr.update(value=xyz_axes.to_csv(listed) if listed else text or ""), gr.update(value=[])
    kept = [v for v in (list(listed or []) or xyz_axes.split_csv(text or "")) if v in choices]
    return gr.update(value=""), gr.update(value=kept)


def fill(state: AppState, tab: str, label: str, csv: bool) -> tuple:
    """📒: every choice of the axis, into the dropdown (or as CSV text)."""
    choices = _choices(state, tab, label)
    if choices is None:
        return gr.skip(), gr.skip()
    return (xyz_axes.to_csv(choices), gr.skip()) if csv else (gr.skip(), gr.update(choices=choices, value=choices))


def _axis(label: str, tab: str) -> xyz_axes.Axis | None:
    try:
        return xyz_axes.find_axis(label, tab)
    except xyz_axes.AxisError:
        return None


def settings_of(script: str, *values) -> tuple[scripts.Script, object] | None:
    """The script chosen and its settings from the controls (:meth:`ScriptControls.job_inputs` order after the
    dropdown); None for no script."""
    if script == xyz_grid.TITLE:
        axes = [xyz_grid.AxisSetting(values[i], values[i + 1] or "", tuple(values[i + 2] or ())) for i in (0, 3, 6)]
        legend, lone, sub_grids, keep, vary_x, vary_y, vary_z, margin, csv = values[9:18]
        return scripts.find(script), xyz_grid.XyzSettings(
            *axes, bool(legend), bool(lone), bool(sub_grids), bool(keep), (bool(vary_x), bool(vary_y), bool(vary_z)),
            int(margin or 0), bool(csv))
    if script == prompts_from_file.TITLE:
        iterate, same_seed, position, text = values[18:22]
        return scripts.find(script), prompts_from_file.PromptsSettings(bool(iterate), bool(same_seed),
                                                                       str(position or "start"), str(text or ""))
    return None
