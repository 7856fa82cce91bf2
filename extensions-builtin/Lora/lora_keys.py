"""Network-file key names → live diffusers/transformers module paths, computed once per model.

A LoRA file names its target modules in one of several spellings. :func:`build_key_map` walks the LIVE UNet and
text encoder once and lists, for every module that has a weight, each spelling a file may use for it:

* kohya, diffusers-style: ``lora_unet_down_blocks_0_attentions_0_proj_in`` (``"lora_unet_" + path`` with ``.`` → ``_``);
  kohya OFT ``oft_unet_...``;
* CompVis/LDM-style (A1111's own layer names): ``lora_unet_input_blocks_1_1_proj_in``, ``diffusion_model_...``,
  ``oft_unet_input_blocks_...`` — block prefixes from :func:`modules.ldm_format.unet_block_map`;
* text encoder: ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``, ``lora_te1_text_model_...``, and both
  without ``text_model_`` (diffusers >= 0.3x with transformers >= 5.6 writes ``lora_te1_encoder_...``), plus A1111's
  layer name ``transformer_text_model_...``;
* diffusers/PEFT dotted paths: ``unet.down_blocks.0.attentions.0.proj_in``, bare ``down_blocks...``,
  ``text_encoder.text_model.encoder...`` / ``text_encoder.encoder...`` / bare ``text_model.encoder...`` /
  bare ``encoder...``, and the old attention-processor form ``...attn1.processor.to_q_lora`` (→ ``attn1.to_q``).

:func:`group_state_dict` splits each key into module part and weight part (A1111's rule: at the FIRST ``.``; when
that finds no module, the longest dotted prefix that names one), renames PEFT/diffusers weight parts to A1111's
(``lora_A.weight`` → ``lora_down.weight``, ...), turns a PEFT ``lora_alpha`` from the file's metadata into
``alpha`` tensors, and reports every key that names no module of this model (A1111 drops them at debug level).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from modules import ldm_format

# diffusers → LDM names inside a resnet block: a fact table shared with the checkpoint writer.
from modules.ldm_format import _RESNET_NAMES

from .network import NetworkWeights

logger = logging.getLogger(__name__)

UNET = "unet"
TEXT_ENCODER = "text_encoder"
ModuleKey = tuple[str, str]  # (component, live module path)

#: PEFT / diffusers weight-part names → A1111's.
SUFFIX_RENAMES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",  # old diffusers text-encoder LoRA
    "lora_linear_layer.up.weight": "lora_up.weight",
    "down.weight": "lora_down.weight",  # after ``processor.to_q_lora`` (old diffusers attention-processor LoRA)
    "up.weight": "lora_up.weight",
}

#: Old diffusers attention-processor LoRA names (``attn1.processor.to_q_lora``) → the projection they adapt.
_UNET_PROCESSOR_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
_TE_PROCESSOR_NAMES = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}

#: Key patterns that cannot belong to an SD1 model, and the model family they point at (checked in order).
_VERSION_PATTERNS = (
    (re.compile(r"^(lora_te2_|text_encoder_2\.|te2\.|conditioner\.)|label_emb|add_embedding"), "SDXL"),
    (re.compile(r"transformer_blocks[._][1-9]"), "SDXL"),  # SD1 and SD2 have transformer depth 1
    (re.compile(r"double_blocks|single_blocks|lora_transformer_|^transformer\.|joint_blocks|context_embedder"),
     "SD3/Flux"),
    (re.compile(r"model_transformer_resblocks|encoder[._]layers[._](1[2-9]|2\d)[._]"), "SD2"),  # OpenCLIP / 23 layers
)


@dataclass(frozen=True)
class ModuleInfo:
    """One live module a network can target."""

    component: str  # "unet" or "text_encoder"
    path: str  # e.g. "down_blocks.0.attentions.0.proj_in"
    module_type: str  # class name: "Linear", "Conv2d", "GroupNorm", "LayerNorm", "Embedding", ...
    weight_shape: tuple[int, ...]


@dataclass(frozen=True)
class KeyMap:
    """Every spelling of every targetable module of one model. Build with :func:`build_key_map`."""

    spellings: Mapping[str, ModuleKey]  # spelling → (component, module path)
    modules: Mapping[ModuleKey, ModuleInfo]
    signature: str  # sha1 of the module list and shapes: equal for models of the same architecture
    ambiguous: frozenset[str] = frozenset()  # spellings two modules would share; left out of ``spellings``

    def lookup(self, module_part: str) -> ModuleKey | None:
        """The module a key's module part names, or ``None``."""
        return self.spellings.get(module_part)

    def kohya_name(self, key: ModuleKey) -> str:
        """The canonical kohya/A1111 file name of a module (``lora_unet_...`` / ``lora_te_text_model_...``)."""
        component, path = key
        if component == UNET:
            return "lora_unet_" + path.replace(".", "_")
        return "lora_te_text_model_" + _strip_text_model(path).replace(".", "_")


@dataclass(frozen=True)
class ParsedNetwork:
    """A network file's tensors grouped per live module."""

    groups: dict[ModuleKey, NetworkWeights]
    unmatched: list[str]  # keys that named no module of this model (reported, never silently dropped)
    bundled_embeddings: dict[str, dict]  # embedding name → {"string_to_param": {...}} or {"emb_params"/...: tensor}
    sd_version_hint: str | None  # "SD2", "SDXL", "SD3/Flux" when unmatched key names show another model family
    duplicates: list[str] = field(default_factory=list)  # keys whose (module, weight part) another key already filled
    hint_evidence: str | None = None  # one key that gave the hint

    def problems(self, file_name: str) -> str | None:
        """A one-paragraph report of unmatched/duplicate keys for logs and warnings; ``None`` when all matched."""
        if not self.unmatched and not self.duplicates:
            return None
        parts = []
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} of its keys match no module of the loaded model "
                         f"(e.g. {', '.join(self.unmatched[:3])})")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} keys repeat a weight another key already gave "
                         f"(e.g. {', '.join(self.duplicates[:3])}); the first one is used")
        text = f"LoRA {file_name}: " + "; ".join(parts) + "."
        if self.sd_version_hint:
            text += (f" The file looks made for {self.sd_version_hint} (key {self.hint_evidence}), "
                     "not for a Stable Diffusion 1.x model.")
        return text


def build_key_map(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> KeyMap:
    """All spellings of every module with a weight in the live UNet and text encoder.

    Build it from the model without PEFT adapters attached, once per loaded model (it is a pure function of the
    module tree; the caller keeps it with the model).
    """
    modules: dict[ModuleKey, ModuleInfo] = {}
    candidates: dict[str, set[ModuleKey]] = {}

    def add(names: Iterable[str], key: ModuleKey) -> None:
        for name in names:
            candidates.setdefault(name, set()).add(key)

    ldm_paths = _unet_ldm_paths(unet)
    for path, module in _weighted_modules(unet):
        key = (UNET, path)
        modules[key] = _info(UNET, path, module)
        add(_unet_spellings(path, ldm_paths.get(path)), key)
    for path, module in _weighted_modules(text_encoder):
        key = (TEXT_ENCODER, path)
        modules[key] = _info(TEXT_ENCODER, path, module)
        add(_text_encoder_spellings(path), key)

    spellings = {name: next(iter(keys)) for name, keys in candidates.items() if len(keys) == 1}
    ambiguous = frozenset(name for name, keys in candidates.items() if len(keys) > 1)
    if ambiguous:
        logger.debug("LoRA key map: %d spellings name two modules and are not used: %s", len(ambiguous),
                     sorted(ambiguous)[:5])
    digest = hashlib.sha1()
    for (component, path), info in sorted(modules.items()):
        digest.update(f"{component}:{path}:{info.module_type}:{info.weight_shape};".encode())
    return KeyMap(spellings=spellings, modules=modules, signature=digest.hexdigest(), ambiguous=ambiguous)


def group_state_dict(state_dict: Mapping[str, torch.Tensor], key_map: KeyMap,
                     metadata: Mapping[str, object] | None = None) -> ParsedNetwork:
    """Group a network file's tensors per live module, under A1111's weight-part names.

    Args:
        state_dict: the file's tensors.
        key_map: the loaded model's :class:`KeyMap`.
        metadata: the file's safetensors metadata; a diffusers ``lora_adapter_metadata`` entry supplies PEFT's
            ``lora_alpha`` (and ``alpha_pattern``/``use_rslora``) for modules that have no ``alpha`` tensor.
    """
    tensors: dict[ModuleKey, dict[str, torch.Tensor]] = {}
    network_keys: dict[ModuleKey, str] = {}
    unmatched: list[str] = []
    duplicates: list[str] = []
    embeddings: dict[str, dict] = {}
    for key, tensor in state_dict.items():
        if key.startswith("bundle_emb."):
            if not _add_bundled_embedding(embeddings, key, tensor):
                unmatched.append(key)
            continue
        found = _split_key(key, key_map)
        if found is None:
            unmatched.append(key)
            continue
        module_key, module_part, weight_part = found
        weight_part = SUFFIX_RENAMES.get(weight_part, weight_part)
        group = tensors.setdefault(module_key, {})
        if weight_part in group:
            duplicates.append(key)
            continue
        group[weight_part] = tensor
        network_keys.setdefault(module_key, module_part)

    _add_peft_alphas(tensors, _peft_config(metadata))
    groups = {}
    for module_key, w in tensors.items():
        info = key_map.modules[module_key]
        groups[module_key] = NetworkWeights(
            network_key=network_keys[module_key], module_path=info.path, component=info.component, w=w,
            weight_shape=info.weight_shape, module_type=info.module_type)
    hint, evidence = _version_hint(unmatched)  # a key that matched a module fits this model by definition
    return ParsedNetwork(groups=groups, unmatched=unmatched, bundled_embeddings=embeddings, sd_version_hint=hint,
                         duplicates=duplicates, hint_evidence=evidence)


# -- key map helpers ------------------------------------------------------------------------------------------------

def _weighted_modules(root: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
    """Modules that own a ``weight`` tensor directly (Linear, Conv2d, norms, Embedding, ...)."""
    for path, module in root.named_modules():
        if path and isinstance(module._parameters.get("weight"), torch.Tensor):
            yield path, module


def _info(component: str, path: str, module: torch.nn.Module) -> ModuleInfo:
    return ModuleInfo(component=component, path=path, module_type=type(module).__name__,
                      weight_shape=tuple(module.weight.shape))


def _unet_ldm_paths(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers UNet module path → LDM path, for every weighted module ``unet_block_map`` covers."""
    config = getattr(unet, "config", None)
    try:
        down, up, layers = config["down_block_types"], config["up_block_types"], config["layers_per_block"]
    except (TypeError, KeyError):
        return {}
    if not isinstance(layers, int):
        return {}  # per-block layer counts: not an SD layout
    pairs = ldm_format.unet_block_map(list(down), list(up), layers)
    out = {}
    for path, _ in _weighted_modules(unet):
        ldm = _to_ldm(path, pairs)
        if ldm is not None:
            out[path] = ldm
    return out


def _to_ldm(path: str, pairs: list[tuple[str, str]]) -> str | None:
    dotted = path + "."
    for old, new in pairs:
        if dotted.startswith(old):
            rest = dotted[len(old):]
            if ".resnets." in old:
                for diffusers_name, ldm_name in _RESNET_NAMES:
                    if rest.startswith(diffusers_name):
                        rest = ldm_name + rest[len(diffusers_name):]
                        break
            return (new + rest)[:-1]
    return None


def _unet_spellings(path: str, ldm: str | None) -> list[str]:
    flat = path.replace(".", "_")
    names = [f"lora_unet_{flat}", f"oft_unet_{flat}", f"unet.{path}", path]
    if ldm is not None:
        ldm_flat = ldm.replace(".", "_")
        names += [f"lora_unet_{ldm_flat}", f"diffusion_model_{ldm_flat}", f"oft_unet_{ldm_flat}"]
    head, _, last = path.rpartition(".")
    if path.endswith(".to_out.0"):
        head, last = path[:-len(".to_out.0")], "to_out.0"
    processor = _UNET_PROCESSOR_NAMES.get(last)
    if processor and head:
        names += [f"unet.{head}.processor.{processor}", f"{head}.processor.{processor}"]
    return names


def _text_encoder_spellings(path: str) -> list[str]:
    bare = _strip_text_model(path)  # transformers >= 5.6 paths have no "text_model." level; older ones do
    flat = bare.replace(".", "_")
    names = [f"lora_te_text_model_{flat}", f"lora_te1_text_model_{flat}", f"lora_te_{flat}", f"lora_te1_{flat}",
             f"transformer_text_model_{flat}",
             f"text_encoder.text_model.{bare}", f"text_encoder.{bare}", f"text_model.{bare}", bare]
    head, _, last = bare.rpartition(".")
    processor = _TE_PROCESSOR_NAMES.get(last)
    if processor and head:
        names += [f"text_encoder.text_model.{head}.{processor}", f"text_encoder.{head}.{processor}"]
    return names


def _strip_text_model(path: str) -> str:
    return path.removeprefix("text_model.")


# -- grouping helpers -----------------------------------------------------------------------------------------------

def _split_key(key: str, key_map: KeyMap) -> tuple[ModuleKey, str, str] | None:
    """``(module, module part, weight part)``: A1111's first-``.`` split, else the longest dotted module prefix."""
    module_part, _, weight_part = key.partition(".")
    found = key_map.lookup(module_part)
    if found is not None and weight_part:
        return found, module_part, weight_part
    end = key.rfind(".")
    while end > 0:
        found = key_map.lookup(key[:end])
        if found is not None:
            return found, key[:end], key[end + 1:]
        end = key.rfind(".", 0, end)
    return None


def _add_bundled_embedding(embeddings: dict[str, dict], key: str, tensor: torch.Tensor) -> bool:
    """A1111's ``bundle_emb.<name>.<rest>``: ``string_to_param.<k>`` nests, anything else is stored by name."""
    parts = key.split(".", 2)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        return False
    _, name, rest = parts
    entry = embeddings.setdefault(name, {})
    if rest.startswith("string_to_param."):
        entry.setdefault("string_to_param", {})[rest[len("string_to_param."):]] = tensor
    else:
        entry[rest] = tensor
    return True


def _peft_config(metadata: Mapping[str, object] | None) -> dict[str, object]:
    """diffusers' ``lora_adapter_metadata`` (a JSON object of ``"<component>.<LoraConfig field>"``), decoded."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            logger.warning("LoRA metadata lora_adapter_metadata is not JSON; PEFT alpha ignored.")
            return {}
    return raw if isinstance(raw, dict) else {}


def _add_peft_alphas(tensors: dict[ModuleKey, dict[str, torch.Tensor]], config: Mapping[str, object]) -> None:
    """Give LoRA groups without ``alpha`` the one PEFT's config implies: ``alpha/rank`` = PEFT's scale."""
    if not config:
        return
    for (component, path), w in tensors.items():
        down = w.get("lora_down.weight")
        if down is None or "alpha" in w:
            continue
        lora_alpha = _pattern_value(config.get(f"{component}.alpha_pattern"), path, config.get(f"{component}.lora_alpha"))
        rank = _pattern_value(config.get(f"{component}.rank_pattern"), path, config.get(f"{component}.r"))
        if not isinstance(lora_alpha, (int, float)) or not isinstance(rank, (int, float)) or rank <= 0:
            continue
        scale = lora_alpha / (math.sqrt(rank) if config.get(f"{component}.use_rslora") else rank)
        w["alpha"] = torch.tensor(scale * down.shape[0])


def _pattern_value(patterns: object, path: str, default: object) -> object:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a pattern matches the module path or a ``.``-suffix of it."""
    if isinstance(patterns, dict):
        for pattern, value in patterns.items():
            try:
                if re.fullmatch(rf"(.*\.)?(?:{pattern})", path):
                    return value
            except re.error:
                if path == pattern or path.endswith("." + pattern):
                    return value
    return default


def _version_hint(keys: Iterable[str]) -> tuple[str | None, str | None]:
    for pattern, version in _VERSION_PATTERNS:
        for key in keys:
            if pattern.search(key):
                return version, key
    return None, None
