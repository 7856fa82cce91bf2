"""The page's handlers without a browser: infotext pasting, settings, progress, results, and the page over HTTP.

The browser-driven checks (keyboard, clicks, reloads) are in test_browser_ui.py; here the same handlers are called
directly on an :class:`AppState` over the tiny model, and once through the running server with gradio's client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from conftest import install_checkpoint
from modules import demo_model, hires, infotext
from modules.processing_params import GenerationParams
from modules.ui import common, png_info, progress, results, settings, style_editor, txt2img

FULL = ("a blue square, (soft:1.2)\nNegative prompt: blurry\nSteps: 6, Sampler: Euler, Schedule type: Exponential, "
        "CFG scale: 5.5, Seed: 31337, Size: 72x64, Model hash: {hash}, Model: tiny, Variation seed: 17, "
        "Variation seed strength: 0.25, Clip skip: 2, RNG: CPU, ENSD: 31337, Emphasis: No norm, Version: v1.10.1")

# what an infotext without hires fields pastes: Hires. fix off, and the fields A1111's parse fills back to defaults
HIRES_OFF = {"enable_hr": False, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler": "Use same sampler",
             "hr_scheduler": "Use same scheduler", "hr_prompt": "", "hr_negative_prompt": "",
             "hr_checkpoint": "Use same checkpoint"}
# as A1111 1.10 writes a hires job from its page (hires sampler, schedule and prompts changed)
HIRES = ("a red circle\nNegative prompt: blurry\nSteps: 8, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, "
         "Seed: 5, Size: 512x768, Model hash: 0123456789, Model: tiny, Denoising strength: 0.45, "
         "Hires sampler: DPM++ 2M, Hires prompt: \"a red circle, detailed\", Hires negative prompt: noisy, "
         "Hires upscale: 1.5, Hires steps: 12, Hires upscaler: Latent (nearest-exact), Hires schedule type: Karras, "
         "Version: v1.10.1")
# A1111's parsing defaults for the inpainting fields: every paste sets img2img's inpainting controls (txt2img has none)
INPAINT_DEFAULTS = {"mask_mode": "Inpaint masked", "inpainting_fill": "original", "inpaint_area": "Whole picture",
                    "padding": 32}


def test_paste_fills_every_named_field_and_lists_overrides(make_state) -> None:
    state = make_state()
    tiny = state.models.checkpoints[0]
    paste = png_info.paste_values(state, FULL.format(hash=tiny.shorthash))
    assert paste.values == {"prompt": "a blue square, (soft:1.2)", "negative": "blurry", "steps": 6, "cfg_scale": 5.5,
                            "seed": 31337, "width": 72, "height": 64, "subseed": 17, "subseed_strength": 0.25,
                            "clip_skip": 2, "sampler": "Euler", "schedule": "Exponential",
                            "seed_resize_from_w": 0, "seed_resize_from_h": 0,  # absent: off, not left as it was
                            **HIRES_OFF, **INPAINT_DEFAULTS, "script": "None"}  # no Script: none (A1111)
    assert paste.checkpoint == tiny
    assert sorted(paste.overrides) == ["ENSD: 31337", "Emphasis: No norm", "RNG: CPU"]
    assert not paste.warnings
    assert png_info.parse_overrides(paste.overrides) == {"randn_source": "CPU", "eta_noise_seed_delta": 31337,
                                                         "emphasis": "No norm"}


def test_a_grid_infotext_pastes_its_xyz_plot(make_state) -> None:
    state = make_state()
    text = ('a cat <lora:ink:0.5>\nSteps: 6, Sampler: Euler, Seed: 3, Size: 64x64, Script: X/Y/Z plot, '
            'X Type: Sampler, X Values: "Euler, Heun", Y Type: Prompt S/R, Y Values: "ink:0.5, ink:1", '
            'Version: v1.10.1')
    values = png_info.paste_values(state, text).values
    assert {k: values[k] for k in values if k.startswith(("script", "x_", "y_", "z_"))} == {
        "script": "X/Y/Z plot", "x_type": "Sampler", "x_values": "Euler, Heun", "x_values_dropdown": ["Euler", "Heun"],
        "y_type": "Prompt S/R", "y_values": "ink:0.5, ink:1", "y_values_dropdown": ["ink:0.5", "ink:1"],
        "z_type": "Nothing"}  # an axis the plot did not use is Nothing, not whatever the page had


def test_seed_resize_is_pasted_and_sent_to_the_job(make_state) -> None:
    state = make_state()
    paste = png_info.paste_values(state, "x\nSteps: 3, Seed: 2, Size: 64x80, Seed resize from: 512x768")
    assert (paste.values["seed_resize_from_w"], paste.values["seed_resize_from_h"]) == (512, 768)
    params = txt2img.build_params(state, "a", "", [], "Euler a", "Automatic", 20, 64, 80, 1, 1, 7, 2, -1, 0, 1, [],
                                  512, 768)
    assert (params.seed_resize_from_w, params.seed_resize_from_h) == (512, 768)
    assert set(txt2img.PASTE_TARGETS) >= {"seed_resize_from_w", "seed_resize_from_h"}


def test_paste_of_old_and_foreign_infotexts(make_state) -> None:
    state = make_state()
    old = png_info.paste_values(state, "cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768, "
                                       "Model hash: 0123456789, Model: elsewhere, RNG: GPU")
    assert old.values["sampler"] == "DPM++ 2M" and old.values["schedule"] == "Karras"  # pre-1.9 combined name
    assert old.values["clip_skip"] == 1 and old.values["height"] == 768  # A1111's implied Clip skip: 1
    assert old.checkpoint is None and any("elsewhere" in w for w in old.warnings)
    assert old.overrides == []  # RNG: GPU is the current setting: nothing to override
    odd = png_info.paste_values(state, "x\nSteps: 3, Sampler: Nonesuch, Seed: 2, Size: 64x64, Emphasis: Loud")
    assert "sampler" not in odd.values and len(odd.warnings) == 2
    with pytest.raises(ValueError, match="known setting"):
        png_info.parse_overrides(["Nonsense: 3"])


def test_paste_of_a_hires_infotext_fills_every_hires_control_and_turns_it_on(make_state) -> None:
    state = make_state(load=False)
    paste = png_info.paste_values(state, HIRES)
    assert {k: paste.values[k] for k in ("sampler", "schedule", "width", "height")} == {
        "sampler": "Euler a", "schedule": "Automatic", "width": 512, "height": 768}
    assert {k: v for k, v in paste.values.items() if k.startswith(("hr_", "enable_hr", "denoising"))} == {
        "enable_hr": True, "denoising_strength": 0.45, "hr_scale": 1.5, "hr_upscaler": "Latent (nearest-exact)",
        "hr_second_pass_steps": 12, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler": "DPM++ 2M",
        "hr_scheduler": "Karras", "hr_prompt": "a red circle, detailed", "hr_negative_prompt": "noisy",
        "hr_checkpoint": "Use same checkpoint"}
    assert [w for w in paste.warnings if "Hires" in w] == []
    assert set(txt2img.PASTE_TARGETS) >= set(paste.values)  # every pasted value has a control to go to

    resized = png_info.paste_values(state, "x\nSteps: 3, Sampler: Euler, Seed: 2, Size: 64x64, "
                                           "Denoising strength: 0.7, Hires resize: 128x96, Hires sampler: Euler, "
                                           "Hires schedule type: Automatic")
    assert resized.values["enable_hr"] is True
    assert (resized.values["hr_resize_x"], resized.values["hr_resize_y"]) == (128, 96)
    # the same sampler/schedule as the first pass is A1111's "Use same ..."
    assert (resized.values["hr_sampler"], resized.values["hr_scheduler"]) == ("Use same sampler",
                                                                              "Use same scheduler")
    assert "hr_scale" not in resized.values and "hr_upscaler" not in resized.values  # absent: left as they are

    odd = png_info.paste_values(state, "x\nSteps: 3, Sampler: Euler, Seed: 2, Size: 64x64, Denoising strength: 0.7, "
                                       "Hires upscale: 2, Hires upscaler: 4x-UltraSharp, Hires checkpoint: other, "
                                       "Hires sampler: Nonesuch")
    assert odd.values["enable_hr"] is True and odd.values["hr_scale"] == 2
    assert "hr_upscaler" not in odd.values and "hr_sampler" not in odd.values
    assert odd.values["hr_checkpoint"] == "Use same checkpoint"  # unknown: the first pass's, and a warning
    assert sorted(w.split(":")[0] for w in odd.warnings) == ["Hires checkpoint", "Hires sampler", "Hires upscaler"]
    assert any("'other'" in w for w in odd.warnings if w.startswith("Hires checkpoint"))


def test_paste_of_a_hires_checkpoint_sets_its_title(make_state) -> None:
    """A1111 writes the hires checkpoint's short title (``stem [shorthash]``); the dropdown holds full titles."""
    state = make_state()
    demo_model.write_checkpoint(state.models.ckpt_dir / "second.safetensors", seed=5)
    state.models.refresh()
    tiny = state.models.find("tiny")
    assert tiny.shorthash and tiny.short_title == f"tiny [{tiny.shorthash}]"
    base = "x\nSteps: 3, Sampler: Euler, Seed: 2, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, "
    paste = png_info.paste_values(state, base + f"Hires checkpoint: {tiny.short_title}")
    assert paste.values["hr_checkpoint"] == tiny.title and not paste.warnings
    second = png_info.paste_values(state, base + "Hires checkpoint: second")  # not hashed yet: named by its stem
    assert second.values["hr_checkpoint"] == "second.safetensors" and not second.warnings
    assert common.hires_checkpoint_choices(state) == ["Use same checkpoint", "second.safetensors", tiny.title]
    same = png_info.paste_values(state, base + "Hires checkpoint: Use same checkpoint")
    assert same.values["hr_checkpoint"] == "Use same checkpoint" and not same.warnings
    gone = png_info.paste_values(state, base + "Hires checkpoint: elsewhere [0123456789]")
    assert gone.values["hr_checkpoint"] == "Use same checkpoint"
    assert gone.warnings == ["Hires checkpoint: 'elsewhere [0123456789]' is not in models/Stable-diffusion; "
                             "'Use same checkpoint' is set instead"]


def test_hires_checkpoint_list_refresh_keeps_the_choice(make_state) -> None:
    """🔄 and page loads renew the list; the choice stays, by its new title if it has one, else falls back."""
    state = make_state()
    tiny = state.models.find("tiny")
    update = txt2img.hires_checkpoint_update(state, tiny.title)
    assert update["choices"] == ["Use same checkpoint", tiny.title] and update["value"] == tiny.title
    assert txt2img.hires_checkpoint_update(state, "tiny.safetensors")["value"] == tiny.title  # titled before hashing
    assert txt2img.hires_checkpoint_update(state, "gone.safetensors")["value"] == "Use same checkpoint"
    assert txt2img.hires_checkpoint_update(state, None)["value"] == "Use same checkpoint"


def test_paste_without_hires_fields_turns_hires_off(make_state) -> None:
    state = make_state(load=False)
    plain = png_info.paste_values(state, "x\nSteps: 3, Sampler: Euler, Seed: 2, Size: 64x64")
    assert {k: plain.values[k] for k in HIRES_OFF} == HIRES_OFF
    assert "denoising_strength" not in plain.values and "hr_scale" not in plain.values
    # an upscale without a denoising strength is not a hires job either (A1111's rule needs both)
    upscale_only = png_info.paste_values(state, "x\nSteps: 3, Seed: 2, Size: 64x64, Hires upscale: 2")
    assert upscale_only.values["enable_hr"] is False


def test_build_params_sends_the_hires_controls(make_state) -> None:
    state = make_state(load=False)
    base = ("a", "", [], "Euler a", "Automatic", 20, 512, 768, 1, 1, 7, 3, -1, 0, 1, [], 0, 0)
    params = txt2img.build_params(state, *base, True, 0.45, 2.0, "Latent (nearest-exact)", 12.0, 0, 0,
                                  "Use same sampler", "Use same scheduler", "", "")
    assert params.enable_hr is True and params.denoising_strength == 0.45
    assert params.hr_scale == 2 and isinstance(params.hr_scale, int)  # "Hires upscale: 2", as A1111's page writes
    assert (params.hr_upscaler, params.hr_second_pass_steps) == ("Latent (nearest-exact)", 12)
    assert (params.hr_sampler_name, params.hr_scheduler, params.hr_prompt, params.hr_negative_prompt) == (
        None, None, "", "")
    other = txt2img.build_params(state, *base, True, 0.7, 1.5, "Lanczos", 0, 1024, 0, "Euler", "Karras", "sharp",
                                 "soft")
    assert (other.hr_scale, other.hr_resize_x, other.hr_resize_y) == (1.5, 1024, 0)
    assert (other.hr_sampler_name, other.hr_scheduler, other.hr_prompt, other.hr_negative_prompt) == (
        "Euler", "Karras", "sharp", "soft")
    assert txt2img.build_params(state, *base).enable_hr is False  # callers that predate hires: off
    assert params.hr_checkpoint_name is None and other.hr_checkpoint_name is None  # the default: the same one
    hires_args = (True, 0.45, 2.0, "Latent", 0, 0, 0, "Use same sampler", "Use same scheduler", "", "")
    for same in ("Use same checkpoint", "", None):
        assert txt2img.build_params(state, *base, *hires_args, same).hr_checkpoint_name is None
    title = state.models.checkpoints[0].title
    assert txt2img.build_params(state, *base, *hires_args, title).hr_checkpoint_name == title  # as chosen
    with pytest.raises(gr.Error, match="denoising_strength"):
        txt2img.build_params(state, *base, True, 1.5, 2, "Latent", 0, 0, 0, "Use same sampler", "Use same scheduler",
                             "", "")
    with pytest.raises(gr.Error, match="hr_upscaler"):
        txt2img.build_params(state, *base, True, 0.7, 2, "R-ESRGAN 4x+", 0, 0, 0, "Use same sampler",
                             "Use same scheduler", "", "")


def test_hires_final_resolution_text() -> None:
    """A1111's numbers: int(side * scale) rounded down to 8, or the asked resize (the other side by aspect)."""
    def sizes(*args: float) -> str:
        return re.sub(r"<[^>]+>", "", txt2img.hires_resolution(True, *args))

    assert sizes(512, 512, 2, 0, 0) == "from 512x512 to 1024x1024"
    assert sizes(512, 768, 2, 1024, 0) == "from 512x768 to 1024x1536"
    assert sizes(512, 768, 2, 0, 1024) == "from 512x768 to 680x1024"  # 1024 * 512 // 768 = 682 -> 680
    assert sizes(512, 768, 2, 1024, 1024) == "from 512x768 to 1024x1024"  # both: cropped to the asked size
    assert sizes(520, 512, 1.05, 0, 0) == "from 520x512 to 544x536"  # int(546.0) -> 544, int(537.6) -> 536
    assert "<span class='resolution'>1024x1024</span>" in txt2img.hires_resolution(True, 512, 512, 2, 0, 0)
    assert txt2img.hires_resolution(False, 512, 512, 2, 0, 0) == ""  # A1111 shows nothing while it is off


def test_the_page_has_the_hires_controls_with_a1111_defaults(make_state) -> None:
    state = make_state(load=False)
    demo = txt2img.create_ui(state)
    blocks = {b.elem_id: b for b in demo.blocks.values() if b.elem_id}
    expected = {"txt2img_hr_upscaler": ("Upscaler", "Latent"), "txt2img_hires_steps": ("Hires steps", 0),
                "txt2img_denoising_strength": ("Denoising strength", 0.7), "txt2img_hr_scale": ("Upscale by", 2.0),
                "txt2img_hr_resize_x": ("Resize width to", 0), "txt2img_hr_resize_y": ("Resize height to", 0),
                "hr_sampler": ("Hires sampling method", "Use same sampler"),
                "hr_scheduler": ("Hires schedule type", "Use same scheduler"), "hires_prompt": ("Hires prompt", ""),
                "hires_neg_prompt": ("Hires negative prompt", ""), "txt2img_hr-checkbox": ("Hires. fix", False),
                "hr_checkpoint": ("Hires checkpoint", "Use same checkpoint")}
    assert {k: (blocks[k].label, blocks[k].value) for k in expected} == expected
    assert blocks["txt2img_hr"].open is False and blocks["txt2img_hr"].label == "Hires. fix"
    assert blocks["txt2img_hr_finalres"].value == ""
    scale, steps = blocks["txt2img_hr_scale"], blocks["txt2img_hires_steps"]
    assert (scale.minimum, scale.maximum, scale.step, steps.minimum, steps.maximum) == (1, 4, 0.05, 0, 150)
    assert [c[0] for c in blocks["txt2img_hr_upscaler"].choices] == list(hires.UPSCALERS)
    assert [c[0] for c in blocks["hr_sampler"].choices][:2] == ["Use same sampler", "DPM++ 2M"]
    assert [c[0] for c in blocks["hr_checkpoint"].choices] == ["Use same checkpoint", *common.checkpoint_titles(state)]
    # A1111's order: sampler and steps, the Hires. fix accordion, then width/height, then CFG scale
    order = [c["props"].get("elem_id") for c in demo.config["components"]]
    assert order.index("txt2img_steps") < order.index("txt2img_hr") < order.index("txt2img_width") < \
        order.index("txt2img_cfg_scale")
    assert order.index("hr_checkpoint") < order.index("hr_sampler") < order.index("hr_scheduler")  # A1111's row
    [generate] = [d for d in demo.config["dependencies"] if d.get("api_name") == "txt2img"]
    assert generate["inputs"][-35:-23] == [blocks[i]._id for i in (
        "txt2img_hr-checkbox", "txt2img_denoising_strength", "txt2img_hr_scale", "txt2img_hr_upscaler",
        "txt2img_hires_steps", "txt2img_hr_resize_x", "txt2img_hr_resize_y", "hr_sampler", "hr_scheduler",
        "hires_prompt", "hires_neg_prompt", "hr_checkpoint")]
    # then the Script dropdown, the X/Y/Z plot's controls and Prompts from file's, each in A1111's script_args order
    plot, listed = "script_txt2img_xyz_plot_", "script_txt2img_prompts_from_file_or_textbox_"
    assert generate["inputs"][-23] == blocks["txt2img_script_list"]._id
    assert generate["inputs"][-4:] == [blocks[listed + i]._id for i in (
        "checkbox_iterate", "checkbox_iterate_batch", "prompt_position", "prompt_txt")]
    assert generate["inputs"][-22:-4] == [blocks[plot + i]._id for i in (
        "x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type", "z_values",
        "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds",
        "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")]
    assert (blocks[plot + "x_type"].value, blocks[plot + "y_type"].value, blocks[plot + "draw_legend"].value) == \
        ("Seed", "Nothing", True)


def test_clamp_keeps_slider_values_in_range() -> None:
    slider = gr.Slider(1, 150, step=1)
    assert common.clamp(slider, 400) == 150 and common.clamp(slider, 0) == 1 and common.clamp(slider, 20) == 20
    assert common.clamp(gr.Textbox(), "x") == "x"


def test_build_params_merges_styles_and_overrides(make_state) -> None:
    state = make_state(load=False)
    (state.paths.data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nvivid,\"{prompt}, vivid\",dull\n")
    params = txt2img.build_params(state, "a cat", "", ["vivid"], "Euler a", "Automatic", 20, 512, 512, 1, 1, 7.0, -1,
                                  -1, 0.0, 1, ["RNG: CPU"])
    assert params.prompt == "a cat, vivid" and params.negative_prompt == "dull"
    assert params.cfg_scale == 7 and isinstance(params.cfg_scale, int)  # "CFG scale: 7", as A1111's page writes
    assert params.override_settings == {"randn_source": "CPU"}
    with pytest.raises(gr.Error, match="multiple of 8"):
        txt2img.build_params(state, "a", "", [], "Euler a", "Automatic", 20, 68, 512, 1, 1, 7, -1, -1, 0, 1, [])
    with pytest.raises(gr.Error, match="style 'gone' not found"):
        style_editor.apply_selected(state, "a", "", ["gone"])


def test_settings_apply_validates_everything_then_saves(make_state) -> None:
    state = make_state(load=False)
    values = dict(zip(settings.keys(), settings.current_values(state)))
    assert "sd_model_checkpoint" not in values and "extra_networks_default_multiplier" in values
    message = settings.apply(state, {**values, "show_progress_every_n_steps": 5.0, "lora_in_memory_limit": 2})
    assert message == "2 settings changed: show_progress_every_n_steps, lora_in_memory_limit."
    saved = json.loads(state.paths.settings_file.read_text())
    assert saved["show_progress_every_n_steps"] == 5 and saved["lora_in_memory_limit"] == 2
    with pytest.raises(gr.Error, match="Emphasis mode"):
        settings.apply(state, {**values, "show_progress_every_n_steps": 7, "emphasis": "Loud"})
    assert state.opts["show_progress_every_n_steps"] == 5  # nothing was changed
    assert settings.apply(state, dict(zip(settings.keys(), settings.current_values(state)))) == "0 settings changed."
    assert {k: settings.sections()[k][0] for k in ("sd", "ui")} == {"sd": "sd_checkpoints_limit",
                                                                      "ui": "show_progress_every_n_steps"}


def test_settings_refuse_writes_when_frozen(make_state) -> None:
    state = make_state("--freeze-settings", load=False)
    values = dict(zip(settings.keys(), settings.current_values(state)))
    with pytest.raises(gr.Error, match="frozen"):
        settings.apply(state, {**values, "show_progress_every_n_steps": 3})
    assert not state.paths.settings_file.exists()
    assert isinstance(settings.control("x", settings.options.OPTIONS["emphasis"], "Original", False), gr.Dropdown)


def test_progress_bar_text() -> None:
    assert [progress.format_eta(s) for s in (4.4, 65, 3723)] == ["4s", "1m 05s", "1h 02m 03s"]
    running = progress.Snapshot(True, None, 0, 0.25, 12, "Batch 1/2, step 5/20")
    html = progress.render(running, "data:image/jpeg;base64,AAAA")
    assert "25% ETA: 12s · Batch 1/2, step 5/20" in html and 'width:25%' in html and "webui-live-preview" in html
    waiting = progress.render(progress.Snapshot(False, 1, 2, 0, 0, ""), None, "step <3>/20")
    assert "In queue: 2 jobs ahead of this one (running: step &lt;3&gt;/20)" in waiting


def test_follow_reports_queue_place_progress_and_preview(make_state) -> None:
    import threading

    state = make_state()
    release = threading.Event()
    first_id, first = state.queue.submit(release.wait, 30)
    job = GenerationParams(prompt="x", steps=40, width=64, height=64, save_images=False)
    second_id, second = state.queue.submit(__import__("modules.processing").processing.process, state, job)
    frames = progress.follow(state, second_id, second, poll=0.02)
    assert "In queue: 1 job ahead" in next(frames)
    release.set()
    seen = list(frames)
    assert second.result().images and first.result() is True
    assert any("ETA" in f for f in seen) and any("webui-live-preview" in f for f in seen)  # every 10 steps


def test_gallery_files_keep_the_infotext_and_the_saved_bytes(make_state) -> None:
    from modules import processing

    state = make_state()
    params = GenerationParams(prompt="two", steps=2, width=64, height=64, batch_size=2, seed=5)
    processed = state.queue.run(processing.process, state, params)
    paths = results.gallery_files(processed)
    assert [Path(p).name for p in paths] == ["grid-0000.png", "00000-5.png", "00001-6.png"]
    assert Path(paths[1]).read_bytes() == processed.saved_paths[0].read_bytes()
    for path, text in zip(paths, processed.infotexts):
        with Image.open(path) as image:
            assert infotext.read_from_image(image) == text
    unsaved = state.queue.run(processing.process, state, GenerationParams(prompt="one", steps=2, width=64, height=64,
                                                                          seed=9, save_images=False))
    with Image.open(results.gallery_files(unsaved)[0]) as image:
        assert infotext.parse(infotext.read_from_image(image))["Seed"] == "9"
    info = results.GenerationInfo.of(processed)
    assert info.seed_of(None) == 5 and info.seed_of(0) == 5 and info.seed_of(2) == 6
    assert results.GenerationInfo.from_dict(info.as_dict()) == info
    assert results.GenerationInfo().seed_of(1) == -1 and info.infotext_of(2) == processed.infotexts[2]


@pytest.mark.slow
def test_generate_from_the_page_over_http(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from gradio_client import Client

    from test_api_server import start_server, stop_server

    install_checkpoint(tiny_checkpoint, tmp_path / "data" / "models" / "Stable-diffusion")
    server = start_server(tmp_path / "data")
    try:
        client = Client(server.url + "/", verbose=False)
        gallery, info, bar = client.predict(  # gr.State outputs are not returned over HTTP
            "a green triangle", "", [], "Euler a", "Automatic", 3, 64, 64, 1, 2, 7, 77, -1, 0.0, 1, [],
            api_name="/txt2img")
        assert len(gallery) == 3 and bar == ""  # grid + two images; the progress bar is gone
        with Image.open(gallery[1]["image"]) as first:
            assert first.size == (64, 64)
            assert infotext.read_from_image(first) == info.split("\n\n")[0]
        assert "Seed: 77" in info and "Sampler: Euler a" in info and "Model: tiny" in info and "CFG scale: 7," in info
        saved = sorted((tmp_path / "data" / "outputs" / "txt2img-images").rglob("*.png"))
        assert [p.name for p in saved] == ["00000-77.png", "00001-78.png"]  # the page saves, as A1111's does
        with pytest.raises(Exception, match="multiple of 8"):
            client.predict("x", "", [], "Euler a", "Automatic", 3, 68, 64, 1, 1, 7, 1, -1, 0.0, 1, [],
                           api_name="/txt2img")
    finally:
        stop_server(server)


def _editor(background: Image.Image, layer: Image.Image) -> dict:
    return {"background": background, "layers": [layer], "composite": None}


def test_sketch_and_inpaint_sketch_pictures() -> None:
    """*Sketch*: the drawing over the picture. *Inpaint sketch* (A1111's): the mask is where the drawing is, darkened
    by the transparency; the picture is the drawing, blurred by the mask blur, over the original through the blurred
    mask — so far from the strokes it is the original exactly."""
    import numpy as np

    from modules.ui import img2img as img2img_ui

    rng = np.random.default_rng(0)
    background = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    layer = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (10, 10, 20, 20))
    sketched, mask = img2img_ui.picture_and_mask(img2img_ui.SKETCH, None, None, None, None,
                                                 drawing=_editor(background, layer))
    expected = np.asarray(background).copy()
    expected[10:20, 10:20] = (255, 0, 0)
    assert mask is None and np.array_equal(np.asarray(sketched), expected)

    picture, mask = img2img_ui.picture_and_mask(img2img_ui.INPAINT_SKETCH, None, None, None, None,
                                                color_sketch=_editor(background, layer), mask_blur=0, mask_alpha=0)
    assert np.array_equal(np.asarray(picture), expected)
    binary = np.zeros((48, 64), dtype=np.uint8)
    binary[10:20, 10:20] = 255
    assert np.array_equal(np.asarray(mask), binary)
    picture, mask = img2img_ui.picture_and_mask(img2img_ui.INPAINT_SKETCH, None, None, None, None,
                                                color_sketch=_editor(background, layer), mask_blur=4, mask_alpha=60)
    assert np.array_equal(np.asarray(mask), binary * 0.4 // 1)  # brightness × (1 − 60 %), as A1111
    assert np.array_equal(np.asarray(picture)[:, 40:], np.asarray(background)[:, 40:])  # far from the stroke
    assert np.abs(np.asarray(picture)[15, 15].astype(int) - np.asarray(background)[15, 15]).max() > 0
    for mode, said in ((img2img_ui.SKETCH, "Sketch box"), (img2img_ui.INPAINT_SKETCH, "Inpaint sketch box"),
                       (img2img_ui.INPAINT, "Inpaint box")):
        with pytest.raises(gr.Error, match=said):
            img2img_ui.picture_and_mask(mode, None, {"background": None}, None, None, drawing=None,
                                        color_sketch={"background": None})
