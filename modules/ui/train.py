"""The "Train" tab: A1111's sub-tabs (Create embedding, Create hypernetwork, Preprocess images, Train) and a
"Train LoRA" sub-tab, with A1111's field labels, defaults and element ids. No business logic: every button submits
one function of :mod:`modules.training` to the app's job queue and shows its progress and outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from modules.hypernetworks.hypernetwork import ACTIVATIONS, WEIGHT_INITIALIZATIONS
from modules.state import AppState
from modules.training import embedding_trainer, hypernetwork_trainer, lora_trainer, preprocess, runner
from modules.training.dataset import LATENT_SAMPLING_METHODS
from modules.ui import progress

logger = logging.getLogger(__name__)

ACTIVATION_CHOICES = sorted(a for a in ACTIVATIONS if a not in ("hardswish", "multiheadattention"))


def _embedding_names(state: AppState) -> list[str]:
    return sorted(state.embeddings.loaded) if state.embeddings is not None else []


def _hypernetwork_names(state: AppState) -> list[str]:
    library = state.libraries.get("hypernet")
    return list(library.names) if library is not None else []


def _size_choices(state: AppState) -> list[str]:
    sizes = list(hypernetwork_trainer.SIZE_CHOICES)
    model = state.models.current
    if model is not None:
        sizes += [w for w in hypernetwork_trainer.context_widths(model) if w not in sizes]
    return [str(s) for s in sizes]


def run_job(state: AppState, fn: Callable[..., object], *args: object) -> Iterator[tuple[str, str]]:
    """Submit ``fn(*args)`` to the queue; yield ``(progress html, outcome text)`` until it is done."""
    job_id, future = state.queue.submit(fn, *args)
    for html_text in progress.follow(state, job_id, future):
        yield html_text, gr.skip()
    try:
        result = future.result()
    except ValueError as e:  # bad input: the message says what to change
        yield "", f"Error: {e}"
        return
    except Exception as e:
        logger.exception("Train tab job failed")
        yield "", f"Error: {type(e).__name__}: {e}"
        return
    yield "", describe(result)


def describe(result: object) -> str:
    """The outcome line for a created file or a finished training run."""
    if isinstance(result, runner.TrainResult):
        how = "interrupted" if result.interrupted else "finished"
        loss = f", last loss {result.losses[-1]:.5f}" if result.losses else ""
        return (f"Training {how} at step {result.step} ({result.steps_run} steps in {result.seconds:.1f}s{loss}). "
                f"Saved to {result.final_path}; copies and previews in {result.log_directory}")
    if isinstance(result, list):
        return f"Preprocessing finished: {len(result)} images written."
    return f"Created: {result}"


#: The txt2img controls a preview reads with "Read parameters ... from txt2img tab" (A1111's txt2img_preview_params
#: plus the schedule), in the order :func:`_settings` takes them.
PREVIEW_PARAMS = ("prompt", "negative", "steps", "sampler", "schedule", "cfg_scale", "seed", "width", "height")


def create_tab(state: AppState, txt2img: list[gr.components.Component]) -> None:
    """Build the Train tab's content inside the current ``gr.Tab``; ``txt2img``: the txt2img tab's controls named
    by :data:`PREVIEW_PARAMS`, in that order."""
    with gr.Tabs(elem_id="train_tabs"):
        with gr.Tab("Create embedding", id="create_embedding"):
            _create_embedding_tab(state)
        with gr.Tab("Create hypernetwork", id="create_hypernetwork"):
            _create_hypernetwork_tab(state)
        with gr.Tab("Preprocess images", id="preprocess_images"):
            _preprocess_tab(state)
        with gr.Tab("Train", id="train"):
            _train_tab(state, txt2img)
        with gr.Tab("Train LoRA", id="train_lora"):
            _train_lora_tab(state, txt2img)


def _outputs() -> tuple[gr.HTML, gr.Textbox]:
    return (gr.HTML("", elem_classes="train-progress"),
            gr.Textbox(label="Output", interactive=False, lines=2))


def _create_embedding_tab(state: AppState) -> None:
    name = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
    init = gr.Textbox(label="Initialization text", value="*", elem_id="train_initialization_text")
    nvpt = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token", elem_id="train_nvpt")
    overwrite = gr.Checkbox(value=False, label="Overwrite Old Embedding", elem_id="train_overwrite_old_embedding")
    button = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding")
    html, out = _outputs()

    def create(n, text, count, over):
        yield from run_job(state, embedding_trainer.create_embedding, state, n, int(count), bool(over), text)

    button.click(create, inputs=[name, init, nvpt, overwrite], outputs=[html, out], api_name="create_embedding")


def _create_hypernetwork_tab(state: AppState) -> None:
    name = gr.Textbox(label="Name", elem_id="train_new_hypernetwork_name")
    sizes = gr.CheckboxGroup(label="Modules", choices=_size_choices(state),
                             value=[str(s) for s in hypernetwork_trainer.DEFAULT_SIZES],
                             elem_id="train_new_hypernetwork_sizes")
    layers = gr.Textbox(label="Enter hypernetwork layer structure", value="1, 2, 1",
                        placeholder="1st and last digit must be 1. ex:'1, 2, 1'",
                        elem_id="train_new_hypernetwork_layer_structure")
    activation = gr.Dropdown(label="Select activation function of hypernetwork. Recommended : Swish / Linear(none)",
                             choices=ACTIVATION_CHOICES, value="linear",
                             elem_id="train_new_hypernetwork_activation_func")
    init = gr.Dropdown(label="Select Layer weights initialization. Recommended: Kaiming for relu-like, Xavier for "
                       "sigmoid-like, Normal otherwise", choices=list(WEIGHT_INITIALIZATIONS), value="Normal",
                       elem_id="train_new_hypernetwork_initialization_option")
    norm = gr.Checkbox(label="Add layer normalization", elem_id="train_new_hypernetwork_add_layer_norm")
    dropout = gr.Checkbox(label="Use dropout", elem_id="train_new_hypernetwork_use_dropout")
    drop_structure = gr.Textbox(label="Enter hypernetwork Dropout structure (or empty). Recommended : 0~0.35 "
                                "incrementing sequence: 0, 0.05, 0.15", value="0, 0, 0",
                                elem_id="train_new_hypernetwork_dropout_structure")
    overwrite = gr.Checkbox(value=False, label="Overwrite Old Hypernetwork", elem_id="train_overwrite_old_hypernetwork")
    button = gr.Button("Create hypernetwork", variant="primary", elem_id="train_create_hypernetwork")
    html, out = _outputs()

    def create(n, s, ls, act, wi, ln, ud, ds, over):
        yield from run_job(state, hypernetwork_trainer.create_hypernetwork, state, n, s, bool(over), ls, act, wi,
                           bool(ln), bool(ud), ds)

    button.click(create, inputs=[name, sizes, layers, activation, init, norm, dropout, drop_structure, overwrite],
                 outputs=[html, out], api_name="create_hypernetwork")


def _preprocess_tab(state: AppState) -> None:
    src = gr.Textbox(label="Source directory", elem_id="train_process_src")
    dst = gr.Textbox(label="Destination directory", elem_id="train_process_dst")
    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="train_process_width")
    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="train_process_height")
    action = gr.Dropdown(label="Existing Caption txt Action", choices=list(preprocess.CAPTION_ACTIONS),
                         value="ignore", elem_id="train_preprocess_txt_action")
    flip = gr.Checkbox(label="Create flipped copies", elem_id="train_process_flip")
    crop = gr.Checkbox(label="Crop to fit (centre)", value=True, elem_id="train_process_crop")
    button = gr.Button("Preprocess", variant="primary", elem_id="train_run_preprocess")
    html, out = _outputs()

    def run(s, d, w, h, a, f, c):
        options = preprocess.PreprocessOptions(Path(s), Path(d), int(w), int(h), a, bool(f), bool(c))
        yield from run_job(state, preprocess.preprocess, options)

    button.click(run, inputs=[src, dst, width, height, action, flip, crop], outputs=[html, out],
                 api_visibility="private")


def _common_settings(prefix: str = "train_") -> list[gr.components.Component]:
    """The Train sub-tab fields shared by every trainer, in :func:`_settings` order. ``prefix`` replaces ``train_``
    in their element ids: the Train sub-tab keeps A1111's, the Train LoRA sub-tab gets its own (ids are unique)."""

    def eid(name: str) -> str:
        return name if prefix == "train_" else prefix + name.removeprefix("train_")

    with gr.Row():
        clip_mode = gr.Dropdown(value="disabled", label="Gradient Clipping", choices=list(runner.CLIP_GRAD_MODES),
                                elem_id=eid("train_clip_grad_mode"))
        clip_value = gr.Textbox(placeholder="Gradient clip value", value="0.1", show_label=False,
                                elem_id=eid("train_clip_grad_value"))
    with gr.Row():
        batch = gr.Number(label="Batch size", value=1, precision=0, elem_id=eid("train_batch_size"))
        grad_step = gr.Number(label="Gradient accumulation steps", value=1, precision=0,
                              elem_id=eid("train_gradient_step"))
    data_root = gr.Textbox(label="Dataset directory", placeholder="Path to directory with input images",
                           elem_id=eid("train_dataset_directory"))
    log_dir = gr.Textbox(label="Log directory", value="textual_inversion", elem_id=eid("train_log_directory"))
    template = gr.Dropdown(label="Prompt template", choices=runner.list_templates(), value="style_filewords.txt",
                           elem_id=eid("train_template_file"))
    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=eid("train_training_width"))
    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=eid("train_training_height"))
    varsize = gr.Checkbox(label="Do not resize images", value=False, elem_id=eid("train_varsize"))
    steps = gr.Number(label="Max steps", value=100000, precision=0, elem_id=eid("train_steps"))
    with gr.Row():
        image_every = gr.Number(label="Save an image to log directory every N steps, 0 to disable", value=500,
                                precision=0, elem_id=eid("train_create_image_every"))
        save_every = gr.Number(label="Save a copy of embedding to log directory every N steps, 0 to disable",
                               value=500, precision=0, elem_id=eid("train_save_embedding_every"))
    use_weight = gr.Checkbox(label="Use PNG alpha channel as loss weight", value=False, elem_id=eid("use_weight"))
    with_embedding = gr.Checkbox(label="Save images with embedding in PNG chunks", value=True,
                                 elem_id=eid("train_save_image_with_stored_embedding"))
    from_txt2img = gr.Checkbox(label="Read parameters (prompt, etc...) from txt2img tab when making previews",
                               value=False, elem_id=eid("train_preview_from_txt2img"))
    shuffle = gr.Checkbox(label="Shuffle tags by ',' when creating prompts.", value=False,
                          elem_id=eid("train_shuffle_tags"))
    drop = gr.Slider(0, 1, value=0, step=0.1, label="Drop out tags when creating prompts.",
                     elem_id=eid("train_tag_drop_out"))
    latent = gr.Radio(label="Choose latent sampling method", value="once", choices=list(LATENT_SAMPLING_METHODS),
                      elem_id=eid("train_latent_sampling_method"))
    return [clip_mode, clip_value, batch, grad_step, data_root, log_dir, template, width, height, varsize, steps,
            image_every, save_every, use_weight, with_embedding, from_txt2img, shuffle, drop, latent]


def _settings(learn_rate: str, values: tuple) -> runner.TrainSettings:
    """:class:`runner.TrainSettings` from the :func:`_common_settings` values followed by the txt2img ones."""
    (clip_mode, clip_value, batch, grad_step, data_root, log_dir, template, width, height, varsize, steps,
     image_every, save_every, use_weight, with_embedding, from_txt2img, shuffle, drop, latent,
     prompt, negative, p_steps, sampler, schedule, cfg_scale, seed, p_width, p_height) = values
    return runner.TrainSettings(
        learn_rate=str(learn_rate), data_root=str(data_root or ""), batch_size=int(batch), gradient_step=int(grad_step),
        log_directory=str(log_dir or "textual_inversion"), template_file=str(template), width=int(width),
        height=int(height), varsize=bool(varsize), steps=int(steps), clip_grad_mode=str(clip_mode),
        clip_grad_value=str(clip_value), shuffle_tags=bool(shuffle), tag_drop_out=float(drop),
        latent_sampling_method=str(latent), use_weight=bool(use_weight), create_image_every=int(image_every),
        save_every=int(save_every), save_image_with_stored_embedding=bool(with_embedding),
        preview_from_txt2img=bool(from_txt2img), preview_prompt=str(prompt or ""),
        preview_negative_prompt=str(negative or ""), preview_steps=int(p_steps), preview_sampler_name=str(sampler),
        preview_scheduler=str(schedule), preview_cfg_scale=float(cfg_scale), preview_seed=int(seed),
        preview_width=int(p_width), preview_height=int(p_height))


def _train_tab(state: AppState, txt2img: list[gr.components.Component]) -> None:
    with gr.Row():
        embedding = gr.Dropdown(label="Embedding", choices=_embedding_names(state), elem_id="train_embedding")
        hypernetwork = gr.Dropdown(label="Hypernetwork", choices=_hypernetwork_names(state),
                                   elem_id="train_hypernetwork")
        refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="train_refresh_networks")
    with gr.Row():
        embedding_lr = gr.Textbox(label="Embedding Learning rate", placeholder="Embedding Learning rate",
                                  value="0.005", elem_id="train_embedding_learn_rate")
        hypernetwork_lr = gr.Textbox(label="Hypernetwork Learning rate", placeholder="Hypernetwork Learning rate",
                                     value="0.00001", elem_id="train_hypernetwork_learn_rate")
    common = _common_settings()
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id="train_interrupt_preprocessing")
        train_hn = gr.Button("Train Hypernetwork", variant="primary", elem_id="train_train_hypernetwork")
        train_emb = gr.Button("Train Embedding", variant="primary", elem_id="train_train_embedding")
    html, out = _outputs()

    def train_embedding(name, lr, *values):
        yield from run_job(state, embedding_trainer.train_embedding, state, name or "", _settings(lr, values))

    def train_hypernetwork(name, lr, *values):
        yield from run_job(state, hypernetwork_trainer.train_hypernetwork, state, name or "", _settings(lr, values))

    def refresh_lists():
        if state.embeddings is not None and state.models.current is not None:
            state.embeddings.refresh(state.models.current.pipe.text_encoder.config.hidden_size)
        library = state.libraries.get("hypernet")
        if library is not None:
            library.refresh()
        return gr.update(choices=_embedding_names(state)), gr.update(choices=_hypernetwork_names(state))

    train_emb.click(train_embedding, inputs=[embedding, embedding_lr, *common, *txt2img], outputs=[html, out],
                    api_name="train_embedding")
    train_hn.click(train_hypernetwork, inputs=[hypernetwork, hypernetwork_lr, *common, *txt2img],
                   outputs=[html, out], api_name="train_hypernetwork")
    refresh.click(refresh_lists, outputs=[embedding, hypernetwork], api_visibility="private")
    interrupt.click(lambda: state.job.interrupt(), queue=False, api_visibility="private")


def _train_lora_tab(state: AppState, txt2img: list[gr.components.Component]) -> None:
    name = gr.Textbox(label="Name", elem_id="train_lora_name")
    with gr.Row():
        rank = gr.Number(label="Network rank (dim)", value=4, precision=0, elem_id="train_lora_rank")
        alpha = gr.Number(label="Network alpha", value=1.0, elem_id="train_lora_alpha")
        epochs = gr.Number(label="Epochs (0: use Max steps)", value=0, precision=0, elem_id="train_lora_epochs")
    with gr.Row():
        unet_lr = gr.Textbox(label="UNet learning rate", value="0.0001", elem_id="train_lora_unet_lr")
        te_lr = gr.Number(label="Text encoder learning rate (0: not trained)", value=0.00005,
                          elem_id="train_lora_te_lr")
    with gr.Row():
        overwrite = gr.Checkbox(label="Overwrite Old LoRA", value=False, elem_id="train_lora_overwrite")
        resume = gr.Checkbox(label="Continue training the existing file", value=False, elem_id="train_lora_resume")
    common = _common_settings("train_lora_")
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id="train_lora_interrupt")
        button = gr.Button("Train LoRA", variant="primary", elem_id="train_train_lora")
    html, out = _outputs()

    def train(n, r, a, e, lr, te, over, res, *values):
        options = lora_trainer.LoraOptions(rank=int(r), alpha=float(a), text_encoder_lr=float(te or 0),
                                           epochs=int(e or 0), overwrite=bool(over), resume=bool(res))
        yield from run_job(state, lora_trainer.train_lora, state, n or "", _settings(lr, values), options)

    button.click(train, inputs=[name, rank, alpha, epochs, unet_lr, te_lr, overwrite, resume, *common, *txt2img],
                 outputs=[html, out], api_name="train_lora")
    interrupt.click(lambda: state.job.interrupt(), queue=False, api_visibility="private")
