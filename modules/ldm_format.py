"""Write diffusers SD1.x components in the original LDM ("CompVis") single-file key layout.

diffusers reads LDM checkpoints (``convert_ldm_*`` in ``diffusers.loaders.single_file_utils``) but has no
writer. We need one to produce checkpoints in the format real users download: the demo model and the
test fixtures are built as diffusers modules and saved through :func:`pipeline_to_ldm`. The mapping is
generic in the number of blocks and ``layers_per_block``, so tiny models keep the real layout.

Layout facts (SD1.x):

* UNet under ``model.diffusion_model.``: ``input_blocks.0.0`` is ``conv_in``; down level ``i`` resnet/attention
  ``j`` is ``input_blocks.{1 + i*(L+1) + j}.{0|1}``; its downsampler ``input_blocks.{(i+1)*(L+1)}.0.op``;
  ``middle_block.{0,1,2}``; up level ``i`` resnet/attention ``j`` is ``output_blocks.{i*(L+1) + j}.{0|1}`` and its
  upsampler the next index (``.1`` without attention, ``.2`` with it); ``time_embed.{0,2}``; ``out.{0,2}``.
* VAE under ``first_stage_model.``: ``encoder.down.{i}.block.{j}``; decoder levels are numbered in reverse
  (``decoder.up.{n-1-i}``); the mid attention uses 1x1 convolutions named ``q/k/v/proj_out``.
* CLIP under ``cond_stage_model.transformer.text_model.`` (transformers >= 5.6 dropped the ``text_model.``
  level from ``CLIPTextModel``'s own keys, so it is added back here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_RESNET_NAMES = (  # diffusers → LDM inside a UNet resnet block
    ("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."),
)
_VAE_ATTENTION_NAMES = (
    ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."),
)


def unet_block_map(down_block_types: list[str], up_block_types: list[str], layers_per_block: int) -> list[tuple[str, str]]:
    """Prefix pairs (diffusers module path → LDM module path) for every UNet block.

    Shared with the LoRA key mapping: kohya files name UNet modules either way.
    """
    per_level = layers_per_block + 1
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(len(down_block_types)):
        for j in range(layers_per_block):
            index = 1 + i * per_level + j
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{index}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{index}.1.")]
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per_level}.0.op."))
    for i, block_type in enumerate(up_block_types):
        for j in range(per_level):
            index = i * per_level + j
            pairs += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{index}.0."),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{index}.1.")]
        slot = 2 if block_type.startswith("CrossAttn") else 1
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * per_level + layers_per_block}.{slot}."))
    return pairs


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict → LDM keys (with the ``model.diffusion_model.`` prefix)."""
    pairs = unet_block_map(list(config["down_block_types"]), list(config["up_block_types"]),  # type: ignore[arg-type]
                           int(config["layers_per_block"]))  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _replace_prefix(key, pairs)
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key!r}")
        if ".resnets." in key:
            head = _block_head(new)
            rest = new[len(head):]
            new = head + (_replace_prefix(rest, _RESNET_NAMES) or rest)
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict → LDM keys (with the ``first_stage_model.`` prefix)."""
    levels = len(config["block_out_channels"])  # type: ignore[arg-type]
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for i in range(levels):
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")]
    for part in ("encoder.", "decoder."):
        pairs += [(part + "mid_block.resnets.0.", part + "mid.block_1."), (part + "mid_block.resnets.1.", part + "mid.block_2."),
                  (part + "mid_block.attentions.0.", part + "mid.attn_1.")]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _replace_prefix(key, pairs) or key
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            head, rest = new.split(".mid.attn_1.")
            rest = _replace_prefix(rest, _VAE_ATTENTION_NAMES) or rest
            new = f"{head}.mid.attn_1.{rest}"
            if rest.endswith("weight") and value.ndim == 2:  # Linear (diffusers) → 1x1 conv (LDM)
                value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModel`` state dict → LDM keys, with the ``text_model.`` level real files have."""
    return {CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state_dict.items()}


def pipeline_to_ldm(unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One LDM single-file state dict from the three diffusers/transformers modules (tensors made contiguous).

    A real SD1 file also carries ``embeddings.position_ids``; it is added so loaders meet it as they would there.
    """
    out = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_encoder_to_ldm(text_encoder.state_dict()),
    }
    positions = text_encoder.config.max_position_embeddings
    out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    return {k: v.detach().contiguous() for k, v in out.items()}


def _replace_prefix(key: str, pairs: Iterable[tuple[str, str]]) -> str | None:
    """Replace the first matching prefix of ``key``; ``None`` when no pair matches."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _block_head(ldm_key: str) -> str:
    """``input_blocks.4.0.conv1.weight`` → ``input_blocks.4.0.`` (the block's own prefix)."""
    parts = ldm_key.split(".")
    depth = 2 if parts[0] == "middle_block" else 3
    return ".".join(parts[:depth]) + "."
