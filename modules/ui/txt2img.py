"""The page (Gradio 6 Blocks): quicksettings, the txt2img and img2img tabs in A1111 1.10's layout, PNG Info, Train
and Settings.

No business logic here: handlers build :class:`GenerationParams` and submit :func:`processing.process` to the
job queue shared with the API, follow it with :mod:`modules.ui.progress`, or change a setting through the queue
(the checkpoint switch). The other tabs live in their own modules; this one wires them together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gradio as gr

from modules import hires, processing, samplers
from modules.processing_params import GenerationParams
from modules.state import AppState
from modules.ui import assets, common, extra_networks_panel, png_info, progress, results, settings, style_editor
from modules.ui import img2img as img2img_ui
from modules.ui import scripts as scripts_ui
from modules.ui import train

logger = logging.getLogger(__name__)

# the controls "Send to txt2img/img2img" can fill, by the names png_info.PASTE_FIELDS uses (each tab has some)
PASTE_TARGETS = ("prompt", "negative", "sampler", "schedule", "steps", "width", "height", "batch_size", "cfg_scale",
                 "seed", "subseed", "subseed_strength", "clip_skip", "seed_resize_from_w", "seed_resize_from_h",
                 "enable_hr", "denoising_strength", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
                 "hr_resize_y", "hr_sampler", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_checkpoint",
                 "mask_blur", "mask_mode", "inpainting_fill", "inpaint_area", "padding", "script", "x_type", "x_values",
                 "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type", "z_values",
                 "z_values_dropdown")


@dataclass
class HiresControls:
    """A1111's "Hires. fix" accordion. The value controls come first, in :func:`build_params`' argument order."""

    enable_hr: gr.Checkbox
    denoising_strength: gr.Slider
    hr_scale: gr.Slider
    hr_upscaler: gr.Dropdown
    hr_second_pass_steps: gr.Slider
    hr_resize_x: gr.Slider
    hr_resize_y: gr.Slider
    hr_sampler: gr.Dropdown
    hr_scheduler: gr.Dropdown
    hr_prompt: gr.Textbox
    hr_negative_prompt: gr.Textbox
    hr_checkpoint: gr.Dropdown
    accordion: gr.Accordion
    final_resolution: gr.HTML

    def job_inputs(self) -> list[gr.components.Component]:
        return [self.enable_hr, self.denoising_strength, self.hr_scale, self.hr_upscaler, self.hr_second_pass_steps,
                self.hr_resize_x, self.hr_resize_y, self.hr_sampler, self.hr_scheduler, self.hr_prompt,
                self.hr_negative_prompt, self.hr_checkpoint]


@dataclass
class Txt2ImgControls:
    prompt: gr.Textbox
    negative: gr.Textbox
    styles: style_editor.StyleControls
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    subseed: gr.Number
    subseed_strength: gr.Slider
    clip_skip: gr.Slider
    overrides: gr.Dropdown
    seed_resize_from_w: gr.Slider
    seed_resize_from_h: gr.Slider
    hires: HiresControls | None  # txt2img's
    img2img: img2img_ui.Img2ImgControls | None  # img2img's
    gallery: gr.Gallery
    generation_info: gr.State  # results.GenerationInfo of the last job, as a dict
    selected: gr.State  # the gallery index selected (None: none)
    send_to_img2img: gr.Button
    scripts: scripts_ui.ScriptControls

    def job_inputs(self) -> list[gr.components.Component]:
        """The inputs of :func:`build_params` (txt2img) or :func:`img2img_ui.build_params`, in argument order."""
        common = [self.prompt, self.negative, self.styles.selected, self.sampler, self.schedule, self.steps,
                  self.width, self.height, self.batch_count, self.batch_size, self.cfg_scale, self.seed,
                  self.subseed, self.subseed_strength, self.clip_skip, self.overrides, self.seed_resize_from_w,
                  self.seed_resize_from_h]
        if self.img2img is not None:
            return [*self.img2img.job_inputs(), *common, *self.scripts.job_inputs()]
        return [*common, *self.hires.job_inputs(), *self.scripts.job_inputs()]

    def paste_targets(self) -> dict[str, gr.components.Component]:
        """The controls a pasted infotext fills, by :data:`PASTE_TARGETS` name (img2img's: no Hires. fix)."""
        found = {**(vars(self.hires) if self.hires else {}), **(vars(self.img2img) if self.img2img else {}),
                 **self.scripts.paste_targets(), **vars(self)}
        return {name: found[name] for name in PASTE_TARGETS if isinstance(found.get(name), gr.components.Component)}


def create_ui(state: AppState) -> gr.Blocks:
    """Build (not launch) the page for ``state``."""
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        notice = gr.Markdown(common.notices(state), visible=bool(state.notices), elem_id="notices")
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=common.checkpoint_titles(state),
                                     value=common.current_title(state), elem_id="setting_sd_model_checkpoint",
                                     interactive=not common.frozen(state))
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            vae = gr.Dropdown(label="SD VAE", choices=common.vae_choices(state), value=str(state.opts["sd_vae"]),
                              elem_id="setting_sd_vae", interactive=not common.frozen(state))
        js_options = gr.JSON(assets.js_options(state.opts), visible=False, elem_id="webui_js_options")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                controls, progress_html = _generation_tab(state, checkpoint)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i, _ = _generation_tab(state, checkpoint, "img2img")
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png_image, parameters, send, send_img2img = png_info.create_tab(state)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train.create_tab(state, [getattr(controls, name) for name in train.PREVIEW_PARAMS])
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                setting_controls, submit, _ = settings.create_tab(state)

        png_info.wire_send(state, send, [parameters], controls.paste_targets(), checkpoint, controls.overrides, tabs)
        shown = img2img_ui.show_plain(i2i.img2img)
        png_info.wire_send(state, send_img2img, [parameters, png_image], i2i.paste_targets(), checkpoint, i2i.overrides,
                           tabs, "img2img", i2i.img2img.image, also=shown)
        png_info.wire_send(state, controls.send_to_img2img, [controls.generation_info, controls.selected,
                                                             controls.gallery],
                           i2i.paste_targets(), checkpoint, i2i.overrides, tabs, "img2img", i2i.img2img.image,
                           source=results.picked_image, also=shown)
        png_info.wire_send(state, i2i.send_to_img2img, [i2i.generation_info, i2i.selected, i2i.gallery],
                           i2i.paste_targets(), checkpoint, i2i.overrides, tabs, "img2img", i2i.img2img.image,
                           source=results.picked_image, also=shown)  # a result as the next start (A1111 too)
        submit.click(lambda: assets.js_options(state.opts), outputs=js_options, queue=False,
                     api_visibility="private").then(None, inputs=js_options, js=assets.SET_OPTIONS_JS)
        hr_checkpoint = controls.hires.hr_checkpoint
        _wire_quicksettings(state, checkpoint, vae, refresh, hr_checkpoint)

        def on_load(hr_title: str | None):
            return (gr.update(value=common.notices(state), visible=bool(state.notices)),
                    gr.update(choices=common.checkpoint_titles(state), value=common.current_title(state)),
                    gr.update(choices=common.vae_choices(state), value=str(state.opts["sd_vae"])),
                    hires_checkpoint_update(state, hr_title), assets.js_options(state.opts),
                    *settings.current_values(state))

        demo.load(None, js=assets.load_js())
        demo.load(on_load, inputs=hr_checkpoint,
                  outputs=[notice, checkpoint, vae, hr_checkpoint, js_options, *setting_controls.values()],
                  api_visibility="private").then(None, inputs=js_options, js=assets.LOADED_JS)

        def watch_running():  # a page opened while another page's or the API's job runs shows that job
            yield from progress.watch_running(state)

        demo.load(watch_running, outputs=progress_html, show_progress="hidden", api_visibility="private")
    return demo


def _generation_tab(state: AppState, checkpoint: gr.Dropdown, tab: str = "txt2img") -> tuple[Txt2ImgControls, gr.HTML]:
    """The txt2img tab, or (``tab="img2img"``) A1111's img2img tab: the same prompts, networks panel, sampler,
    size, seeds and results (every element id prefixed with the tab's name, as in A1111), plus the picture to start
    from, the resize mode and the denoising strength instead of the Hires. fix accordion."""
    with gr.Row(elem_id=f"{tab}_toprow"):
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_prompt",
                                placeholder="Prompt (press Ctrl+Enter to generate, Alt+Enter to skip)")
            prompt_count = gr.Markdown("0/75", elem_id=f"{tab}_token_counter", elem_classes="webui-token-counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_neg_prompt",
                                  placeholder="Negative prompt (press Ctrl+Enter to generate)")
            negative_count = gr.Markdown("0/75", elem_id=f"{tab}_negative_token_counter",
                                         elem_classes="webui-token-counter")
        with gr.Column(scale=2, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{tab}_skip")
            style_controls = style_editor.create_row(state, tab)
    extra_networks_panel.create_panel(state, prompt, negative, checkpoint)
    with gr.Row(equal_height=False):
        with gr.Column(elem_id=f"{tab}_settings"):
            i2i_controls = img2img_ui.create_inputs() if tab == "img2img" else None
            with gr.Row():
                sampler = gr.Dropdown(label="Sampling method", elem_id=f"{tab}_sampling",
                                      choices=[s.name for s in samplers.SAMPLERS], value="DPM++ 2M")
                schedule = gr.Dropdown(label="Schedule type", elem_id=f"{tab}_scheduler",
                                       choices=list(samplers.SCHEDULE_NAMES.values()), value="Automatic")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
            # A1111's "accordions" row: after the sampler, before the size
            hires_controls = _hires_section(state) if tab == "txt2img" else None
            with gr.Row():
                with gr.Column(scale=4):
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tab}_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tab}_height")
                swap = gr.Button("⇅", elem_id=f"{tab}_res_switch_btn", scale=0, min_width=40)
                with gr.Column(scale=2):
                    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
            cfg_scale = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")
            if i2i_controls is not None:
                i2i_controls.denoising_strength = img2img_ui.denoising_slider()
            with gr.Row(elem_id=f"{tab}_seed_row"):
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{tab}_seed", scale=4)
                random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", scale=0, min_width=40)
                reuse_seed = gr.Button("♻️", elem_id=f"{tab}_reuse_seed", scale=0, min_width=40)
            with gr.Row(elem_id=f"{tab}_subseed_row"):
                subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{tab}_subseed", scale=4)
                random_subseed = gr.Button("🎲", elem_id=f"{tab}_random_subseed", scale=0, min_width=40)
                reuse_subseed = gr.Button("♻️", elem_id=f"{tab}_reuse_subseed", scale=0, min_width=40)
                subseed_strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                             elem_id=f"{tab}_subseed_strength", scale=4)
            with gr.Row(elem_id=f"{tab}_seed_resize_row"):  # 0: off (the seed is used at the size asked)
                seed_resize_from_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                               elem_id=f"{tab}_seed_resize_from_w")
                seed_resize_from_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                               elem_id=f"{tab}_seed_resize_from_h")
            clip_skip = gr.Slider(1, 12, value=int(state.opts["CLIP_stop_at_last_layers"]), step=1, label="Clip skip",
                                  elem_id=f"{tab}_clip_skip")
            overrides = gr.Dropdown(label="Override settings", choices=[], value=[], multiselect=True,
                                    allow_custom_value=True, visible=False, elem_id=f"{tab}_override_settings")
            script_controls = scripts_ui.create(state, tab)
            style_editor.create_editor(state, prompt, negative, style_controls, tab)
        with gr.Column(elem_id=f"{tab}_results"):
            progress_html = gr.HTML("", elem_id=f"{tab}_progress")
            gallery = gr.Gallery(label="Output", columns=4, height="auto", buttons=["download", "fullscreen"],
                                 elem_id=f"{tab}_gallery", format="png", interactive=False, type="filepath")
            with gr.Row(elem_id=f"image_buttons_{tab}"):
                send_to_img2img = gr.Button("🖼️ Send to img2img", elem_id=f"{tab}_send_to_img2img", size="sm",
                                            scale=0, min_width=160)
            info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"html_info_{tab}")
            generation_info = gr.State({})
            selected = gr.State(None)

    controls = Txt2ImgControls(prompt, negative, style_controls, sampler, schedule, steps, width, height, batch_count,
                               batch_size, cfg_scale, seed, subseed, subseed_strength, clip_skip, overrides,
                               seed_resize_from_w, seed_resize_from_h, hires_controls, i2i_controls, gallery,
                               generation_info, selected, send_to_img2img, script_controls)
    make_params = img2img_ui.build_params if i2i_controls is not None else build_params
    script_count = len(script_controls.job_inputs())

    def run(*values):
        params = make_params(state, *values[:-script_count])
        chosen = scripts_ui.settings_of(*values[-script_count:])
        if chosen is None:
            job_id, future = state.queue.submit(processing.process, state, params)
        else:
            script, settings = chosen
            try:  # every job of the script checked before it is queued
                plan = script.plan(state, params, settings)
            except ValueError as e:
                raise gr.Error(str(e)) from e
            job_id, future = state.queue.submit(script.run, state, plan)
        logger.debug("%s job %s queued", tab, job_id)
        for html_text in progress.follow(state, job_id, future):
            yield gr.skip(), gr.skip(), html_text, gr.skip(), gr.skip()
        try:
            processed = future.result()
        except Exception as e:  # the page shows every failure; the server keeps serving
            yield gr.skip(), gr.skip(), "", gr.skip(), gr.skip()
            message = str(e) if isinstance(e, (ValueError, LookupError, RuntimeError)) else f"{type(e).__name__}: {e}"
            raise gr.Error(message) from e
        shown = min(processed.index_of_first_image, len(processed.infotexts) - 1)  # an X/Y/Z plot: its grid alone
        text = processed.infotexts[shown] if processed.infotexts else ""
        if processed.comments:
            text += "\n\n" + "\n".join(processed.comments)
        yield (results.gallery_files(processed), text, "", results.GenerationInfo.of(processed).as_dict(), None)

    outputs = [gallery, info, progress_html, generation_info, selected]
    generate.click(run, inputs=controls.job_inputs(), outputs=outputs, concurrency_limit=None,
                   show_progress="hidden", api_name=tab)
    interrupt.click(lambda: state.job.interrupt(), queue=False, api_visibility="private")
    skip.click(lambda: state.job.skip(), queue=False, api_visibility="private")
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False,
               api_visibility="private")
    random_seed.click(lambda: -1, outputs=seed, queue=False, api_visibility="private")
    random_subseed.click(lambda: -1, outputs=subseed, queue=False, api_visibility="private")
    reuse_seed.click(lambda data, index: results.GenerationInfo.from_dict(data).seed_of(index),
                     inputs=[generation_info, selected], outputs=seed, queue=False, api_visibility="private")
    reuse_subseed.click(lambda data, index: results.GenerationInfo.from_dict(data).seed_of(index, sub=True),
                        inputs=[generation_info, selected], outputs=subseed, queue=False, api_visibility="private")

    def select_image(data: dict, event: gr.SelectData):
        generation = results.GenerationInfo.from_dict(data)
        return generation.infotext_of(event.index), event.index

    gallery.select(select_image, inputs=generation_info, outputs=[info, selected], queue=False,
                   api_visibility="private")
    for box, counter, positive in ((prompt, prompt_count, True), (negative, negative_count, False)):
        box.change(lambda text, n, p=positive: common.token_count(state, text, n, p), inputs=[box, steps],
                   outputs=counter, queue=False, trigger_mode="always_last", show_progress="hidden",
                   api_visibility="private")
    style_editor.wire_apply(state, style_controls, prompt, negative)
    if hires_controls is not None:
        _wire_hires(hires_controls, width, height)
    return controls, progress_html


def _hires_section(state: AppState) -> HiresControls:
    """A1111 1.10's Hires. fix accordion (labels, ranges, defaults and element ids as there), closed and off.

    The sampler row (with the hires checkpoint, first as in A1111) and the prompt row, which A1111 hides behind two
    settings, are always shown. The checkpoint list has no 🔄 of its own: the quicksettings one and page loads
    refresh it (:func:`hires_checkpoint_update`).
    """
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr") as accordion:
        with gr.Row(elem_id="txt2img_hires_fix_row0"):
            enable_hr = gr.Checkbox(label="Hires. fix", value=False, elem_id="txt2img_hr-checkbox", scale=0,
                                    min_width=120)
            final_resolution = gr.HTML("", elem_id="txt2img_hr_finalres")
        with gr.Row(elem_id="txt2img_hires_fix_row1"):
            hr_upscaler = gr.Dropdown(label="Upscaler", choices=list(hires.UPSCALERS), value=hires.DEFAULT_UPSCALER,
                                      elem_id="txt2img_hr_upscaler")
            hr_second_pass_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                             elem_id="txt2img_hires_steps")
            denoising_strength = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                           elem_id="txt2img_denoising_strength")
        with gr.Row(elem_id="txt2img_hires_fix_row2"):
            hr_scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            hr_resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
            hr_resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                    elem_id="txt2img_hr_resize_y")
        with gr.Row(elem_id="txt2img_hires_fix_row3"):
            hr_checkpoint = gr.Dropdown(label="Hires checkpoint", elem_id="hr_checkpoint",
                                        choices=common.hires_checkpoint_choices(state), value=png_info.SAME_CHECKPOINT)
            hr_sampler = gr.Dropdown(label="Hires sampling method", elem_id="hr_sampler",
                                     choices=[png_info.SAME_SAMPLER, *(s.name for s in samplers.SAMPLERS)],
                                     value=png_info.SAME_SAMPLER)
            hr_scheduler = gr.Dropdown(label="Hires schedule type", elem_id="hr_scheduler",
                                       choices=[png_info.SAME_SCHEDULER, *samplers.SCHEDULE_NAMES.values()],
                                       value=png_info.SAME_SCHEDULER)
        with gr.Row(elem_id="txt2img_hires_fix_row4"):
            hr_prompt = gr.Textbox(label="Hires prompt", value="", lines=3, elem_id="hires_prompt",
                                   placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt as in "
                                               "first pass.")
            hr_negative_prompt = gr.Textbox(label="Hires negative prompt", value="", lines=3,
                                            elem_id="hires_neg_prompt",
                                            placeholder="Negative prompt for hires fix pass.\nLeave empty to use the "
                                                        "same negative prompt as in first pass.")
    return HiresControls(enable_hr, denoising_strength, hr_scale, hr_upscaler, hr_second_pass_steps, hr_resize_x,
                         hr_resize_y, hr_sampler, hr_scheduler, hr_prompt, hr_negative_prompt, hr_checkpoint,
                         accordion, final_resolution)


def hires_checkpoint_update(state: AppState, value: str | None) -> dict:
    """The "Hires checkpoint" dropdown with the current list, keeping the checkpoint chosen.

    A title that changed since the list was made (a checkpoint is titled with its hash once first loaded) is
    replaced by the new one; a checkpoint that is gone falls back to "Use same checkpoint", so the dropdown never
    holds a value outside its choices (which Gradio would refuse on the next Generate).
    """
    choices = common.hires_checkpoint_choices(state)
    if value not in choices:
        try:
            value = state.models.find(str(value)).title if value else png_info.SAME_CHECKPOINT
        except LookupError:
            value = png_info.SAME_CHECKPOINT
    return gr.update(choices=choices, value=value)


def _wire_hires(h: HiresControls, width: gr.Slider, height: gr.Slider) -> None:
    """Keep the accordion and its checkbox together, and the "from WxH to WxH" line current.

    As in A1111 (while its header checkbox was not clicked on its own), opening the accordion turns Hires. fix on
    and closing it turns it off; a paste that turns it on opens the accordion, so what will run is in view.
    """
    h.accordion.expand(lambda: True, outputs=h.enable_hr, queue=False, api_visibility="private")
    h.accordion.collapse(lambda: False, outputs=h.enable_hr, queue=False, api_visibility="private")
    h.enable_hr.change(lambda on: gr.Accordion(open=True) if on else gr.skip(), inputs=h.enable_hr,
                       outputs=h.accordion, queue=False, show_progress="hidden", api_visibility="private")
    inputs = [h.enable_hr, width, height, h.hr_scale, h.hr_resize_x, h.hr_resize_y]
    for component in inputs:
        component.change(hires_resolution, inputs=inputs, outputs=h.final_resolution, queue=False,
                         trigger_mode="always_last", show_progress="hidden", api_visibility="private")


def hires_resolution(enable: bool, width: float, height: float, hr_scale: float, hr_resize_x: float,
                     hr_resize_y: float) -> str:
    """A1111's "from 512x512 to 1024x1024" beside the Hires. fix checkbox ("" while it is off).

    The size is the hires target's (:func:`hires.target_size`); a "Resize width/height to" that is set is shown as
    asked, as A1111 does, rounded down to a multiple of 8.
    """
    if not enable:
        return ""
    try:
        params = GenerationParams(width=int(width), height=int(height), hr_scale=float(hr_scale),
                                  hr_resize_x=int(hr_resize_x or 0), hr_resize_y=int(hr_resize_y or 0))
        target = hires.target_size(params)
    except (TypeError, ValueError, ZeroDivisionError):  # a box being typed in; the next change fixes it
        return ""
    new_width = params.hr_resize_x or target.width
    new_height = params.hr_resize_y or target.height
    new_width, new_height = new_width - new_width % 8, new_height - new_height % 8
    return (f"from <span class='resolution'>{params.width}x{params.height}</span> "
            f"to <span class='resolution'>{new_width}x{new_height}</span>")


def build_params(state: AppState, prompt: str, negative: str, styles: list[str] | None, sampler: str, schedule: str,
                 steps: float, width: float, height: float, batch_count: float, batch_size: float, cfg_scale: float,
                 seed: float, subseed: float, subseed_strength: float, clip_skip: float,
                 overrides: list[str] | None, seed_resize_from_w: float = 0, seed_resize_from_h: float = 0,
                 enable_hr: bool = False, denoising_strength: float = 0.7, hr_scale: float = 2.0,
                 hr_upscaler: str | None = hires.DEFAULT_UPSCALER, hr_second_pass_steps: float = 0,
                 hr_resize_x: float = 0, hr_resize_y: float = 0, hr_sampler: str | None = png_info.SAME_SAMPLER,
                 hr_scheduler: str | None = png_info.SAME_SCHEDULER, hr_prompt: str | None = "",
                 hr_negative_prompt: str | None = "",
                 hr_checkpoint: str | None = png_info.SAME_CHECKPOINT) -> GenerationParams:
    """The job the controls describe (styles merged into the prompts), validated; ``gr.Error`` names a bad field.

    The hires values go as A1111's page sends them: the upscaler named (so the infotext says ``Hires upscaler:
    Latent``), "Use same sampler"/"Use same scheduler"/"Use same checkpoint" as None, empty hires prompts as ""
    (the first pass's); a hires checkpoint goes by the title chosen, which the job resolves when it runs.
    """
    prompt, negative = style_editor.apply_selected(state, prompt or "", negative or "", styles)
    try:
        params = GenerationParams(
            prompt=prompt, negative_prompt=negative, sampler_name=sampler, scheduler=schedule, steps=int(steps),
            width=int(width), height=int(height), n_iter=int(batch_count), batch_size=int(batch_size),
            cfg_scale=number_value(cfg_scale), seed=int(seed if seed is not None else -1),
            subseed=int(subseed if subseed is not None else -1), subseed_strength=float(subseed_strength),
            seed_resize_from_w=int(seed_resize_from_w or 0), seed_resize_from_h=int(seed_resize_from_h or 0),
            clip_skip=int(clip_skip), override_settings=png_info.parse_overrides(overrides),
            enable_hr=bool(enable_hr), denoising_strength=number_value(denoising_strength),
            hr_scale=number_value(hr_scale),
            hr_upscaler=hr_upscaler or None, hr_second_pass_steps=int(hr_second_pass_steps or 0),
            hr_resize_x=int(hr_resize_x or 0), hr_resize_y=int(hr_resize_y or 0),
            hr_sampler_name=None if hr_sampler in (None, "", png_info.SAME_SAMPLER) else hr_sampler,
            hr_scheduler=None if hr_scheduler in (None, "", png_info.SAME_SCHEDULER) else hr_scheduler,
            hr_prompt=hr_prompt or "", hr_negative_prompt=hr_negative_prompt or "",
            hr_checkpoint_name=None if hr_checkpoint in (None, "", png_info.SAME_CHECKPOINT) else hr_checkpoint)
        return params.validate()
    except (ValueError, LookupError, TypeError) as e:  # TypeError: a value missing (None) from an API caller
        raise gr.Error(str(e)) from e


def number_value(value: float) -> float | int:
    """A whole slider value as an int: A1111's page sends 7 for CFG 7, so its infotext says ``CFG scale: 7``."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _wire_quicksettings(state: AppState, checkpoint: gr.Dropdown, vae: gr.Dropdown, refresh: gr.Button,
                        hr_checkpoint: gr.Dropdown) -> None:
    """The checkpoint and VAE quicksettings, and 🔄, which rescans the folders for them and "Hires checkpoint".

    A switch also refreshes both checkpoint lists: loading a checkpoint the first time hashes it, changing its title.
    """
    def switch_checkpoint(title: str, hr_title: str | None):
        common.switch_checkpoint(state, title)
        return (gr.update(choices=common.checkpoint_titles(state), value=common.current_title(state)),
                hires_checkpoint_update(state, hr_title))

    def refresh_lists(hr_title: str | None):
        state.models.refresh()
        return (gr.update(choices=common.checkpoint_titles(state), value=common.current_title(state)),
                gr.update(choices=common.vae_choices(state)), hires_checkpoint_update(state, hr_title))

    checkpoint.input(switch_checkpoint, inputs=[checkpoint, hr_checkpoint], outputs=[checkpoint, hr_checkpoint],
                     api_visibility="private")
    vae.input(lambda name: common.switch_vae(state, name), inputs=vae, api_visibility="private")
    refresh.click(refresh_lists, inputs=hr_checkpoint, outputs=[checkpoint, vae, hr_checkpoint],
                  api_visibility="private")
