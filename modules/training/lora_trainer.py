"""Train a LoRA and write it as kohya-ss does: a ``.safetensors`` with kohya key names and ``ss_*`` metadata.

Targets are kohya's defaults for SD1 (``networks.lora``): every Linear and 1×1 Conv2d inside the UNet's
transformer blocks (``proj_in``, ``proj_out``, ``to_q/k/v``, ``to_out.0``, ``ff.net.0.proj``, ``ff.net.2``) and,
when the text-encoder rate is above 0, the text encoder's attention and MLP Linears (``q/k/v/out_proj``,
``fc1``, ``fc2``). Keys::

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   (rank, in)
    lora_unet_..._to_q.lora_up.weight                                                          (out, rank)
    lora_unet_..._to_q.alpha                                                                   scalar
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                      (text encoder)

While training, each target module gets a forward hook that adds ``up(down(x)) · alpha / rank``; the base weights
are never written. ``down`` starts Kaiming-uniform and ``up`` at zero, so the untrained LoRA changes nothing.
The text encoder follows the UNet's learning-rate schedule scaled by ``text_encoder_lr / unet rate``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modules.training.dataset import caption_for, list_images
from modules.training.embedding_trainer import clean_name
from modules.training.runner import (TrainingError, TrainResult, TrainSettings, check_new_file, model_to_train_on,
                                     train)
from modules.training.schedule import parse_schedule

logger = logging.getLogger(__name__)

UNET_TARGET_PARENT = "attentions"  # Transformer2DModel blocks: down_blocks.N.attentions.M, mid_block.attentions.0
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class LoraOptions:
    """The Train-LoRA tab's own fields (the rest are :class:`TrainSettings`)."""

    rank: int = 4
    alpha: float = 1.0
    text_encoder_lr: float = 0.0  # 0: the text encoder is not trained
    epochs: int = 0  # > 0: max steps = epochs × steps per epoch
    overwrite: bool = False
    resume: bool = False  # continue an existing file (its weights, ss_steps and .optim)


class LoraModule(torch.nn.Module):
    """``up(down(x)) · scale`` for one Linear or 1×1 Conv2d."""

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        if isinstance(base, torch.nn.Conv2d):
            self.down = torch.nn.Conv2d(base.in_channels, rank, 1, bias=False)
            self.up = torch.nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.down = torch.nn.Linear(base.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.up.weight)
        self.rank, self.alpha = rank, float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.down.weight
        return self.up(self.down(x.to(weight.dtype))) * (self.alpha / self.rank)


def target_modules(model, with_text_encoder: bool) -> dict[str, torch.nn.Module]:
    """kohya key → live module, for the UNet transformer blocks and (optionally) the text encoder."""
    targets: dict[str, torch.nn.Module] = {}
    for path, module in model.pipe.unet.named_modules():
        if f".{UNET_TARGET_PARENT}." not in f".{path}" or not _is_target(module):
            continue
        targets["lora_unet_" + path.replace(".", "_")] = module
    if with_text_encoder:
        for path, module in model.pipe.text_encoder.named_modules():
            if path.rsplit(".", 1)[-1] in TE_TARGETS and isinstance(module, torch.nn.Linear):
                key = path.replace(".", "_")
                key = key if key.startswith("text_model_") else "text_model_" + key
                targets["lora_te_" + key] = module
    return targets


def _is_target(module: torch.nn.Module) -> bool:
    if type(module) is torch.nn.Linear:
        return True
    return type(module) is torch.nn.Conv2d and module.kernel_size == (1, 1)


class LoraTrainable:
    """The runner's view of a LoRA under training."""

    kind = "loras"
    suffix = ".safetensors"

    def __init__(self, name: str, modules: dict[str, torch.nn.Module], options: LoraOptions, final_path: Path,
                 metadata: dict[str, str], unet_rate: float, embeddings: object | None) -> None:
        self.name = name
        self.step = 0
        self.final_path = final_path
        self.options = options
        self.metadata = metadata
        self.embeddings = embeddings
        self.targets = modules
        self.loras = {key: LoraModule(module, options.rank, options.alpha) for key, module in modules.items()}
        self.te_scale = options.text_encoder_lr / unet_rate if unet_rate else 1.0
        self.started = time.time()

    def param_groups(self) -> list[dict]:
        unet = [p for k, m in self.loras.items() if k.startswith("lora_unet_") for p in m.parameters()]
        te = [p for k, m in self.loras.items() if k.startswith("lora_te_") for p in m.parameters()]
        groups = [{"params": unet, "weight_decay": 0.01}]
        if te:
            groups.append({"params": te, "weight_decay": 0.01, "lr_scale": self.te_scale})
        return groups

    @contextmanager
    def activate(self, model) -> Iterator[None]:
        device = next(model.pipe.unet.parameters()).device
        handles = []
        try:
            for key, module in self.targets.items():
                lora = self.loras[key].to(device)
                handles.append(module.register_forward_hook(
                    lambda _m, inputs, output, lora=lora: output + lora(inputs[0]).to(output.dtype)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def conditioning(self, encode, prompts: list[str]) -> torch.Tensor:
        if any(k.startswith("lora_te_") for k in self.loras):
            return encode(prompts, self.embeddings)
        with torch.no_grad():
            return encode(prompts, self.embeddings)

    def set_training(self, on: bool) -> None:
        for lora in self.loras.values():
            lora.train(on)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """kohya tensors: ``<key>.lora_down.weight``, ``<key>.lora_up.weight``, ``<key>.alpha``."""
        tensors: dict[str, torch.Tensor] = {}
        for key, lora in self.loras.items():
            tensors[f"{key}.lora_down.weight"] = lora.down.weight.detach().float().cpu().contiguous()
            tensors[f"{key}.lora_up.weight"] = lora.up.weight.detach().float().cpu().contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(lora.alpha))
        return tensors

    def write(self, path: Path) -> None:
        metadata = {**self.metadata, "ss_steps": str(self.step), "ss_training_finished_at": str(time.time())}
        save_file(self.state_dict(), str(path), metadata=metadata)

    def restore(self, path: Path) -> None:
        """Take the weights and step count of a file this trainer wrote (resume)."""
        from safetensors import safe_open

        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            self.step = int((f.metadata() or {}).get("ss_steps", 0))
        for key, lora in self.loras.items():
            down, up = tensors.get(f"{key}.lora_down.weight"), tensors.get(f"{key}.lora_up.weight")
            if down is None or up is None or down.shape != lora.down.weight.shape:
                raise TrainingError(f"{path.name} does not match rank {lora.rank} and this model's modules; "
                                    "resume with the same settings or tick overwrite")
            with torch.no_grad():
                lora.down.weight.copy_(down)
                lora.up.weight.copy_(up)


def tag_frequency(folder: Path) -> dict[str, dict[str, int]]:
    """kohya's ``ss_tag_frequency``: ``{dataset folder name: {tag: count}}`` from the captions."""
    counts: Counter[str] = Counter()
    for path in list_images(folder):
        for tag in caption_for(path).split(","):
            if tag.strip():
                counts[tag.strip()] += 1
    return {folder.name: dict(counts)}


def build_metadata(model, name: str, settings: TrainSettings, options: LoraOptions, steps: int,
                   unet_rate: float, images: int) -> dict[str, str]:
    """kohya's ``ss_*`` metadata (all values strings, as safetensors requires)."""
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(options.rank),
        "ss_network_alpha": str(float(options.alpha)), "ss_output_name": name,
        "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_sd_model_name": model.info.name_for_extra,
        "ss_sd_model_hash": model.info.shorthash or "", "ss_new_sd_model_hash": model.info.sha256 or "",
        "ss_resolution": f"({settings.width}, {settings.height})", "ss_num_train_images": str(images),
        "ss_batch_size_per_device": str(settings.batch_size),
        "ss_gradient_accumulation_steps": str(settings.gradient_step), "ss_max_train_steps": str(steps),
        "ss_epoch": str(options.epochs), "ss_learning_rate": str(unet_rate), "ss_unet_lr": str(unet_rate),
        "ss_text_encoder_lr": str(options.text_encoder_lr), "ss_lr_scheduler": settings.learn_rate,
        "ss_optimizer": "torch.optim.AdamW", "ss_clip_skip": "None", "ss_training_started_at": str(time.time()),
        "ss_tag_frequency": json.dumps(tag_frequency(Path(settings.data_root))),
        "ss_training_comment": "trained with the web UI's Train LoRA tab",
    }


def train_lora(state, name: str, settings: TrainSettings, options: LoraOptions = LoraOptions()) -> TrainResult:
    """Train a new LoRA ``name`` (or continue one with ``options.resume``) into ``<lora dir>/<name>.safetensors``.

    Raises:
        TrainingError: bad rank/alpha/epochs, an existing file without overwrite or resume, no model.
    """
    name = clean_name(name)
    model = model_to_train_on(state)
    if options.rank < 1:
        raise TrainingError(f"rank must be at least 1; got {options.rank}")
    if options.alpha <= 0 or options.text_encoder_lr < 0 or options.epochs < 0:
        raise TrainingError("alpha must be > 0, the text-encoder learning rate and epochs must be >= 0")
    final = state.paths.lora_dir / f"{name}.safetensors"
    if not options.resume:
        check_new_file(final, options.overwrite, "LoRA")
    elif not final.is_file():
        raise TrainingError(f"cannot resume: {final.name} does not exist in {final.parent}")
    images = len(list_images(Path(settings.data_root)))
    if options.epochs:
        per_epoch = max(1, images // settings.batch_size // settings.gradient_step)
        settings = replace(settings, steps=options.epochs * per_epoch)
    unet_rate = parse_schedule(settings.learn_rate, settings.steps)[0].rate
    if state.embeddings is not None:
        state.embeddings.refresh(model.pipe.text_encoder.config.hidden_size)
    modules = target_modules(model, options.text_encoder_lr > 0)
    metadata = build_metadata(model, name, settings, options, settings.steps, unet_rate, images)
    trainable = LoraTrainable(name, modules, options, final, metadata, unet_rate, state.embeddings)
    if options.resume:
        trainable.restore(final)
    result = train(state, trainable, settings)
    library = state.libraries.get("lora")
    if library is not None:
        library.refresh()
    return result
