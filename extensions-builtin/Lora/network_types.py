"""The network types in A1111's order and the one entry point that picks the type for a module's tensors.

A1111 tries lora, hada, ia3, lokr, full, norm, glora, oft and takes the first whose ``create_module`` accepts the
group; the order matters where key sets overlap (e.g. IA3 accepts any group with ``weight``). A group no type
accepts makes the whole file fail to load in A1111; here it raises ``ValueError`` naming the module and its keys.
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    network_full,
    network_glora,
    network_hada,
    network_ia3,
    network_lokr,
    network_lora,
    network_norm,
    network_oft,
)
from .network import NetworkModule, NetworkWeights

Factory = Callable[[NetworkWeights], NetworkModule | None]

#: (type name, factory), in the order A1111 tries them.
MODULE_TYPES: tuple[tuple[str, Factory], ...] = (
    ("lora", network_lora.create_module),
    ("hada", network_hada.create_module),
    ("ia3", network_ia3.create_module),
    ("lokr", network_lokr.create_module),
    ("full", network_full.create_module),
    ("norm", network_norm.create_module),
    ("glora", network_glora.create_module),
    ("oft", network_oft.create_module),
)


def create_module(weights: NetworkWeights) -> NetworkModule:
    """The first type (A1111's order) that accepts ``weights``; ``ValueError`` when none does."""
    for _name, factory in MODULE_TYPES:
        module = factory(weights)
        if module is not None:
            return module
    raise ValueError(f"network module {weights.network_key!r} ({weights.component} {weights.module_path!r}): "
                     f"no network type accepts its keys {sorted(weights.w)}")
