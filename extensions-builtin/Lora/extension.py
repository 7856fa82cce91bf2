"""Wires the LoRA extension into the app: the library, the ``lora`` network (+ ``lyco`` alias), its API routes."""

from __future__ import annotations

from modules.extensions import ExtensionParts

from . import api
from .extra_network_lora import ExtraNetworkLora
from .library import LoraLibrary
from .lora_keys import build_key_map

KEY_MAP = "lora.key_map"


def key_map_for(model) -> object:
    """The model's key map, built once per loaded model (from its live module tree)."""
    if KEY_MAP not in model.extras:
        model.extras[KEY_MAP] = build_key_map(model.pipe.unet, model.pipe.text_encoder)
    return model.extras[KEY_MAP]


def register(state) -> ExtensionParts:
    """Create the library over ``--lora-dir`` and the old LyCORIS folder; register ``<lora:...>``/``<lyco:...>``."""
    library = LoraLibrary([state.paths.lora_dir, state.paths.lyco_dir], state.hashes, state.opts,
                          no_hashing=state.args.no_hashing)
    state.libraries["lora"] = library
    state.networks.register(ExtraNetworkLora(library, key_map_for), "lyco")
    return ExtensionParts(public_routers=[api.create_router(library)])
