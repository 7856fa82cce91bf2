"""The tiny SD1.5-layout checkpoint: the demo model when no checkpoint exists, and the tests' fixture factory.

It has every part of a real SD1.5 checkpoint — an LDM UNet with cross-attention and a mid block, a KL VAE
with an 8x downscale, a CLIP text encoder with the real 49408-token vocabulary — at a few MB, with random
weights from a fixed seed. It is written in the format users download (a single-file LDM ``.safetensors``
or ``.ckpt``) with the A1111-style sidecar ``.yaml`` that tells the loader its shapes, so loading it runs
exactly the code that loads a real SD1.5 file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from modules import ldm_format

logger = logging.getLogger(__name__)

DEMO_NAME = "demo-tiny-sd15"


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shapes of the tiny model. Channel counts are multiples of 32: LDM's GroupNorm always uses 32 groups."""

    unet_channels: tuple[int, ...] = (32, 64)
    unet_attention_levels: tuple[int, ...] = (0,)  # down level indices that have cross-attention
    unet_heads: int = 2
    layers_per_block: int = 2
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)  # 4 levels → 8x downscale, as SD
    vae_layers_per_block: int = 1
    text_hidden: int = 32
    text_intermediate: int = 64
    text_heads: int = 4
    text_layers: int = 5
    vocab_size: int = 49408
    max_positions: int = 77


def build_components(spec: TinySpec = TinySpec(), seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Random-weight diffusers UNet, VAE and transformers CLIP text encoder with ``spec``'s shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    levels = len(spec.unet_channels)
    down = tuple("CrossAttnDownBlock2D" if i in spec.unet_attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if levels - 1 - i in spec.unet_attention_levels else "UpBlock2D" for i in range(levels))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=spec.unet_channels,
        layers_per_block=spec.layers_per_block, down_block_types=down, up_block_types=up,
        cross_attention_dim=spec.text_hidden, attention_head_dim=spec.unet_heads, norm_num_groups=32,
    )
    vae_levels = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=spec.vae_channels,
        layers_per_block=spec.vae_layers_per_block, norm_num_groups=32, sample_size=256,
        down_block_types=("DownEncoderBlock2D",) * vae_levels, up_block_types=("UpDecoderBlock2D",) * vae_levels,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
        num_attention_heads=spec.text_heads, num_hidden_layers=spec.text_layers, vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_positions, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
        pad_token_id=1, projection_dim=spec.text_hidden,
    ))
    for module in (unet, vae, text_encoder):
        module.eval()
    return unet, vae, text_encoder


def sidecar_config(spec: TinySpec = TinySpec()) -> dict[str, object]:
    """The LDM-style ``.yaml`` (A1111's per-checkpoint config convention) describing the tiny shapes.

    ``cond_stage_config.params.text_config`` is our addition: CLIP's head count cannot be read off tensors.
    """
    unet = {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": spec.unet_channels[0],
        "attention_resolutions": [2 ** i for i in spec.unet_attention_levels],
        "num_res_blocks": spec.layers_per_block,
        "channel_mult": [c // spec.unet_channels[0] for c in spec.unet_channels],
        "num_heads": spec.unet_heads, "use_spatial_transformer": True, "transformer_depth": 1,
        "context_dim": spec.text_hidden, "use_checkpoint": False, "legacy": False,
    }
    ddconfig = {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
        "ch": spec.vae_channels[0], "ch_mult": [c // spec.vae_channels[0] for c in spec.vae_channels],
        "num_res_blocks": spec.vae_layers_per_block, "attn_resolutions": [], "dropout": 0.0,
    }
    text = {"hidden_size": spec.text_hidden, "intermediate_size": spec.text_intermediate,
            "num_attention_heads": spec.text_heads, "num_hidden_layers": spec.text_layers}
    params = {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": 4,
        "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215, "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": ddconfig,
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                              "params": {"text_config": text}},
    }
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}


def write_checkpoint(path: Path, spec: TinySpec = TinySpec(), seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write the tiny model as a single-file LDM checkpoint plus its sidecar ``.yaml``.

    The format follows the suffix: ``.safetensors``, or ``.ckpt`` (a pickled ``{"state_dict": ...}``, as the
    original SD releases were). The same seed always gives the same bytes.

    Args:
        path: destination file; its folder is created.
        spec: shapes.
        seed: weight initialisation seed.
        dtype: tensor dtype in the file (SD releases come in fp32 and fp16).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    unet, vae, text_encoder = build_components(spec, seed)
    state_dict = ldm_format.pipeline_to_ldm(unet, vae, text_encoder)
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        # One metadata key only: safetensors writes the metadata map in a per-process random order,
        # and the file's bytes (its sha256, the "Model hash") must not depend on that.
        save_file(state_dict, str(tmp), metadata={"format": "pt"})
    elif path.suffix in (".ckpt", ".pt"):
        torch.save({"state_dict": state_dict}, tmp)
    else:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r}: use .safetensors or .ckpt")
    tmp.replace(path)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(sidecar_config(spec), sort_keys=False), encoding="utf-8")
    logger.info("Wrote tiny SD1.5-layout checkpoint: file=%s tensors=%d", path, len(state_dict))
    return path


def ensure_demo_checkpoint(ckpt_dir: Path) -> Path:
    """The demo checkpoint in ``ckpt_dir``, generated (about a second) if it is not there yet."""
    path = ckpt_dir / f"{DEMO_NAME}.safetensors"
    if not path.exists() or not path.with_suffix(".yaml").exists():
        write_checkpoint(path)
    return path
