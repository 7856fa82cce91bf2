"""Loading checkpoints: real single-file formats, the unsafe pickle, broken files, the sidecar config."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from modules import demo_model, ldm_format, model_loading
from modules.model_loading import ModelFileError


def _components(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {"unet": pipe.unet.state_dict(), "vae": pipe.vae.state_dict(), "text_encoder": pipe.text_encoder.state_dict()}


def _load(path: Path):
    state_dict = model_loading.read_state_dict(path)
    model_loading.check_sd1(state_dict, path.name)
    return model_loading.build_pipeline(state_dict, model_loading.read_sidecar_config(path), path.name)


def test_single_file_round_trip_is_exact(tiny_checkpoint: Path) -> None:
    """Our LDM writer + diffusers' LDM reader give back the generator's modules bit for bit (incl. configs)."""
    unet, vae, text_encoder = demo_model.build_components()
    pipe = _load(tiny_checkpoint)
    for original, loaded in ((unet, pipe.unet), (vae, pipe.vae), (text_encoder, pipe.text_encoder)):
        a, b = original.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim"):
        assert list(pipe.unet.config[key]) == list(unet.config[key]) if isinstance(unet.config[key], (list, tuple)) \
            else pipe.unet.config[key] == unet.config[key]
    assert pipe.text_encoder.config.num_attention_heads == text_encoder.config.num_attention_heads
    assert len(pipe.tokenizer) == 49408  # the real CLIP vocabulary from configs/


def test_ckpt_and_safetensors_load_identically(tiny_checkpoint: Path, tiny_checkpoint_ckpt: Path) -> None:
    a, b = _components(_load(tiny_checkpoint)), _components(_load(tiny_checkpoint_ckpt))
    for part in a:
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_real_ldm_key_layout(tiny_checkpoint: Path) -> None:
    """The file uses the key names real SD1 checkpoints use (spot checks taken from SD1.5's own key list)."""
    keys = set(model_loading.read_state_dict(tiny_checkpoint))
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.middle_block.1.norm.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.out.2.weight", "first_stage_model.encoder.down.0.block.0.norm1.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in keys, key


class _RunsCode:
    """A pickled object whose unpickling would create a file (the classic malicious-checkpoint payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ModelFileError, match="Refused to load evil.ckpt.*Nothing in it was executed"):
        model_loading.read_state_dict(path)
    assert not marker.exists()
    # Proof that the payload is live: an unrestricted unpickler would have run it.
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"system" in data


def test_old_style_callbacks_in_ckpt_are_tolerated(tmp_path: Path) -> None:
    """Original SD .ckpt files pickle a Lightning ModelCheckpoint; it is inert and must not block loading."""

    class ModelCheckpoint:  # same qualified name as Lightning's, defined here so we can pickle one
        pass

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    import sys
    import types

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    module.ModelCheckpoint = ModelCheckpoint
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[names[-1]] = module
    try:
        callback = ModelCheckpoint()
        callback.monitor = "val/loss"
        path = tmp_path / "lightning.ckpt"
        torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"ModelCheckpoint": callback},
                    "global_step": 470000}, path)
    finally:
        for name in names:
            sys.modules.pop(name, None)
    loaded = model_loading.read_state_dict(path)
    assert torch.equal(loaded["w"], torch.ones(2))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_broken_safetensors_gets_a_clear_error(tiny_checkpoint: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "broken.safetensors"
    data = tiny_checkpoint.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"<html>404 Not Found</html>" * 10,
                      "empty": b""}[damage])
    with pytest.raises(ModelFileError, match="broken.safetensors .*(truncated or corrupt|download it again)"):
        model_loading.read_state_dict(path)


def test_truncated_ckpt_gets_a_clear_error(tiny_checkpoint_ckpt: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.ckpt"
    data = tiny_checkpoint_ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="cut.ckpt"):
        model_loading.read_state_dict(path)


@pytest.mark.parametrize(("keys", "message"), [
    (["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.out.2.weight"], "SDXL"),
    (["cond_stage_model.model.ln_final.weight", "model.diffusion_model.out.2.weight"], "SD 2.x"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "models/Lora"),
    (["encoder.conv_in.weight", "decoder.conv_out.weight"], "models/VAE"),
])
def test_files_that_are_not_sd1_checkpoints_are_named(keys: list[str], message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        model_loading.check_sd1({k: torch.zeros(1) for k in keys}, "x.safetensors")


def test_instruct_pix2pix_checkpoint_is_refused(tiny_checkpoint: Path) -> None:
    """8 input channels (instruct-pix2pix) are refused; 9 (inpainting) load: ``tests/test_inpaint_model.py``."""
    state_dict = model_loading.read_state_dict(tiny_checkpoint)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    state_dict[key] = torch.zeros(state_dict[key].shape[0], 8, 3, 3)
    with pytest.raises(ModelFileError, match="8 input channels: an instruct-pix2pix model"):
        model_loading.check_sd1(state_dict, "ip2p.safetensors")


def test_old_clip_keys_without_text_model_level_are_renamed(tiny_checkpoint: Path) -> None:
    """Early SD1 files store CLIP as ``cond_stage_model.transformer.encoder...``; A1111 renames them."""
    state_dict = model_loading.read_state_dict(tiny_checkpoint)
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in state_dict.items()}
    pipe_old = model_loading.build_pipeline(old, model_loading.read_sidecar_config(tiny_checkpoint), "old")
    pipe_new = model_loading.build_pipeline(state_dict, model_loading.read_sidecar_config(tiny_checkpoint), "new")
    a, b = pipe_old.text_encoder.state_dict(), pipe_new.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_wrong_sidecar_gives_clear_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    shutil.copyfile(tiny_checkpoint, path)
    config = model_loading.read_sidecar_config(tiny_checkpoint)
    config["model"]["params"]["unet_config"]["params"]["model_channels"] = 64
    import yaml

    path.with_suffix(".yaml").write_text(yaml.safe_dump(config))
    state_dict = model_loading.read_state_dict(path)
    with pytest.raises(ModelFileError, match="tiny.safetensors could not be loaded: its shapes do not match the .yaml"):
        model_loading.build_pipeline(state_dict, model_loading.read_sidecar_config(path), path.name)


def test_missing_sidecar_for_other_shapes_says_what_to_do(tiny_checkpoint: Path) -> None:
    state_dict = model_loading.read_state_dict(tiny_checkpoint)
    with pytest.raises(ModelFileError, match="not SD1.5's; put an LDM config"):
        model_loading.build_pipeline(state_dict, None, "tiny.safetensors")


def test_diffusers_folder_loads(tmp_path: Path) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    unet, vae, text_encoder = demo_model.build_components()
    source = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=model_loading.load_tokenizer(), unet=unet,
        scheduler=PNDMScheduler.from_pretrained(str(model_loading.SD15_CONFIG_DIR), subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path / "my-diffusers-model"
    source.save_pretrained(folder)
    loaded = model_loading.load_diffusers_folder(folder)
    a, b = unet.state_dict(), loaded.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_full_size_sd15_loads_from_bundled_configs(tmp_path: Path) -> None:
    """A checkpoint with SD1.5's real shapes and no sidecar loads offline from configs/sd15 and runs."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = model_loading.SD15_CONFIG_DIR
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    shapes = ldm_format.pipeline_to_ldm(unet, vae, text_encoder)
    generator = torch.Generator().manual_seed(0)
    state_dict = {k: (torch.randn(v.shape, generator=generator) * 0.02).half() if v.is_floating_point()
                  else torch.arange(v.shape[-1]).unsqueeze(0) for k, v in shapes.items()}
    path = tmp_path / "sd15-random.safetensors"
    save_file(state_dict, str(path))
    del state_dict, shapes
    pipe = _load(path)
    assert sum(p.numel() for p in pipe.unet.parameters()) == 859_520_964
    assert pipe.text_encoder.config.hidden_size == 768
    with torch.no_grad():
        out = pipe.unet(torch.randn(1, 4, 8, 8), torch.tensor(999), encoder_hidden_states=torch.randn(1, 77, 768))[0]
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_pickle_error_path_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f)  # a legacy (non-zip) pickle with no tensors at all
    with pytest.raises(ModelFileError, match="plain.pt"):
        state = model_loading.read_state_dict(path)
        model_loading.check_sd1(state, path.name)
