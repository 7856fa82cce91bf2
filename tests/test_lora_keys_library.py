"""LoRA key mapping and the LoRA library, against independent references.

* Key names: kohya files are produced by diffusers' own converter (``convert_state_dict_to_kohya``) from PEFT
  adapters attached with ``peft`` to the tiny model; every key must land on the module PEFT wrapped. LDM-spelled keys
  are derived with A1111's ``convert_diffusers_name_to_compvis`` table, written below as data (independent of
  ``modules.ldm_format``). PEFT's own ``scaling`` is the reference for alpha from diffusers' adapter metadata.
* Library: discovery, aliases, metadata, sidecar, hashes (computed here from the raw bytes), LRU cache, errors, API.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import random
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import load_lora_package
from safetensors.torch import save_file

from modules import demo_model
from modules.hashes import HashCache
from modules.model_loading import ModelFileError
from modules.options import Options

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv", "linear_1", "linear_2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

# A1111 networks.convert_diffusers_name_to_compvis for SD1 (reference §2.2), as data: regex → A1111 layer key.
RESNET_SUFFIX = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                 "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _suffix(kind: str, rest: str) -> str:
    return RESNET_SUFFIX.get(rest, rest) if kind == "resnets" else rest


COMPVIS_RULES = [
    (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
    (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
    (r"lora_unet_time_embedding_linear_(\d+)(.*)", lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"),
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_"
               f"{_suffix(m[2], m[4])}"),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{_suffix(m[1], m[3])}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_"
               f"{_suffix(m[2], m[4])}"),
    (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"),
    (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
     lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"),
]


def a1111_compvis(module_part: str) -> str | None:
    for pattern, build in COMPVIS_RULES:
        m = re.fullmatch(pattern, module_part)
        if m:
            return build(m)
    return None


# -- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora():
    pkg = load_lora_package()
    return SimpleNamespace(**{name: importlib.import_module(f"{pkg.__name__}.{name}")
                              for name in ("lora_keys", "library", "api")})


@pytest.fixture(scope="module")
def model():
    unet, _, text_encoder = demo_model.build_components()
    return unet, text_encoder


@pytest.fixture(scope="module")
def key_map(lora, model):
    return lora.lora_keys.build_key_map(*model)


def _with_adapters(model, unet_config, te_config):
    from peft.tuners.lora import LoraLayer

    unet, te = copy.deepcopy(model[0]), copy.deepcopy(model[1])
    torch.manual_seed(1)
    unet.add_adapter(unet_config)
    te.add_adapter(te_config)
    wrapped = {("unet", n) for n, m in unet.named_modules() if isinstance(m, LoraLayer)}
    wrapped |= {("text_encoder", n) for n, m in te.named_modules() if isinstance(m, LoraLayer)}
    return unet, te, wrapped


@pytest.fixture(scope="module")
def fixtures(model):
    """PEFT adapters on copies of the tiny model; their PEFT state dict and diffusers' kohya conversion of it."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict

    unet, te, wrapped = _with_adapters(
        model, LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=UNET_TARGETS),
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=TE_TARGETS))
    peft_unet, peft_te = get_peft_model_state_dict(unet), get_peft_model_state_dict(te)
    peft = {**{"unet." + k: v for k, v in peft_unet.items()}, **{"text_encoder." + k: v for k, v in peft_te.items()}}
    kohya = convert_state_dict_to_kohya(peft)
    return SimpleNamespace(peft=peft, peft_unet=peft_unet, peft_te=peft_te, kohya=kohya, wrapped=wrapped)


def group_sets(parsed):
    return {key: {name: tensor for name, tensor in w.w.items()} for key, w in parsed.groups.items()}


def same_groups(a, b) -> bool:
    ga, gb = group_sets(a), group_sets(b)
    return ga.keys() == gb.keys() and all(
        ga[k].keys() == gb[k].keys() and all(torch.equal(ga[k][n], gb[k][n]) for n in ga[k]) for k in ga)


# -- (a) kohya keys written by diffusers' converter ------------------------------------------------------------------

def test_kohya_from_diffusers_lands_on_the_modules_peft_wrapped(lora, key_map, model, fixtures):
    parsed = lora.lora_keys.group_state_dict(fixtures.kohya, key_map)
    assert parsed.unmatched == [] and parsed.duplicates == []
    assert set(parsed.groups) == fixtures.wrapped
    assert len(fixtures.wrapped) > 150  # attention, ff, resnet convs, samplers, time embedding, conv_in/out, TE
    unet, te = model
    for (component, path), weights in parsed.groups.items():
        assert set(weights.w) == {"lora_down.weight", "lora_up.weight", "alpha"}
        prefix = "unet." if component == "unet" else "text_encoder."
        assert torch.equal(weights.w["lora_down.weight"], fixtures.peft[f"{prefix}{path}.lora_A.weight"])
        assert torch.equal(weights.w["lora_up.weight"], fixtures.peft[f"{prefix}{path}.lora_B.weight"])
        live = (unet if component == "unet" else te).get_submodule(path)
        assert weights.weight_shape == tuple(live.weight.shape)
        assert weights.module_type == type(live).__name__
        assert weights.module_path == path and weights.component == component
        assert weights.network_key.startswith("lora_unet_" if component == "unet" else "lora_te1_encoder_")
        assert key_map.lookup(key_map.kohya_name((component, path))) == (component, path)
    assert parsed.sd_version_hint is None and parsed.bundled_embeddings == {}


def test_peft_dotted_keys_with_and_without_component_prefix(lora, key_map, fixtures):
    kohya = lora.lora_keys.group_state_dict(fixtures.kohya, key_map)
    for state_dict in (fixtures.peft, fixtures.peft_unet, fixtures.peft_te,
                       {"text_encoder.text_model." + k: v for k, v in fixtures.peft_te.items()},
                       {"text_model." + k: v for k, v in fixtures.peft_te.items()}):
        parsed = lora.lora_keys.group_state_dict(state_dict, key_map)
        assert parsed.unmatched == []
        assert parsed.groups and set(parsed.groups) <= set(kohya.groups)
        for key, weights in parsed.groups.items():
            assert set(weights.w) == {"lora_down.weight", "lora_up.weight"}  # no alpha: scale 1 (= alpha rank)
            assert torch.equal(weights.w["lora_up.weight"], kohya.groups[key].w["lora_up.weight"])
    both = lora.lora_keys.group_state_dict(fixtures.peft, key_map)
    assert set(both.groups) == set(kohya.groups)


def test_old_diffusers_formats(lora, key_map, model):
    unet, _ = model
    g = torch.Generator().manual_seed(0)
    state_dict, expected = {}, set()
    for name in unet.attn_processors:  # diffusers' own names: "...attn1.processor"
        attention = name[:-len(".processor")]
        for lora_name, target in (("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"),
                                  ("to_out_lora", "to_out.0")):
            for part in ("down", "up"):
                state_dict[f"unet.{name}.{lora_name}.{part}.weight"] = torch.randn(2, 2, generator=g)
            expected.add(("unet", f"{attention}.{target}"))
    state_dict["unet.conv_in.lora.down.weight"] = torch.randn(2, 4, 3, 3, generator=g)  # LoRACompatibleConv era
    state_dict["unet.conv_in.lora.up.weight"] = torch.randn(32, 2, 1, 1, generator=g)
    state_dict["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight"] = torch.randn(2, 2)
    state_dict["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight"] = torch.randn(2, 2)
    expected |= {("unet", "conv_in"), ("text_encoder", "encoder.layers.0.mlp.fc1")}
    parsed = lora.lora_keys.group_state_dict(state_dict, key_map)
    assert parsed.unmatched == []
    assert set(parsed.groups) == expected
    assert all(set(w.w) == {"lora_down.weight", "lora_up.weight"} for w in parsed.groups.values())


def test_peft_alpha_from_diffusers_metadata_gives_peft_scaling(lora, key_map, model, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    unet, te, wrapped = _with_adapters(
        model,
        LoraConfig(r=4, lora_alpha=8, alpha_pattern={"conv_in": 3}, rank_pattern={"conv_in": 2},
                   init_lora_weights=False, target_modules=["to_q", "conv_in", "proj_out"]),
        LoraConfig(r=4, lora_alpha=6, use_rslora=True, init_lora_weights=False, target_modules=["q_proj"]))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet), text_encoder_lora_layers=get_peft_model_state_dict(te),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te.peft_config["default"].to_dict(), weight_name="peft.safetensors")
    path = tmp_path / "peft.safetensors"
    library = lora.library.LoraLibrary([tmp_path], HashCache(None), Options(None))
    loaded = library.load(library.find("peft"), key_map)
    assert loaded.unmatched == [] and set(loaded.groups) == wrapped
    for (component, module_path), weights in loaded.groups.items():
        layer = (unet if component == "unet" else te).get_submodule(module_path)
        rank = weights.w["lora_down.weight"].shape[0]
        assert float(weights.w["alpha"]) / rank == pytest.approx(layer.scaling["default"])
    assert path.exists()


# -- (b) CompVis/LDM spellings (A1111's table) -----------------------------------------------------------------------

def test_ldm_spellings_map_to_the_same_modules(lora, key_map, fixtures):
    module_parts = {k.partition(".")[0] for k in fixtures.kohya if k.startswith("lora_unet_")}
    renamed = {}
    for part in module_parts:
        compvis = a1111_compvis(part)
        assert compvis is not None, part  # the table covers every UNet module diffusers' converter wrote
        diffusers_target = key_map.lookup(part)
        assert diffusers_target is not None
        assert key_map.lookup("lora_unet_" + compvis[len("diffusion_model_"):]) == diffusers_target, part
        assert key_map.lookup(compvis) == diffusers_target, part
        renamed[part] = "lora_unet_" + compvis[len("diffusion_model_"):]
    assert any("output_blocks_2_1_conv" in v for v in renamed.values())  # upsampler without attention
    assert any("middle_block_2_in_layers_2" in v for v in renamed.values())
    ldm_file = {}
    for key, tensor in fixtures.kohya.items():
        part, _, rest = key.partition(".")
        ldm_file[f"{renamed.get(part, part)}.{rest}"] = tensor
    original = lora.lora_keys.group_state_dict(fixtures.kohya, key_map)
    ldm = lora.lora_keys.group_state_dict(ldm_file, key_map)
    assert ldm.unmatched == [] and same_groups(original, ldm)
    oft = lora.lora_keys.group_state_dict({k.replace("lora_unet_", "oft_unet_"): v for k, v in ldm_file.items()
                                           if k.startswith("lora_unet_")}, key_map)
    assert oft.unmatched == [] and set(oft.groups) == {k for k in original.groups if k[0] == "unet"}


def test_ldm_spellings_on_the_real_sd15_layout(lora):
    """The full SD1.5 module tree (built on the meta device: no memory, no weights) against A1111's table."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.paths import CONFIGS_DIR

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(CONFIGS_DIR / "sd15" / "unet")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(CONFIGS_DIR / "sd15" / "text_encoder")))
    key_map = lora.lora_keys.build_key_map(unet, te)
    covered = set()
    for component, path in key_map.modules:
        if component != "unet":
            continue
        kohya = "lora_unet_" + path.replace(".", "_")
        assert key_map.lookup(kohya) == ("unet", path)
        compvis = a1111_compvis(kohya)
        if compvis is None:
            continue  # A1111's table has no rule (conv_norm_out, time embedding norms): no LDM spelling to check
        covered.add(compvis)
        assert key_map.lookup(compvis) == ("unet", path), compvis
        assert key_map.lookup("lora_unet_" + compvis[len("diffusion_model_"):]) == ("unet", path), compvis
    assert {"diffusion_model_output_blocks_2_1_conv", "diffusion_model_output_blocks_8_2_conv",
            "diffusion_model_input_blocks_9_0_op", "diffusion_model_middle_block_1_proj_in",
            "diffusion_model_output_blocks_11_1_transformer_blocks_0_attn2_to_k"} <= covered
    assert len(covered) > 350
    assert key_map.lookup("lora_te_text_model_encoder_layers_11_mlp_fc2") == ("text_encoder", "encoder.layers.11.mlp.fc2")
    assert key_map.ambiguous == frozenset()


# -- (c) text-encoder spellings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["lora_te_text_model_encoder_", "lora_te1_text_model_encoder_", "lora_te_encoder_",
                                    "lora_te1_encoder_", "transformer_text_model_encoder_"])
def test_text_encoder_spellings(lora, key_map, fixtures, prefix):
    te_keys = {k: v for k, v in fixtures.kohya.items() if k.startswith("lora_te1_encoder_")}
    assert te_keys
    original = lora.lora_keys.group_state_dict(te_keys, key_map)
    renamed = lora.lora_keys.group_state_dict(
        {prefix + k[len("lora_te1_encoder_"):]: v for k, v in te_keys.items()}, key_map)
    assert renamed.unmatched == [] and same_groups(original, renamed)
    assert all(component == "text_encoder" for component, _ in renamed.groups)


# -- (d) unmatched keys, hints, duplicates, bundled embeddings ------------------------------------------------------

def test_unmatched_keys_are_reported_with_a_version_hint(lora, key_map, fixtures):
    state_dict = dict(fixtures.kohya)
    foreign = {
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 2),
        "lora_unet_down_blocks_0_atentions_0_proj_in.lora_up.weight": torch.zeros(2, 2),  # typo
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight": torch.zeros(2, 2),
        "lora_unet_conv_in": torch.zeros(2),  # no weight part
    }
    state_dict.update(foreign)
    parsed = lora.lora_keys.group_state_dict(state_dict, key_map)
    assert sorted(parsed.unmatched) == sorted(foreign)
    assert len(parsed.groups) == len(fixtures.wrapped)
    assert parsed.sd_version_hint == "SDXL"
    report = parsed.problems("x.safetensors")
    assert "4 of its keys" in report and "SDXL" in report and "x.safetensors" in report
    sd2 = lora.lora_keys.group_state_dict(
        {"lora_te_text_model_encoder_layers_20_mlp_fc1.lora_up.weight": torch.zeros(1)}, key_map)
    assert sd2.sd_version_hint == "SD2" and sd2.groups == {}
    typo_only = lora.lora_keys.group_state_dict(
        {"lora_unet_down_blocks_0_atentions_0_proj_in.alpha": torch.tensor(1.0)}, key_map)
    assert typo_only.sd_version_hint is None and typo_only.unmatched


def test_duplicates_and_bundled_embeddings(lora, key_map):
    a, b = torch.ones(2, 32), torch.zeros(2, 32)
    parsed = lora.lora_keys.group_state_dict({
        "lora_unet_conv_in.lora_down.weight": a,
        "lora_unet_input_blocks_0_0.lora_down.weight": b,  # the same module, another spelling
        "bundle_emb.mystyle.string_to_param.*": torch.ones(2, 32),
        "bundle_emb.other.emb_params": torch.ones(1, 32),
        "bundle_emb.broken": torch.ones(1),
    }, key_map)
    assert parsed.duplicates == ["lora_unet_input_blocks_0_0.lora_down.weight"]
    assert torch.equal(parsed.groups[("unet", "conv_in")].w["lora_down.weight"], a)
    assert set(parsed.bundled_embeddings) == {"mystyle", "other"}
    assert set(parsed.bundled_embeddings["mystyle"]) == {"string_to_param"}
    assert set(parsed.bundled_embeddings["mystyle"]["string_to_param"]) == {"*"}
    assert set(parsed.bundled_embeddings["other"]) == {"emb_params"}
    assert parsed.unmatched == ["bundle_emb.broken"]


# -- (e) the library ------------------------------------------------------------------------------------------------

def write_lora(path: Path, metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_conv_in.lora_down.weight": torch.randn(2, 4, 3, 3, generator=g),
               "lora_unet_conv_in.lora_up.weight": torch.randn(32, 2, 1, 1, generator=g),
               "lora_unet_conv_in.alpha": torch.tensor(1.0)}, str(path), metadata=metadata)
    return path


def make_library(lora, *dirs: Path, opts=None, hashes=None, **kwargs):
    return lora.library.LoraLibrary(list(dirs), hashes or HashCache(None), opts or Options(None), **kwargs)


def raw_header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length])


def test_discovery_order_names_and_hidden(lora, tmp_path):
    loras, lyco = tmp_path / "Lora", tmp_path / "LyCORIS"
    for rel in ("x10.safetensors", "x2.safetensors", "b/dup.safetensors", "a/dup.safetensors", ".hidden/h.safetensors",
                ".dot.safetensors", "A10/y.safetensors", "A9/z.safetensors"):
        write_lora(loras / rel)
    torch.save({"lora_unet_conv_in.alpha": torch.tensor(1.0)}, loras / "X1.pt")
    (loras / "notes.txt").write_text("not a network")
    write_lora(lyco / "ly.safetensors")
    (loras / "a" / "loop").symlink_to(loras, target_is_directory=True)  # followed, but each real folder once
    library = make_library(lora, loras, lyco)
    # natural, case-insensitive order: root files, then folders a < A9 < A10 < b; a name keeps its first position
    assert [e.name for e in library.entries()] == ["X1", "x2", "x10", "dup", "z", "y", "ly"]
    assert [e.path.parent.name for e in library.entries()][3:] == ["b", "A9", "A10", "LyCORIS"]
    assert library.find("dup").path == loras / "b" / "dup.safetensors"  # the last one in walk order wins
    assert library.find("h") is None and library.find("dot") is None and library.find(".dot") is None


def test_each_real_file_is_listed_once(lora, tmp_path):
    """The LyCORIS folder inside the Lora folder, and a file linked under another name: one entry per real file,
    at its first place in walk order; a broken link and a folder named like a network are not files."""
    loras = tmp_path / "Lora"
    write_lora(loras / "a" / "one.safetensors")
    write_lora(loras / "LyCORIS" / "ly.safetensors")
    (loras / "b").mkdir()
    (loras / "b" / "alias.safetensors").symlink_to(loras / "a" / "one.safetensors")
    (loras / "b" / "broken.safetensors").symlink_to(loras / "gone.safetensors")
    (loras / "b" / "folder.safetensors").mkdir()
    library = make_library(lora, loras, loras / "LyCORIS")
    assert [(e.name, e.path.parent.name) for e in library.entries()] == [("one", "a"), ("ly", "LyCORIS")]


def test_aliases_forbidden_and_preferred_name(lora, tmp_path):
    write_lora(tmp_path / "one.safetensors", {"ss_output_name": "shared"})
    write_lora(tmp_path / "two.safetensors", {"ss_output_name": "shared"})
    write_lora(tmp_path / "three.safetensors", {"ss_output_name": "Cat Style"})
    write_lora(tmp_path / "four.safetensors", {"ss_output_name": "none"})
    opts = Options(None)
    library = make_library(lora, tmp_path, opts=opts)
    one, three, four = library.find("one"), library.find("three"), library.find("four")
    assert library.find("shared") is None  # duplicate alias: only the file names work
    assert library.find("two").name == "two" and library.get_alias(one) == "one"
    assert library.find("Cat Style") is three and library.find("cat style") is None
    assert library.get_alias(three) == "Cat Style"
    assert library.find("none") is None and library.get_alias(four) == "four"
    opts.set("lora_preferred_name", "Filename")
    assert library.get_alias(three) == "three"
    write_lora(tmp_path / "none.safetensors")
    assert library.find("none").path.name == "none.safetensors"  # a forbidden alias still finds a file name
    write_lora(tmp_path / "sub" / "late.safetensors", {"ss_output_name": "Late Alias"})
    assert library.find("late").name == "late"  # found by rescanning matching stems
    write_lora(tmp_path / "later.safetensors", {"ss_output_name": "Later Alias"})
    assert library.find("Later Alias").name == "later"  # found by the full rescan


def test_metadata_from_the_header(lora, tmp_path):
    frequency = {"10_cat": {"cat": 5, " fluffy ": 2}, "5_dog": {"cat": 1, "dog": 3}}
    metadata = {"zzz": "plain", "ss_tag_frequency": json.dumps(frequency), "ss_output_name": "kitty",
                "ss_clip_skip": "2", "broken": "{not json", "ss_sd_model_name": "v1-5", "ss_resolution": "(512, 512)"}
    path = write_lora(tmp_path / "meta.safetensors", metadata)
    library = make_library(lora, tmp_path)
    entry = library.find("kitty")
    _, header = raw_header(path)
    file_order = list(header["__metadata__"])
    assert list(entry.metadata)[:4] == ["ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_tag_frequency"]
    assert list(entry.metadata)[4:] == [k for k in file_order if k not in list(entry.metadata)[:4]]
    assert entry.metadata["ss_tag_frequency"] == frequency and entry.metadata["broken"] == "{not json"
    assert entry.sd_version == "SD1"
    assert lora.library.build_tags(entry.metadata) == [("cat", 6), ("dog", 3), ("fluffy", 2)]
    captions = {"d": {"a photo of a fluffy cat sitting": 3, "a fluffy dog on grass outside": 1}}
    assert lora.library.build_tags({"ss_tag_frequency": captions}) == [
        ("fluffy", 4), ("photo", 3), ("cat", 3), ("sitting", 3), ("dog", 1), ("grass", 1), ("outside", 1)]
    assert lora.library.build_tags({}) == [] and lora.library.build_tags({"ss_tag_frequency": "junk"}) == []
    prompt = lora.library.random_prompt_from_tags([("(x)", 10), ("y", 1)], random.Random(0))
    assert prompt.startswith("\\(x\\)")  # the top tag is always picked, brackets escaped


def test_sd_version_rules_and_sidecar(lora, tmp_path):
    write_lora(tmp_path / "xl.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    write_lora(tmp_path / "v2.safetensors", {"ss_v2": "True"})
    write_lora(tmp_path / "plain.safetensors", {"format": "pt"})
    write_lora(tmp_path / "bare.safetensors")
    torch.save({"lora_unet_conv_in.alpha": torch.tensor(1.0)}, tmp_path / "old.pt")
    library = make_library(lora, tmp_path)
    versions = {e.name: e.sd_version for e in library.entries()}
    assert versions == {"xl": "SDXL", "v2": "SD2", "plain": "SD1", "bare": "Unknown", "old": "Unknown"}
    entry = library.find("bare")
    assert library.user_metadata(entry) == {}
    data = {"description": "Ünïcode ✓ style", "sd version": "SD1", "activation text": "cat, ears",
            "preferred weight": 0.8, "negative text": "", "notes": "n"}
    library.write_user_metadata(entry, data)
    sidecar = tmp_path / "bare.json"
    assert sidecar.read_text(encoding="utf-8") == json.dumps(data, indent=4, ensure_ascii=False)
    assert library.user_metadata(entry) == data and library.sd_version(entry) == "SD1"
    sidecar.write_text("{broken", encoding="utf-8")
    assert library.user_metadata(entry) == {}


def test_hashes(lora, tmp_path):
    path = write_lora(tmp_path / "h.safetensors", {"ss_output_name": "h"})
    write_lora(tmp_path / "h_meta.safetensors", {"ss_output_name": "other", "anything": "else"})  # same tensors
    write_lora(tmp_path / "given.safetensors", {"sshs_model_hash": "ab" * 32})
    torch.save({"lora_unet_conv_in.alpha": torch.tensor(1.0)}, tmp_path / "old.pt")
    cache = HashCache(tmp_path / "cache.json")
    library = make_library(lora, tmp_path, hashes=cache)
    entry = library.find("h")
    assert entry.hash == "" and entry.shorthash == ""  # lazy
    length, _ = raw_header(path)
    expected = hashlib.sha256(path.read_bytes()[8 + length:]).hexdigest()
    assert library.read_hash(entry) == expected and entry.shorthash == expected[:12]
    assert library.shorthash(entry) == expected[:12]
    assert library.read_hash(library.find("h_meta")) == expected  # metadata does not change the addnet hash
    assert library.by_shorthash(expected[:12]) in (entry, library.find("h_meta"))
    given = library.find("given")
    assert given.hash == "ab" * 32 and library.read_hash(given) == "ab" * 32 and given.shorthash == "ab" * 6
    old = library.find("old")
    assert library.read_hash(old) == hashlib.sha256((tmp_path / "old.pt").read_bytes()).hexdigest()
    again = make_library(lora, tmp_path, hashes=HashCache(tmp_path / "cache.json"))
    assert again.find("h").hash == expected  # known at listing from cache.json
    quiet = make_library(lora, tmp_path / "none", hashes=HashCache(None), no_hashing=True)
    write_lora(tmp_path / "none" / "q.safetensors")
    assert quiet.read_hash(quiet.find("q")) == ""


def test_load_is_cached_until_the_file_changes(lora, key_map, tmp_path):
    opts = Options(None)
    opts.set("lora_in_memory_limit", 1)
    library = make_library(lora, tmp_path, opts=opts)
    path = write_lora(tmp_path / "a.safetensors", {"ss_output_name": "a"})
    write_lora(tmp_path / "b.safetensors", seed=1)
    entry = library.find("a")
    first = library.load(entry, key_map)
    assert set(first.groups) == {("unet", "conv_in")} and first.unmatched == []
    assert library.load(entry, key_map) is first
    before = first.groups[("unet", "conv_in")].w["lora_down.weight"]
    stat = path.stat()
    write_lora(path, {"ss_output_name": "a"}, seed=5)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = library.load(entry, key_map)
    assert changed is not first and changed.entry is not entry  # the stale listing is replaced too
    assert changed.entry.stamp == (path.stat().st_mtime_ns, path.stat().st_size)
    assert not torch.equal(changed.groups[("unet", "conv_in")].w["lora_down.weight"], before)
    assert library.load(changed.entry, key_map) is changed
    library.load(library.find("b"), key_map)  # evicts "a" (limit 1)
    assert library.load(changed.entry, key_map) is not changed
    opts.set("lora_in_memory_limit", 0)
    assert library.load(changed.entry, key_map) is not library.load(changed.entry, key_map)


def test_kohya_file_from_disk_in_both_formats(lora, key_map, fixtures, tmp_path):
    save_file({k: v.contiguous() for k, v in fixtures.kohya.items()}, str(tmp_path / "k.safetensors"))
    torch.save(fixtures.kohya, tmp_path / "k_old.pt")
    library = make_library(lora, tmp_path)
    from_safetensors = library.load(library.find("k"), key_map)
    from_pickle = library.load(library.find("k_old"), key_map)
    assert set(from_safetensors.groups) == fixtures.wrapped
    assert same_groups(from_safetensors.parsed, from_pickle.parsed)


def test_corrupt_and_unsafe_files_give_clear_errors(lora, key_map, tmp_path):
    truncated = write_lora(tmp_path / "truncated.safetensors")
    truncated.write_bytes(truncated.read_bytes()[:-40])
    (tmp_path / "page.safetensors").write_bytes(b"<html><body>Not found</body></html>")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    torch.save({"lora_unet_conv_in.alpha": Payload()}, tmp_path / "evil.pt")
    library = make_library(lora, tmp_path)
    assert {e.name for e in library.entries()} == {"truncated", "page", "evil"}  # listed; loading says what is wrong
    for name, words in (("truncated", "truncated.safetensors"), ("page", "page.safetensors"), ("evil", "Refused")):
        with pytest.raises(ModelFileError, match=re.escape(words)) as error:
            library.load(library.find(name), key_map)
        assert f"{name}." in str(error.value)
    assert not marker.exists()
    gone = library.find("page")
    (tmp_path / "page.safetensors").unlink()
    with pytest.raises(ModelFileError, match="page.safetensors"):
        library.load(gone, key_map)


def test_api_list_shape(lora, tmp_path):
    write_lora(tmp_path / "one.safetensors", {"ss_output_name": "First", "ss_tag_frequency": '{"d": {"a": 1}}'})
    torch.save({"lora_unet_conv_in.alpha": torch.tensor(1.0)}, tmp_path / "two.pt")
    items = make_library(lora, tmp_path).api_list()
    assert [set(i) for i in items] == [{"name", "alias", "path", "metadata"}] * 2
    assert items[0] == {"name": "one", "alias": "First", "path": str(tmp_path / "one.safetensors"),
                        "metadata": {"ss_tag_frequency": {"d": {"a": 1}}, "ss_output_name": "First"}}
    assert items[1] == {"name": "two", "alias": "two", "path": str(tmp_path / "two.pt"), "metadata": {}}
    json.dumps(items)


# -- (f) the HTTP routes ------------------------------------------------------------------------------------------------

def test_routes(lora, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    write_lora(tmp_path / "one.safetensors", {"ss_output_name": "First"})
    library = make_library(lora, tmp_path)
    app = FastAPI()
    app.include_router(lora.api.create_router(library))
    client = TestClient(app)
    response = client.get("/sdapi/v1/loras")
    assert response.status_code == 200
    assert response.json() == [{"name": "one", "alias": "First", "path": str(tmp_path / "one.safetensors"),
                                "metadata": {"ss_output_name": "First"}}]
    write_lora(tmp_path / "two.safetensors")
    assert [i["name"] for i in client.get("/sdapi/v1/loras").json()] == ["one"]  # listed until refreshed
    refreshed = client.post("/sdapi/v1/refresh-loras")
    assert refreshed.status_code == 200 and refreshed.json() is None
    assert [i["name"] for i in client.get("/sdapi/v1/loras").json()] == ["one", "two"]
