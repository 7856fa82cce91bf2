"""Read model files safely and build a diffusers SD1.x pipeline from them, offline.

* ``.safetensors`` is read with safetensors; ``.ckpt``/``.pt``/``.bin`` with ``torch.load(weights_only=True)``.
  A pickle that asks for anything beyond tensors and a few inert containers is refused *before* anything in
  it runs (the unpickler never resolves the global), and the error says so.
* Single-file checkpoints in the original LDM layout are converted by diffusers' own ``from_single_file``
  machinery, with the SD1.5 component configs bundled in ``configs/sd15`` (no hub access, ever).
* A sidecar ``<checkpoint>.yaml`` (A1111's convention) describes other shapes; the UNet and VAE configs are
  derived from it by diffusers, the text encoder's from the tensors plus the yaml.
"""

from __future__ import annotations

import collections
import json
import logging
import pickle
import zipfile
from pathlib import Path

import numpy
import torch
import yaml

from modules.paths import CONFIGS_DIR

logger = logging.getLogger(__name__)

SD15_CONFIG_DIR = CONFIGS_DIR / "sd15"
INPAINTING_CONFIG = "v1-inpainting-inference.yaml"
UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
StateDict = dict[str, torch.Tensor]

#: Old SD1 files (transformers < 4.21 era) lack the ``text_model.`` level; A1111 renames them the same way.
_SD1_CLIP_RENAMES = (
    ("cond_stage_model.transformer.embeddings.", CLIP_PREFIX + "embeddings."),
    ("cond_stage_model.transformer.encoder.", CLIP_PREFIX + "encoder."),
    ("cond_stage_model.transformer.final_layer_norm.", CLIP_PREFIX + "final_layer_norm."),
)


class ModelFileError(ValueError):
    """A model file cannot be used; the message names the file, the problem and the fix."""


class _InertCallback:
    """Stand-in for training-callback objects pickled into some original SD ``.ckpt`` files; holds nothing."""

    def __setstate__(self, state: object) -> None:
        pass


def _pickle_allowlist() -> list[object]:
    """Inert globals real ``.ckpt``/``.pt`` files contain beyond tensors (numpy scalars, Lightning callbacks,
    the ``ParameterDict`` of original textual-inversion files)."""
    from numpy._core import multiarray

    allowed: list[object] = [
        collections.OrderedDict, numpy.dtype,
        (multiarray.scalar, "numpy.core.multiarray.scalar"), (multiarray.scalar, "numpy._core.multiarray.scalar"),
        (_InertCallback, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (_InertCallback, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    ]
    allowed += [type(numpy.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    allowed.append(torch.nn.ParameterDict)  # the original textual-inversion code pickled one; it only holds tensors
    return allowed


def read_state_dict(path: Path) -> StateDict:
    """All tensors of a model file, on the CPU.

    Raises:
        ModelFileError: unreadable, truncated, corrupt or unsafe file, with what to do about it.
    """
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _read_pickle(path)


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(
            f"{path.name} is not a readable .safetensors file ({e}). It is probably truncated or corrupt: "
            "download it again, and check that it is not a web page saved under that name.") from e


def read_pickle_object(path: Path, kind: str = "model") -> object:
    """The whole object in a pickled ``.ckpt``/``.pt``/``.bin``, loaded with ``torch.load(weights_only=True)``.

    Only tensors, plain containers and the inert classes of :func:`_pickle_allowlist` can be built; anything else
    is refused before it runs.

    Args:
        path: the file.
        kind: what the file should be ("model", "embedding"), for the error messages.

    Raises:
        ModelFileError: unsafe, truncated or corrupt file, with what to do about it.
    """
    try:
        with torch.serialization.safe_globals(_pickle_allowlist()):
            # No mmap: tensors backed by the user's file would change (or fault) if the file is replaced.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _first_line(e)
        if "global" in str(e).lower() or "weights_only" in str(e):
            raise ModelFileError(
                f"Refused to load {path.name}: its pickle asks to run or build something that is not a tensor "
                f"({detail}). Nothing in it was executed. Pickled .ckpt/.pt files can carry code; get a "
                f".safetensors version of this {kind} instead.") from e
        raise ModelFileError(f"{path.name} is corrupt ({detail}); download it again.") from e
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelFileError(
            f"{path.name} could not be read ({type(e).__name__}: {e}). It is probably truncated or corrupt: "
            "download it again.") from e


def _read_pickle(path: Path) -> StateDict:
    loaded = read_pickle_object(path)
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelFileError(f"{path.name} holds a {type(loaded).__name__}, not a dictionary of tensors.")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def normalize_sd1_keys(state_dict: StateDict) -> StateDict:
    """Rename old CLIP keys and drop entries the loaders must not see (EMA copies, CLIP position ids)."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith("model_ema.") or key.endswith("embeddings.position_ids"):
            continue
        for old, new in _SD1_CLIP_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def check_sd1(state_dict: StateDict, name: str) -> None:
    """Refuse files that are not SD1.x txt2img checkpoints, saying what the file is and where it belongs."""
    keys = state_dict.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise ModelFileError(f"{name} is an SDXL checkpoint; this web UI runs Stable Diffusion 1.x checkpoints only.")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelFileError(f"{name} is an SD 2.x checkpoint; this web UI runs Stable Diffusion 1.x checkpoints only.")
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in keys):
        raise ModelFileError(f"{name} is a LoRA, not a checkpoint: move it to models/Lora and use <lora:name:1>.")
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ModelFileError(
            f"{name} has no UNet weights ({UNET_PREFIX}*): it is not a full SD1.x checkpoint "
            "(a VAE belongs in models/VAE, an embedding in embeddings/).")
    if not any(k.startswith(CLIP_PREFIX) for k in keys):
        raise ModelFileError(f"{name} has no CLIP text-encoder weights ({CLIP_PREFIX}*); it cannot be used alone.")
    channels = unet_in_channels(state_dict)
    if channels == 8:
        raise ModelFileError(f"{name} takes 8 input channels: an instruct-pix2pix model, which is not supported; "
                             "use a txt2img (4-channel) or inpainting (9-channel) SD1.x checkpoint.")
    if channels not in (4, 9):
        raise ModelFileError(f"{name} takes {channels} input channels; SD1.x checkpoints take 4 (txt2img) or 9 "
                             "(inpainting).")


def unet_in_channels(state_dict: StateDict) -> int:
    """The UNet's input channels read off its first convolution (4 for txt2img, 9 for inpainting models)."""
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    return int(conv_in.shape[1]) if conv_in is not None else 4


def default_config(state_dict: StateDict) -> dict | None:
    """The LDM config for a checkpoint without a sidecar ``.yaml``: None for SD1.5's shapes (the diffusers configs
    in configs/sd15), ``configs/v1-inpainting-inference.yaml`` for a 9-channel (inpainting) UNet, as A1111 picks."""
    if unet_in_channels(state_dict) != 9:
        return None
    return yaml.safe_load((CONFIGS_DIR / INPAINTING_CONFIG).read_text(encoding="utf-8"))


def read_sidecar_config(checkpoint: Path) -> dict | None:
    """The A1111-style ``<name>.yaml`` beside a checkpoint, parsed, or ``None`` when there is none."""
    path = checkpoint.with_suffix(".yaml")
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ModelFileError(f"The config {path.name} beside {checkpoint.name} is not valid YAML ({e}).") from e
    if not isinstance(config, dict) or "model" not in config:
        raise ModelFileError(f"The config {path.name} has no 'model' section; it is not an LDM config.")
    return config


def build_pipeline(state_dict: StateDict, original_config: dict | None, name: str):
    """Create a fp32 CPU ``StableDiffusionPipeline`` from an LDM state dict.

    Args:
        state_dict: the checkpoint's tensors (LDM keys), already checked with :func:`check_sd1`.
        original_config: the sidecar LDM config, or ``None`` for SD1.5's shapes.
        name: file name, for error messages.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    state_dict = normalize_sd1_keys(state_dict)
    config = {"original_config": original_config} if original_config else {"config": str(SD15_CONFIG_DIR)}
    try:
        unet = UNet2DConditionModel.from_single_file(
            state_dict, **config, **({} if original_config else {"subfolder": "unet"}), local_files_only=True)
        vae = AutoencoderKL.from_single_file(
            state_dict, **config, **({} if original_config else {"subfolder": "vae"}), local_files_only=True)
        text_encoder = _build_text_encoder(state_dict, original_config, name)
    except (RuntimeError, ValueError, KeyError) as e:
        hint = ("its shapes do not match the .yaml beside it" if original_config else
                "its shapes are not SD1.5's; put an LDM config named like the checkpoint (.yaml) beside it")
        raise ModelFileError(f"{name} could not be loaded: {hint} ({type(e).__name__}: {_first_line(e)}).") from e
    scheduler = PNDMScheduler.from_config(_scheduler_config(original_config))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _build_text_encoder(state_dict: StateDict, original_config: dict | None, name: str) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    values = json.loads((SD15_CONFIG_DIR / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    values.update(_text_config_from_tensors(state_dict))
    params = (original_config or {}).get("model", {}).get("params", {}).get("cond_stage_config", {}).get("params") or {}
    values.update(params.get("text_config") or {})
    if values["hidden_size"] % values["num_attention_heads"]:
        raise ModelFileError(f"{name}: text encoder width {values['hidden_size']} is not divisible by "
                             f"{values['num_attention_heads']} heads; set text_config in the sidecar .yaml.")
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on "meta": no 123M-parameter random init
        model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in values.items() if not k.startswith("_")}))
    weights = {k[len(CLIP_PREFIX):]: v for k, v in state_dict.items() if k.startswith(CLIP_PREFIX)}
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelFileError(f"{name}: text encoder weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return model.eval()


def _text_config_from_tensors(state_dict: StateDict) -> dict[str, int]:
    """Text-encoder sizes that can be read off the tensors (the head count cannot)."""
    tokens = state_dict[CLIP_PREFIX + "embeddings.token_embedding.weight"]
    positions = state_dict[CLIP_PREFIX + "embeddings.position_embedding.weight"]
    layers = {int(k[len(CLIP_PREFIX + "encoder.layers."):].split(".")[0])
              for k in state_dict if k.startswith(CLIP_PREFIX + "encoder.layers.")}
    fc1 = state_dict[CLIP_PREFIX + "encoder.layers.0.mlp.fc1.weight"]
    hidden = int(tokens.shape[1])
    found = {"vocab_size": int(tokens.shape[0]), "hidden_size": hidden, "max_position_embeddings": int(positions.shape[0]),
             "num_hidden_layers": len(layers), "intermediate_size": int(fc1.shape[0])}
    if hidden % 64 == 0:
        found["num_attention_heads"] = hidden // 64  # CLIP's heads are 64 wide
    return found


def _scheduler_config(original_config: dict | None) -> dict:
    config = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    params = (original_config or {}).get("model", {}).get("params", {})
    for ours, theirs in (("beta_start", "linear_start"), ("beta_end", "linear_end"), ("num_train_timesteps", "timesteps")):
        if theirs in params:
            config[ours] = params[theirs]
    if params.get("parameterization") == "v":
        config["prediction_type"] = "v_prediction"
    return config


def load_tokenizer():
    """The CLIP ViT-L/14 tokenizer bundled in configs/ (byte-identical to OpenAI's files)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(SD15_CONFIG_DIR / "tokenizer"), local_files_only=True)


def load_diffusers_folder(folder: Path):
    """A diffusers-format SD1.x pipeline folder (``model_index.json``), loaded offline in fp32 on the CPU."""
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), local_files_only=True, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise ModelFileError(f"The diffusers folder {folder.name} could not be loaded ({_first_line(e)}).") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
