"""The training loop the three trainers share (embedding, hypernetwork, LoRA), with A1111's Train-tab behaviour.

A trainer supplies a :class:`Trainable` — its parameters, how it hooks into the model while training, how its
prompts are encoded, how it is written to disk — and :func:`train` does the rest:

* refuses ``--lowvram`` (as A1111), puts the model's weights back to the checkpoint's own (``restore_all`` on its
  weight patchers), freezes them, and afterwards gives back every ``requires_grad`` flag: the base weights are never
  written, so they are bit-identical after the job; under ``--medvram`` the run keeps the whole model on the device
  (every step uses all of it) and parks it again afterwards;
* dataset from the folder and the prompt template (:mod:`modules.training.dataset`), noise from the model's own
  schedule (``DDPMScheduler`` from its scheduler config), MSE to the noise (or v), AdamW;
* learning rate and gradient-clipping value in A1111's schedule syntax (:mod:`modules.training.schedule`), batch
  size, gradient accumulation, max steps; a resumed file continues from its ``step``, with the optimizer state of
  ``<file>.optim`` when that file's hash matches;
* every N steps a copy (``<log>/<YYYY-MM-DD>/<name>/<kind>/<name>-<steps_done><suffix>``, with its ``.optim``) and
  a preview image (``.../images/<name>-<steps_done>.png``), A1111's ``steps_done = step + 1`` cadence; a loss CSV.
  A preview is a txt2img image (sampler, seed, CFG, infotext) of :meth:`TrainSettings.preview_params`, conditioned
  by the trainable as it is at that step;
* progress (step, loss, ETA) in the shared :class:`~modules.state.JobState` that ``/sdapi/v1/progress`` and the UI
  read, and in the log; an interrupt stops after the current step and the final file is still written;
* every file is written to a temporary name and moved into place, so an interrupted run never leaves a half file.

The caller runs :func:`train` on the app's job queue (``state.queue``), like any generation.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from modules.processing_params import GenerationParams, ParamsError
from modules.training.dataset import Batch, DatasetOptions, TrainingDataset, read_template
from modules.training.schedule import LearnRateScheduler

logger = logging.getLogger(__name__)

CLIP_GRAD_MODES = ("disabled", "value", "norm")
TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "textual_inversion_templates"


class TrainingError(ValueError):
    """A training request that cannot run; the message says what to change."""


class Trainable(Protocol):
    """What a trainer gives the loop."""

    name: str
    kind: str  # folder name for copies: "embeddings", "hypernetworks", "loras"
    suffix: str  # ".pt" or ".safetensors"
    step: int  # optimizer steps done so far (resumed files start from theirs)
    final_path: Path
    embeddings: object  # the textual inversions its prompts are encoded with (a PromptEncoder's ``embeddings``)

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups; a group may carry ``lr_scale`` (× the scheduled rate) and ``weight_decay``."""

    def activate(self, model: object) -> AbstractContextManager[None]:
        """Hook the trainable into ``model`` for the duration of the ``with`` block (undone exactly after)."""

    def conditioning(self, encode: Callable[[list[str], object | None], torch.Tensor],
                     prompts: list[str]) -> torch.Tensor:
        """``(B, 77·k, C)`` text conditioning for ``prompts``, with gradients where the trainable needs them."""

    def set_training(self, on: bool) -> None:
        """Train mode (dropout on) or eval mode for previews."""

    def write(self, path: Path) -> None:
        """Write the trainable to ``path`` in its file format (the loop makes the write atomic)."""


@dataclass(frozen=True)
class TrainSettings:
    """The Train tab's fields (A1111 names and defaults); ``learn_rate`` and ``clip_grad_value`` are schedules."""

    learn_rate: str
    data_root: str
    batch_size: int = 1
    gradient_step: int = 1
    log_directory: str = "textual_inversion"
    template_file: str = "style_filewords.txt"
    width: int = 512
    height: int = 512
    varsize: bool = False
    steps: int = 100000
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False
    create_image_every: int = 500
    save_every: int = 500
    # Previews (A1111): with preview_from_txt2img ("Read parameters (prompt, etc...) from txt2img tab when making
    # previews") the preview_* fields, which the UI fills from the txt2img tab; without it, the batch's first prompt
    # at 20 steps and the training size, with txt2img's defaults (DPM++ 2M, Automatic schedule, CFG 7, random seed).
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str = "DPM++ 2M"
    preview_scheduler: str = "Automatic"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512
    write_csv_every: int = 500
    save_optimizer_state: bool = True
    # Embeddings (A1111's "Save images with embedding in PNG chunks"): the first preview after each copy is also
    # written, captioned, with that copy inside, to <log>/image_embeddings/ — one PNG that loads as the embedding.
    save_image_with_stored_embedding: bool = True
    seed: int | None = None  # fixes the data order, noise and timesteps (A1111 has none)

    def validate(self) -> None:
        if self.clip_grad_mode not in CLIP_GRAD_MODES:
            raise TrainingError(f"gradient clipping must be one of {', '.join(CLIP_GRAD_MODES)}; "
                                f"got {self.clip_grad_mode!r}")
        for label, value, low in (("batch size", self.batch_size, 1), ("gradient accumulation steps",
                                  self.gradient_step, 1), ("max steps", self.steps, 1),
                                  ("save an image every N steps", self.create_image_every, 0),
                                  ("save a copy every N steps", self.save_every, 0)):
            if int(value) < low:
                raise TrainingError(f"{label} must be at least {low}; got {value}")
        if self.create_image_every:
            try:
                self.preview_params("").validate()
            except ParamsError as e:
                source = "the txt2img parameters" if self.preview_from_txt2img else "the training size"
                raise TrainingError(f"previews cannot be made with {source}: {e}") from None

    def preview_params(self, first_prompt: str) -> GenerationParams:
        """The txt2img job a preview is (A1111 makes it with extra networks disabled: the trainable's embeddings
        and hooks carry what is being trained); ``first_prompt``: the current batch's first prompt."""
        if self.preview_from_txt2img:
            return GenerationParams(
                prompt=self.preview_prompt, negative_prompt=self.preview_negative_prompt, steps=self.preview_steps,
                sampler_name=self.preview_sampler_name, scheduler=self.preview_scheduler,
                cfg_scale=self.preview_cfg_scale, seed=self.preview_seed, width=self.preview_width,
                height=self.preview_height, save_images=False)
        return GenerationParams(prompt=first_prompt, width=self.width, height=self.height, save_images=False)


@dataclass
class TrainResult:
    """What a run did."""

    final_path: Path
    log_directory: Path
    step: int
    steps_run: int
    interrupted: bool
    losses: list[float] = field(default_factory=list)  # per optimizer step
    saved: list[Path] = field(default_factory=list)  # copies and previews
    seconds: float = 0.0


def list_templates(folder: Path = TEMPLATES_DIR) -> list[str]:
    """Prompt-template names (``*.txt`` under the templates folder, relative, sorted)."""
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt") if p.is_file())


def resolve_template(name: str, folder: Path = TEMPLATES_DIR) -> Path:
    """The template file ``name`` from the listing (never a path outside the folder)."""
    names = list_templates(folder)
    if name not in names:
        raise TrainingError(f"prompt template {name!r} not found; available: {', '.join(names) or 'none'}")
    return folder / name


def file_hash(path: Path) -> str:
    """A1111's ``.optim`` key: the first 10 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp)`` then ``os.replace``: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_new_file(path: Path, overwrite: bool, what: str) -> None:
    """A1111's "file exists" refusal, with the fix in the message."""
    if path.exists() and not overwrite:
        raise TrainingError(f"{what} {path.name} already exists in {path.parent}; choose another name or tick "
                            "'Overwrite Old'")


def log_directory_for(state, settings: TrainSettings, name: str) -> Path:
    """``<log dir>/<YYYY-MM-DD>/<name>``; a relative log dir is inside the data dir."""
    base = Path(settings.log_directory or "textual_inversion").expanduser()
    if not base.is_absolute():
        base = state.paths.data_dir / base
    return base / datetime.now().strftime("%Y-%m-%d") / name


@contextmanager
def frozen_model(model) -> Iterator[None]:
    """The checkpoint's own weights (weight patchers restored), frozen, for the duration; flags restored after."""
    for patcher in model.patchers.values():
        patcher.restore_all()
    pipe = model.pipe
    params = [p for module in (pipe.unet, pipe.text_encoder, pipe.vae) for p in module.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _on_device(model) -> AbstractContextManager[None]:
    """The whole model on the device for the run (--medvram parks it in CPU memory between jobs' stages)."""
    return model.offload.use_all() if model.offload is not None else nullcontext()


def _encoder_for(state, model) -> Callable[[list[str], object | None], torch.Tensor]:
    """``encode(prompts, embeddings)``: A1111 chunking (75 tokens, BREAK, TI vectors) with autograd kept on."""
    from modules.conditioning import stack_padded
    from modules.prompt_encoder import EncoderOptions, PromptEncoder

    pipe = model.pipe
    options = EncoderOptions(clip_skip=int(state.opts["CLIP_stop_at_last_layers"]))

    def encode(prompts: list[str], embeddings: object | None) -> torch.Tensor:
        encoder = PromptEncoder(pipe.text_encoder, pipe.tokenizer, embeddings, options)
        rows = []
        for prompt in prompts:
            chunks, _ = encoder.tokenize_line(prompt)
            rows.append(torch.cat([encoder.encode_chunks([chunk]) for chunk in chunks], dim=1)[0])
        return stack_padded(rows)

    return encode


def _loss(model, noise_scheduler, batch: Batch, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The denoising loss of one batch: random timesteps, MSE to the noise (epsilon) or to v, alpha-weighted."""
    unet = model.pipe.unet
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    latents = batch.latents.to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    t = t.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    pred = unet(noisy.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()
    target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
        noise_scheduler.get_velocity(latents, noise, t)
    error = (pred - target) ** 2
    if batch.weights is not None:
        error = error * batch.weights.to(device)
    return error.mean()


def train(state, trainable: Trainable, settings: TrainSettings, on_step: Callable[[int, float], None] | None = None
          ) -> TrainResult:
    """Train ``trainable`` on the current model with ``settings``; run it on ``state.queue``.

    Raises:
        TrainingError / DatasetError / ScheduleError (all ``ValueError``): the settings or data cannot be used;
            nothing is written in that case.
    """
    from diffusers import DDPMScheduler

    if state.policy.memory_mode == "lowvram" or getattr(state.args, "lowvram", False):
        raise TrainingError("Training models with --lowvram is not possible (as in A1111); restart without it")
    settings.validate()
    model = model_to_train_on(state)
    initial = int(trainable.step)
    if initial >= settings.steps:
        raise TrainingError(f"{trainable.name} is already trained for {initial} steps, max steps is {settings.steps}")
    scheduler = LearnRateScheduler(settings.learn_rate, settings.steps, initial)
    clip = (LearnRateScheduler(settings.clip_grad_value, settings.steps, initial)
            if settings.clip_grad_mode != "disabled" else None)
    template = read_template(resolve_template(settings.template_file))
    log_dir = log_directory_for(state, settings, trainable.name)
    rng = random.Random(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed if settings.seed is not None else random.getrandbits(63))
    result = TrainResult(trainable.final_path, log_dir, initial, 0, False)

    state.job.begin(f"train_{trainable.kind[:-1]}", settings.steps - initial)  # A1111: train_embedding
    start = time.perf_counter()
    try:
        # Training runs the UNet uncompiled: with --opt-compile, graphs with gradients and the trained
        # hypernetwork's processors would be compiled for this one job and then never used again.
        with frozen_model(model), _on_device(model), trainable.activate(model), \
                torch.compiler.set_stance("force_eager"):
            options = DatasetOptions(
                data_root=Path(settings.data_root), width=settings.width, height=settings.height,
                varsize=settings.varsize, template_lines=template, placeholder=trainable.name,
                shuffle_tags=settings.shuffle_tags, tag_drop_out=settings.tag_drop_out,
                latent_sampling_method=settings.latent_sampling_method, use_weight=settings.use_weight,
                batch_size=settings.batch_size)
            state.job.textinfo = "Preparing dataset..."
            dataset = TrainingDataset(options, model.pipe.vae, generator)
            groups = trainable.param_groups()
            for group in groups:
                group["lr"] = scheduler.learn_rate * group.get("lr_scale", 1.0)
            optimizer = torch.optim.AdamW(groups, lr=scheduler.learn_rate)
            _resume_optimizer(optimizer, trainable.final_path)
            noise_scheduler = DDPMScheduler.from_config(model.pipe.scheduler.config)
            encode = _encoder_for(state, model)
            loop = _Loop(state, trainable, settings, dataset, optimizer, scheduler, clip, noise_scheduler, encode,
                         rng, generator, log_dir, result, on_step)
            loop.run(model)
            trainable.set_training(False)
            _save(trainable, trainable.final_path, optimizer, settings.save_optimizer_state)
    finally:
        result.seconds = time.perf_counter() - start
        state.job.end()
        state.job.textinfo = None
    logger.info("Training %s %s: %d steps in %.1fs (step %d)%s; saved %s", trainable.kind[:-1], trainable.name,
                result.steps_run, result.seconds, trainable.step, " — interrupted" if result.interrupted else "",
                trainable.final_path)
    result.step = trainable.step
    return result


def _resume_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    optim_path = path.with_name(path.name + ".optim")
    if not (path.is_file() and optim_path.is_file()):
        return
    try:
        saved = torch.load(optim_path, map_location="cpu", weights_only=True)
        if saved.get("hash") != file_hash(path):
            logger.info("Training: %s does not match %s; starting a fresh optimizer", optim_path.name, path.name)
            return
        if saved.get("optimizer_name", "AdamW") != "AdamW":
            logger.info("Training: %s holds %s, not AdamW; starting fresh", optim_path.name, saved.get("optimizer_name"))
            return
        optimizer.load_state_dict(saved["optimizer_state_dict"])
        logger.info("Training: resumed the optimizer state from %s", optim_path)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        logger.warning("Training: cannot use %s (%s); starting a fresh optimizer", optim_path, e)


def _save(trainable: Trainable, path: Path, optimizer: torch.optim.Optimizer, with_optimizer: bool) -> None:
    atomic_write(path, trainable.write)
    if with_optimizer:
        data = {"hash": file_hash(path), "optimizer_name": "AdamW", "optimizer_state_dict": optimizer.state_dict()}
        atomic_write(path.with_name(path.name + ".optim"), lambda tmp: torch.save(data, tmp))


class _Loop:
    """One run's moving parts (kept together so each piece stays a short method)."""

    def __init__(self, state, trainable, settings, dataset, optimizer, scheduler, clip, noise_scheduler, encode,
                 rng, generator, log_dir, result, on_step) -> None:
        self.state, self.t, self.s = state, trainable, settings
        self.dataset, self.optimizer, self.scheduler, self.clip = dataset, optimizer, scheduler, clip
        self.noise_scheduler, self.encode, self.rng, self.generator = noise_scheduler, encode, rng, generator
        self.log_dir, self.result, self.on_step = log_dir, result, on_step
        self.per_epoch = max(1, len(dataset) // settings.batch_size // settings.gradient_step)
        self.csv_losses: list[float] = []
        self.to_embed: Path | None = None  # the last copy, until a preview image carries it
        self.start = time.perf_counter()

    def run(self, model) -> None:
        s, t = self.s, self.t
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        t.set_training(True)
        self.optimizer.zero_grad(set_to_none=True)
        while True:
            for batches in self._optimizer_steps():
                self.scheduler.apply(self.optimizer, t.step)
                if self.scheduler.finished or self.state.job.interrupted:
                    self.result.interrupted = self.state.job.interrupted
                    return
                loss_value = 0.0
                for batch in batches:
                    cond = t.conditioning(self.encode, batch.prompts)
                    loss = _loss(model, self.noise_scheduler, batch, cond, self.generator) / s.gradient_step
                    loss.backward()
                    loss_value += float(loss.detach())
                if not torch.isfinite(torch.tensor(loss_value)):
                    raise TrainingError(f"the loss became {loss_value} at step {t.step}; lower the learning rate")
                self._clip(params)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                t.step += 1
                self._after_step(model, loss_value, batches[0].prompts[0])

    def _optimizer_steps(self) -> Iterator[list[Batch]]:
        """Batches grouped by gradient accumulation, epoch after epoch (a partial group is dropped)."""
        group: list[Batch] = []
        for batch in self.dataset.epoch(self.rng, self.generator):
            group.append(batch)
            if len(group) == self.s.gradient_step:
                yield group
                group = []

    def _clip(self, params: list[torch.Tensor]) -> None:
        if self.clip is None:
            return
        self.clip.step(self.t.step)
        if self.s.clip_grad_mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.clip.learn_rate)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.clip.learn_rate)

    def _after_step(self, model, loss: float, first_prompt: str) -> None:
        s, t, result = self.s, self.t, self.result
        result.steps_run += 1
        result.losses.append(loss)
        self.csv_losses.append(loss)
        steps_done = t.step + 1  # A1111's cadence: the first copy comes after optimizer step N-1
        epoch, epoch_step = t.step // self.per_epoch, t.step % self.per_epoch
        elapsed = time.perf_counter() - self.start
        remaining = (s.steps - t.step) * elapsed / result.steps_run
        text = (f"Training {t.kind[:-1]} {t.name} [Epoch {epoch}: {epoch_step + 1}/{self.per_epoch}] "
                f"step {t.step}/{s.steps} loss: {loss:.7f} lr: {self.scheduler.learn_rate:g} ETA {remaining:.0f}s")
        self.state.job.textinfo = text
        self.state.job.next_batch()
        if t.step % 10 == 0 or result.steps_run == 1:
            logger.info(text)
        if s.save_every and steps_done % s.save_every == 0:
            copy = self.log_dir / t.kind / f"{t.name}-{steps_done}{t.suffix}"
            t.set_training(False)
            _save(t, copy, self.optimizer, s.save_optimizer_state)
            self.to_embed = copy
            result.saved.append(copy)
        if s.write_csv_every and t.step % s.write_csv_every == 0:
            self._write_csv(epoch, epoch_step)
        if s.create_image_every and steps_done % s.create_image_every == 0:
            t.set_training(False)
            path, image = self._preview(model, s.preview_params(first_prompt), steps_done)
            result.saved.append(path)
            if self.to_embed is not None and t.kind == "embeddings" and s.save_image_with_stored_embedding:
                result.saved.append(self._embedding_image(model, image, self.to_embed, steps_done))
                self.to_embed = None
        t.set_training(True)
        if self.on_step is not None:
            self.on_step(t.step, loss)

    def _write_csv(self, epoch: int, epoch_step: int) -> None:
        path = self.log_dir / f"{'textual_inversion' if self.t.kind == 'embeddings' else self.t.kind[:-1]}_loss.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])
            mean = sum(self.csv_losses) / max(1, len(self.csv_losses))
            writer.writerow([self.t.step, epoch, epoch_step + 1, f"{mean:.7f}", self.scheduler.learn_rate])
        self.csv_losses.clear()

    def _preview(self, model, params: GenerationParams, steps_done: int) -> tuple[Path, Image.Image]:
        """A preview with the trainable active, made as txt2img makes an image (the whole prompt syntax, sampler,
        schedule, seed, CFG, decode) with the trainable's embeddings; saved with its infotext, as A1111 saves it.
        Extra-network tags in the prompt are removed and not activated (A1111 disables extra networks for
        previews)."""
        from modules import extra_networks, infotext, processing, rng, sampling, samplers

        pipe, opts = model.pipe, self.state.opts.snapshot()
        setup = processing.JobSetup.of(params, model, opts)
        seed = rng.fix_seed(params.seed)
        with torch.no_grad():
            prompt, _ = extra_networks.parse_prompt(params.prompt)  # tags removed, not activated (A1111)
            guidance, _ = processing.guidance_for(self.state, setup, [prompt], [params.negative_prompt],
                                                  embeddings=self.t.embeddings)
            shape = (pipe.unet.config.in_channels, params.height // 8, params.width // 8)
            device = next(pipe.unet.parameters()).device  # where the training steps run
            noise, generators = rng.initial_noise(shape, [seed], [seed], 0.0, device, str(opts["randn_source"]),
                                                  setup.ensd)
            run = samplers.create_run(setup.sampler, setup.schedule, pipe.scheduler.config, [seed], generators)
            latents = sampling.denoise(pipe.unet, run, noise, guidance, params.steps)
            vae_device = next(pipe.vae.parameters()).device
            image = sampling.decode(pipe.vae, latents.to(vae_device)).images[0]
        text = processing.create_infotext(setup, {}, params.prompt, params.negative_prompt, seed, seed)
        path = self.log_dir / "images" / f"{self.t.name}-{steps_done}.png"
        pnginfo = infotext.add_to_png(text) if opts["enable_pnginfo"] else None
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=pnginfo)), image

    def _embedding_image(self, model, image: Image.Image, copy: Path, steps_done: int) -> Path:
        """``<log>/image_embeddings/<name>-<steps_done>.png``: the preview captioned (``<name>``, the checkpoint,
        ``{vectors}v {steps}s``) with ``copy``'s content in a text chunk and in the pixels, as A1111 writes it."""
        from modules.textual_inversion import image_embedding

        data = torch.load(copy, map_location="cpu", weights_only=True)
        vectors = next(iter(data["string_to_param"].values()))
        card = image_embedding.caption(image, f"<{data.get('name', self.t.name)}>", str(model.info.model_name),
                                       f"[{model.info.shorthash}]", f"{vectors.shape[0]}v {steps_done}s")
        path = self.log_dir / "image_embeddings" / f"{self.t.name}-{steps_done}.png"
        return atomic_write(path, lambda tmp: image_embedding.save_embedding_png(tmp, card, data))


def model_to_train_on(state) -> object:
    """The loaded model, brought back to its device; a training run needs one, and not an inpainting one.

    Raises:
        TrainingError: no model is loaded, or it is an inpainting model (its UNet wants a mask and a picture
            beside the latents, which the trainers do not make).
    """
    from modules import inpaint_model

    model = state.models.in_use()
    if model is None:
        raise TrainingError("no model is loaded; load a checkpoint first")
    if inpaint_model.is_inpainting(model.pipe.unet):
        raise TrainingError(f"{model.info.title} is an inpainting model; train on the txt2img checkpoint it was "
                            "made from (embeddings, hypernetworks and LoRAs trained there work on both)")
    return model
