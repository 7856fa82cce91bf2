"""The tiny SD1.5-layout checkpoint: the tests' fixture factory, and the shipped trained demo model's installer.

Two models share one layout and one writer here. The *random-weight* tiny model (:func:`write_checkpoint`,
:func:`ensure_demo_checkpoint`) is the tests' fixture and the last-resort fallback. The *trained* demo model
(``models/demo``, made by ``scripts/train_demo_model.py``) is what the launcher installs when there is no
checkpoint (:func:`install_trained_demo`).

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

from modules import hashes, ldm_format

logger = logging.getLogger(__name__)

DEMO_NAME = "demo-tiny-sd15"
#: The trained demo model shipped in the repository (``scripts/train_demo_model.py`` writes it).
TRAINED_NAME = "demo-shapes-sd15"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"


class DemoModelError(ValueError):
    """The shipped trained demo model is missing or does not match its checksum."""


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
    in_channels: int = 4  # 9: an inpainting UNet (noisy latents + mask + masked-picture latents)


def build_components(spec: TinySpec = TinySpec(), seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Random-weight diffusers UNet, VAE and transformers CLIP text encoder with ``spec``'s shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    levels = len(spec.unet_channels)
    down = tuple("CrossAttnDownBlock2D" if i in spec.unet_attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if levels - 1 - i in spec.unet_attention_levels else "UpBlock2D" for i in range(levels))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=spec.in_channels, out_channels=4, block_out_channels=spec.unet_channels,
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


def sidecar_config(spec: TinySpec = TinySpec(), scale_factor: float = 0.18215) -> dict[str, object]:
    """The LDM-style ``.yaml`` (A1111's per-checkpoint config convention) describing the tiny shapes.

    ``cond_stage_config.params.text_config`` is our addition: CLIP's head count cannot be read off tensors.
    ``scale_factor`` is the latent scaling (SD's 0.18215); a VAE trained from scratch brings its own, which
    diffusers' single-file loader reads from this key.
    """
    unet = {
        "image_size": 32, "in_channels": spec.in_channels, "out_channels": 4, "model_channels": spec.unet_channels[0],
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
        "cond_stage_trainable": False, "conditioning_key": "hybrid" if spec.in_channels == 9 else "crossattn",
        "monitor": "val/loss_simple_ema",
        "scale_factor": scale_factor, "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": ddconfig,
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                              "params": {"text_config": text}},
    }
    kind = "LatentInpaintDiffusion" if spec.in_channels == 9 else "LatentDiffusion"
    return {"model": {"target": f"ldm.models.diffusion.ddpm.{kind}", "params": params}}


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
    unet, vae, text_encoder = build_components(spec, seed)
    return save_components(path, (unet, vae, text_encoder), spec, dtype)


def save_components(path: Path, components: tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module],
                    spec: TinySpec, dtype: torch.dtype = torch.float32, scale_factor: float = 0.18215) -> Path:
    """Write ``(unet, vae, text_encoder)`` with ``spec``'s shapes as a single-file LDM checkpoint + sidecar.

    Shared by the random-weight fixture (:func:`write_checkpoint`) and the trainer of the shipped demo model
    (``modules.training.base_model``), so both produce files through exactly the same code.
    """
    from safetensors.torch import save_file

    unet, vae, text_encoder = components
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
    sidecar = sidecar_config(spec, scale_factor)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(sidecar, sort_keys=False), encoding="utf-8")
    logger.info("Wrote tiny SD1.5-layout checkpoint: file=%s tensors=%d", path, len(state_dict))
    return path


def ensure_demo_checkpoint(ckpt_dir: Path) -> Path:
    """The demo checkpoint in ``ckpt_dir``, generated (about a second) if it is not there yet."""
    path = ckpt_dir / f"{DEMO_NAME}.safetensors"
    if not path.exists() or not path.with_suffix(".yaml").exists():
        write_checkpoint(path)
    return path


def shipped_checkpoint(folder: Path | None = None) -> Path:
    """The shipped trained demo checkpoint (in ``folder``, default :data:`SHIPPED_DIR`), checked against its ``.sha256``.

    Raises:
        DemoModelError: the checkpoint, its sidecar ``.yaml`` or its checksum file is missing, or the hash differs
            (a partial checkout, a Git LFS pointer, a corrupted file).
    """
    path = (folder or SHIPPED_DIR) / f"{TRAINED_NAME}.safetensors"
    checksum = path.with_name(path.name + ".sha256")
    for needed in (path, path.with_suffix(".yaml"), checksum):
        if not needed.is_file():
            raise DemoModelError(f"{needed} is missing")
    expected = checksum.read_text(encoding="utf-8").split()[0].lower()
    actual = hashes.sha256_of_file(path)
    if actual != expected:
        raise DemoModelError(f"{path.name} has sha256 {actual[:10]}, its .sha256 file says {expected[:10]}")
    return path


def install_trained_demo(ckpt_dir: Path, folder: Path | None = None) -> Path:
    """Copy the shipped trained demo model (checksum-verified) into ``ckpt_dir``; returns the copy.

    Copying, rather than teaching checkpoint discovery about ``models/demo``, makes it behave like A1111's SD 1.5
    download: the demo then is an ordinary checkpoint in the user's folder (listed, hashed, selectable, deletable),
    and ``models/demo`` stays a read-only source that ``git pull`` may update. An existing copy with the right
    bytes is kept; a damaged one is replaced.

    Raises:
        DemoModelError: the shipped files are missing or damaged (see :func:`shipped_checkpoint`).
    """
    import shutil

    source = shipped_checkpoint(folder)
    target = ckpt_dir / source.name
    expected = hashes.sha256_of_file(source)
    if not (target.is_file() and target.with_suffix(".yaml").is_file() and hashes.sha256_of_file(target) == expected):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for src, dst in ((source.with_suffix(".yaml"), target.with_suffix(".yaml")), (source, target)):
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
        logger.info("Installed the trained demo model: %s", target)
    return target


