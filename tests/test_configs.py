"""Checks of the bundled offline model configuration in ``configs/``.

``configs/sd15/`` is the weight-free diffusers folder that every SD1.5 checkpoint load passes as ``config=``;
``configs/v1-inference.yaml`` is the LDM config A1111 users expect. These tests compare them with facts that do
not come from this project: published CLIP token ids and file digests, diffusers' own LDM->diffusers config
conversion, and the parameter counts of the released SD1.5 models.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # must be set before diffusers / transformers read it

import gzip
import hashlib
import importlib.util
import inspect
import json
import math
import zipfile
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"
SD15 = CONFIGS / "sd15"
TOKENIZER_DIR = SD15 / "tokenizer"
V1_YAML = CONFIGS / "v1-inference.yaml"
GENERATOR_SCRIPT = REPO_ROOT / "scripts" / "make_clip_tokenizer.py"

#: md5 of the files in the openai/clip-vit-large-patch14 repository on the Hugging Face hub.
UPSTREAM_MD5 = {
    "merges.txt": "d2bc10797e70c920c14c69729ecdab34",
    "vocab.json": "a3933521163a0e76cee6094f1d72a9cc",
}

#: Prompts with token ids published by others for OpenAI's CLIP tokenizer (shared by all OpenAI CLIP models).
REFERENCE_IDS = [
    ("a photo of a cat, masterpiece", [49406, 320, 1125, 539, 320, 2368, 267, 12066, 49407]),
    (
        "a photo of an astronaut riding a horse on mars",
        [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407],
    ),
    # Hugging Face CLIPTokenizer (openai/clip-vit-base-patch32) output quoted in a public example script.
    (
        "The quick brown fox jumps over the lazy dog.",
        [49406, 518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929, 269, 49407],
    ),
    # OpenAI `clip.tokenize` output quoted in public notes.
    ("a painting of a cat", [49406, 320, 3086, 539, 320, 2368, 49407]),
    ("bozuman", [49406, 647, 4091, 786, 49407]),
]

#: Parameter counts of the released SD1.5 components (runwayml/stable-diffusion-v1-5).
SD15_PARAMETER_COUNTS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


@lru_cache(maxsize=1)
def load_tokenizer() -> Any:
    """Load the bundled tokenizer once; it is read-only in these tests."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def load_generator() -> ModuleType:
    """Import ``scripts/make_clip_tokenizer.py`` by path (``scripts`` is not a package)."""
    spec = importlib.util.spec_from_file_location("make_clip_tokenizer", GENERATOR_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_json(path: Path) -> dict[str, Any]:
    """Read one JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def normalized(value: Any) -> Any:
    """Make config values comparable: tuples and lists both become lists."""
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    return value


def committed_merges() -> list[str]:
    """Return the merge lines of the committed ``merges.txt`` (header and trailing newline removed)."""
    text = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    assert header == "#version: 0.2"
    return body.rstrip("\n").split("\n")


# --- tokenizer -------------------------------------------------------------------------------------------------


def test_tokenizer_special_tokens_and_length() -> None:
    tok = load_tokenizer()
    assert len(tok) == 49408
    assert tok.bos_token_id == 49406
    assert tok.eos_token_id == 49407
    assert tok.pad_token_id == 49407  # SD1.x pads with the end token
    assert tok.model_max_length == 77


@pytest.mark.parametrize(("prompt", "expected"), REFERENCE_IDS)
def test_tokenizer_matches_reference_ids(prompt: str, expected: list[int]) -> None:
    assert load_tokenizer()(prompt).input_ids == expected


def test_tokenizer_pads_to_77_with_end_token() -> None:
    ids = load_tokenizer()("a photo of a cat", padding="max_length", truncation=True).input_ids
    assert len(ids) == 77
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert set(ids[7:]) == {49407}


@pytest.mark.parametrize("name", sorted(UPSTREAM_MD5))
def test_tokenizer_file_matches_upstream_md5(name: str) -> None:
    assert hashlib.md5((TOKENIZER_DIR / name).read_bytes()).hexdigest() == UPSTREAM_MD5[name]


def test_tokenizer_config_files_declare_clip_settings() -> None:
    config = read_json(TOKENIZER_DIR / "tokenizer_config.json")
    assert config["model_max_length"] == 77
    assert config["do_lower_case"] is True
    assert config["tokenizer_class"] == "CLIPTokenizer"
    assert config["bos_token"] == "<|startoftext|>"
    assert config["eos_token"] == config["pad_token"] == config["unk_token"] == "<|endoftext|>"
    assert read_json(TOKENIZER_DIR / "special_tokens_map.json")["pad_token"] == "<|endoftext|>"


# --- tokenizer generator script ---------------------------------------------------------------------------------


def test_generator_derives_committed_files_from_merges() -> None:
    """The script's vocabulary construction, fed the (md5-verified) merges, gives every committed file exactly."""
    gen = load_generator()
    merges = committed_merges()
    assert len(merges) == gen.NUM_MERGES
    files = gen.render_files("#version: 0.2\n" + "\n".join(merges) + "\n")
    assert sorted(files) == sorted(p.name for p in TOKENIZER_DIR.iterdir())
    for name, data in files.items():
        assert data == (TOKENIZER_DIR / name).read_bytes(), name


def test_generator_reads_wheel_and_ignores_extra_merges(tmp_path: Path) -> None:
    """A wheel holding the .gz works, and only the first 48894 merges are used, as in the real 262k-line list."""
    gen = load_generator()
    text = '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(committed_merges()) + "\nzz zz\nzzz zz\n"
    wheel = tmp_path / "open_clip_torch-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", gzip.compress(text.encode("utf-8")))
    out = tmp_path / "tok"
    assert gen.main([str(wheel), "--out", str(out), "--check"]) == 0
    for name in UPSTREAM_MD5:
        assert (out / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes()


def test_generator_check_rejects_wrong_merges(tmp_path: Path) -> None:
    """With --check, a list whose merge order differs from CLIP's fails and writes nothing."""
    gen = load_generator()
    merges = committed_merges()
    merges[0], merges[1] = merges[1], merges[0]
    source = tmp_path / "bpe.txt.gz"
    source.write_bytes(gzip.compress(("header\n" + "\n".join(merges) + "\n").encode("utf-8")))
    out = tmp_path / "tok"
    assert gen.main([str(source), "--out", str(out), "--check"]) == 1
    assert not out.exists()
    assert gen.main([str(source), "--out", str(out)]) == 0  # without --check it writes
    assert (out / "vocab.json").is_file()


# --- diffusers folder vs LDM yaml -------------------------------------------------------------------------------


def _assert_agrees_with_derived(derived: dict[str, Any], written: dict[str, Any], model_cls: type) -> None:
    """Check ``written`` against the config diffusers derives from the yaml.

    Keys in both files must be equal. A derived key our file leaves out must equal the model's ``__init__``
    default, because that default is what the model gets from our file. No key is skipped.
    """
    defaults = {
        name: p.default
        for name, p in inspect.signature(model_cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for key, value in derived.items():
        if key in written:
            assert normalized(written[key]) == normalized(value), key
        else:
            assert key in defaults, f"{key} is neither in our config nor an __init__ argument"
            assert normalized(defaults[key]) == normalized(value), f"{key} (default)"


def test_unet_config_agrees_with_v1_inference_yaml() -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    # An empty checkpoint is classified as SD1 ("v1"), whose default image size is 512 px -> sample_size 64.
    derived = create_unet_diffusers_config_from_ldm(yaml.safe_load(V1_YAML.read_text()), checkpoint={})
    written = read_json(SD15 / "unet" / "config.json")
    core = {
        "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
        "layers_per_block", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
        "transformer_layers_per_block",
    }  # fmt: skip
    assert core <= set(derived) & set(written)
    _assert_agrees_with_derived(derived, written, UNet2DConditionModel)


def test_vae_config_agrees_with_v1_inference_yaml() -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    derived = create_vae_diffusers_config_from_ldm(yaml.safe_load(V1_YAML.read_text()), checkpoint={})
    written = read_json(SD15 / "vae" / "config.json")
    core = {
        "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
        "latent_channels", "layers_per_block", "scaling_factor",
    }  # fmt: skip
    assert core <= set(derived) & set(written)
    _assert_agrees_with_derived(derived, written, AutoencoderKL)


def test_v1_inference_yaml_beta_schedule_matches_scheduler_config() -> None:
    params = yaml.safe_load(V1_YAML.read_text())["model"]["params"]
    scheduler = read_json(SD15 / "scheduler" / "scheduler_config.json")
    assert params["linear_start"] == scheduler["beta_start"]
    assert params["linear_end"] == scheduler["beta_end"]
    assert params["timesteps"] == scheduler["num_train_timesteps"]


def test_scheduler_gives_sd1_sigma_range() -> None:
    """SD1.x's noise levels run from sigma 0.0292 to 14.6146 (the range k-diffusion samplers report for it)."""
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler.from_pretrained(str(SD15), subfolder="scheduler", local_files_only=True)
    alphas = scheduler.alphas_cumprod.double()
    sigmas = ((1 - alphas) / alphas).sqrt()
    assert math.isclose(sigmas[0].item(), 0.0292, abs_tol=5e-5)
    assert math.isclose(sigmas[-1].item(), 14.6146, abs_tol=5e-4)
    assert scheduler.config.steps_offset == 1 and scheduler.config.skip_prk_steps


def test_model_index_lists_weight_free_pipeline() -> None:
    from diffusers import StableDiffusionPipeline

    index = StableDiffusionPipeline.load_config(str(SD15), local_files_only=True)
    assert index["_class_name"] == "StableDiffusionPipeline"
    for component in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        library, _cls = index[component]
        assert library in {"diffusers", "transformers"}
        assert (SD15 / component).is_dir(), component
    assert list(index["safety_checker"]) == [None, None]
    assert index["requires_safety_checker"] is False
    weights = [p for p in SD15.rglob("*") if p.suffix in {".bin", ".safetensors", ".ckpt", ".pt"}]
    assert weights == []


# --- architecture sizes ------------------------------------------------------------------------------------------


def test_parameter_counts_match_released_sd15() -> None:
    """Built on the meta device (no memory), each component has the released model's parameter count.

    transformers 5 keeps CLIP's ``position_ids`` as a non-persistent buffer, so it is not counted, just as in the
    released count.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(SD15), subfolder="unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD15), subfolder="vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(str(SD15), subfolder="text_encoder")),
        }
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == SD15_PARAMETER_COUNTS
