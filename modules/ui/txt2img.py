"""The first txt2img page (Gradio 6 Blocks): A1111's controls, in A1111's places.

No business logic here: handlers build :class:`GenerationParams` and submit :func:`processing.process` to the
job queue, or change a setting through the queue (the checkpoint switch).
"""

from __future__ import annotations

import logging

import gradio as gr

from modules import conditioning, processing, prompt_encoder, samplers
from modules.processing_params import GenerationParams
from modules.state import AppState

logger = logging.getLogger(__name__)

VAE_CHOICES_FIXED = ["Automatic", "None"]


def create_ui(state: AppState) -> gr.Blocks:
    """Build (not launch) the txt2img page for ``state``."""
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        notice = gr.Markdown(_notices(state), visible=bool(state.notices), elem_id="notices")
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=_checkpoint_titles(state),
                                     value=_current_title(state), elem_id="setting_sd_model_checkpoint")
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            vae = gr.Dropdown(label="SD VAE", choices=_vae_choices(state), value=str(state.opts["sd_vae"]),
                              elem_id="setting_sd_vae")
        with gr.Tab("txt2img", id="txt2img"):
            with gr.Row():
                with gr.Column(scale=4):
                    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt",
                                        placeholder="Prompt (press Ctrl+Enter to generate)")
                    prompt_count = gr.Markdown("0/75", elem_id="txt2img_token_counter")
                    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
                    negative_count = gr.Markdown("0/75", elem_id="txt2img_negative_token_counter")
                with gr.Column(scale=1, min_width=160):
                    generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                    with gr.Row():
                        interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
                        skip = gr.Button("Skip", elem_id="txt2img_skip")
            with gr.Row():
                with gr.Column():
                    with gr.Row():
                        sampler = gr.Dropdown(label="Sampling method", elem_id="txt2img_sampling",
                                              choices=[s.name for s in samplers.SAMPLERS], value="DPM++ 2M")
                        schedule = gr.Dropdown(label="Schedule type", elem_id="txt2img_scheduler",
                                               choices=list(samplers.SCHEDULE_NAMES.values()), value="Automatic")
                        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                    with gr.Row():
                        with gr.Column():
                            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                            height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                        swap = gr.Button("⇅", elem_id="txt2img_res_switch_btn", scale=0, min_width=40)
                        with gr.Column():
                            batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                                    elem_id="txt2img_batch_count")
                            batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size",
                                                   elem_id="txt2img_batch_size")
                    cfg_scale = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed")
                        random_seed = gr.Button("🎲", elem_id="txt2img_random_seed", scale=0, min_width=40)
                        reuse_seed = gr.Button("♻️", elem_id="txt2img_reuse_seed", scale=0, min_width=40)
                    with gr.Accordion("Extra", open=False):
                        subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id="txt2img_subseed")
                        subseed_strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                                     elem_id="txt2img_subseed_strength")
                        clip_skip = gr.Slider(1, 12, value=int(state.opts["CLIP_stop_at_last_layers"]), step=1,
                                              label="Clip skip", elem_id="txt2img_clip_skip")
                with gr.Column():
                    gallery = gr.Gallery(label="Output", columns=4, height="auto", buttons=["download"],
                                         elem_id="txt2img_gallery", format="png")
                    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="html_info_txt2img")
                    seeds_state = gr.State([])

        def run(*values):
            params = GenerationParams(
                prompt=values[0], negative_prompt=values[1], sampler_name=values[2], scheduler=values[3],
                steps=int(values[4]), width=int(values[5]), height=int(values[6]), n_iter=int(values[7]),
                batch_size=int(values[8]), cfg_scale=float(values[9]), seed=int(values[10]),
                subseed=int(values[11]), subseed_strength=float(values[12]), clip_skip=int(values[13]))
            try:
                processed = state.queue.run(processing.process, state, params)
            except (ValueError, LookupError, RuntimeError) as e:
                raise gr.Error(str(e)) from e
            first = processed.index_of_first_image
            text = processed.infotexts[first] if processed.infotexts else ""
            if processed.comments:
                text += "\n\n" + "\n".join(processed.comments)
            return list(zip(processed.images, processed.infotexts)), text, processed.all_seeds

        inputs = [prompt, negative, sampler, schedule, steps, width, height, batch_count, batch_size, cfg_scale,
                  seed, subseed, subseed_strength, clip_skip]
        generate.click(run, inputs=inputs, outputs=[gallery, info, seeds_state], concurrency_limit=None)
        prompt.submit(run, inputs=inputs, outputs=[gallery, info, seeds_state], concurrency_limit=None)
        interrupt.click(lambda: state.job.interrupt(), queue=False)
        skip.click(lambda: state.job.skip(), queue=False)
        swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False)
        random_seed.click(lambda: -1, outputs=seed, queue=False)
        reuse_seed.click(lambda seeds: seeds[0] if seeds else -1, inputs=seeds_state, outputs=seed, queue=False)
        prompt.change(lambda text, n: _count(state, text, n, True), inputs=[prompt, steps], outputs=prompt_count,
                      queue=False)
        negative.change(lambda text, n: _count(state, text, n, False), inputs=[negative, steps],
                        outputs=negative_count, queue=False)

        def switch_checkpoint(title: str):
            try:
                state.queue.run(state.opts.set, "sd_model_checkpoint", title)
                state.opts.save()
            except (ValueError, LookupError, PermissionError) as e:
                raise gr.Error(str(e)) from e
            return gr.update(choices=_checkpoint_titles(state), value=_current_title(state))

        def switch_vae(name: str) -> None:
            try:
                state.queue.run(state.opts.set, "sd_vae", name)
                state.opts.save()
            except (ValueError, PermissionError) as e:
                raise gr.Error(str(e)) from e

        def refresh_lists():
            state.models.refresh()
            return (gr.update(choices=_checkpoint_titles(state), value=_current_title(state)),
                    gr.update(choices=_vae_choices(state)))

        checkpoint.input(switch_checkpoint, inputs=checkpoint, outputs=checkpoint)
        vae.input(switch_vae, inputs=vae)
        refresh.click(refresh_lists, outputs=[checkpoint, vae])
        demo.load(lambda: gr.update(value=_notices(state), visible=bool(state.notices)), outputs=notice)
    return demo


def _notices(state: AppState) -> str:
    return "\n\n".join(f"⚠️ {n}" for n in state.notices)


def _checkpoint_titles(state: AppState) -> list[str]:
    return [i.title for i in state.models.checkpoints]


def _current_title(state: AppState) -> str | None:
    current = state.models.current
    return current.info.title if current else None


def _vae_choices(state: AppState) -> list[str]:
    return VAE_CHOICES_FIXED + [v.name for v in state.models.vaes]


def _count(state: AppState, text: str, steps: float, is_positive: bool) -> str:
    model = state.models.current
    if model is None:
        return ""
    pipe = model.pipe
    options = prompt_encoder.EncoderOptions(emphasis=str(state.opts["emphasis"]),
                                            comma_padding_backtrack=int(state.opts["comma_padding_backtrack"]))
    encoder = prompt_encoder.PromptEncoder(pipe.text_encoder, pipe.tokenizer, state.embeddings, options)
    used, available = conditioning.token_counter(encoder, text, int(steps), is_positive)
    return f"{used}/{available}"
