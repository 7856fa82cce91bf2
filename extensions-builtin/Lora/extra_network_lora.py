"""``<lora:name:te:unet:dyn>`` (and ``<lyco:...>``): A1111's multiplier rules, applied through the WeightPatchers.

Multipliers (A1111): ``te`` = 2nd positional or ``te=``, default 1; ``unet`` = 3rd positional or ``unet=``,
defaulting to **te**; ``dyn`` = 4th positional or ``dyn=`` (DyLoRA rank). The text-encoder patcher gets each
network's text-encoder modules with ``te``, the UNet patcher its UNet modules with ``unet``.

Weights stay merged after a job (A1111 does the same): the next job reconciles to its own set, so repeating a job
costs nothing and a job without LoRA restores the exact original weights. A missing or broken network never stops
the job: it is reported in the job's comments ("Networks not found: x").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from modules.extra_networks import ActivationContext, ExtraNetworkParams
from modules.patching import WantedNetwork

from .network_types import create_module

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoraRequest:
    """One ``<lora:...>`` tag, parsed."""

    name: str
    te: float
    unet: float
    dyn: int | None


def parse_params(params: ExtraNetworkParams) -> LoraRequest:
    """A1111's rules; raises ValueError naming the tag when a number does not parse."""
    positional, named = params.positional, params.named
    if not positional or not positional[0]:
        raise ValueError(f"<lora:{':'.join(params.items)}> has no network name")
    try:
        te = float(positional[1]) if len(positional) > 1 else 1.0
        te = float(named["te"]) if "te" in named else te
        unet = float(positional[2]) if len(positional) > 2 else te
        unet = float(named["unet"]) if "unet" in named else unet
        dyn = int(positional[3]) if len(positional) > 3 else None
        dyn = int(named["dyn"]) if "dyn" in named else dyn
    except ValueError:
        raise ValueError(f"<lora:{':'.join(params.items)}>: multipliers must be numbers (dyn a whole number)") from None
    return LoraRequest(positional[0], te, unet, dyn)


class _DynView:
    """A LoRA module seen with a DyLoRA rank limit, without changing the shared module."""

    def __init__(self, module, dyn: int) -> None:
        self.module, self.dyn = module, dyn

    @contextmanager
    def _limited(self) -> Iterator[object]:
        previous, self.module.dyn = self.module.dyn, self.dyn
        try:
            yield self.module
        finally:
            self.module.dyn = previous

    def calc(self, weight: torch.Tensor, bias: torch.Tensor | None):
        with self._limited() as module:
            return module.calc(weight, bias)

    def calc_staged(self, weight: torch.Tensor, bias: torch.Tensor | None, stage):
        with self._limited() as module:
            return module.calc_staged(weight, bias, stage)

    def add_to(self, weight: torch.Tensor, multiplier: float, stage) -> bool:
        with self._limited() as module:
            return module.add_to(weight, multiplier, stage)


class ExtraNetworkLora:
    """The ``lora`` extra network (``lyco`` is registered as its alias)."""

    name = "lora"

    def __init__(self, library, key_map_for) -> None:
        """Args:
            library: the LoraLibrary (finds and loads files, caches parsed networks).
            key_map_for: ``model -> KeyMap`` for the live model (cached per model by the caller).
        """
        self.library = library
        self.key_map_for = key_map_for

    def activate(self, ctx: ActivationContext, params: list[ExtraNetworkParams]) -> None:
        model = ctx.model
        requests, missing, hashes = [], [], {}
        for item in params:
            try:
                requests.append(parse_params(item))
            except ValueError as e:
                ctx.comments.append(str(e))
        wanted: dict[str, list[WantedNetwork]] = {"unet": [], "text_encoder": []}
        for request in requests:
            entry = self.library.find(request.name)
            if entry is None:
                missing.append(request.name)
                continue
            try:
                network = self.library.load(entry, self.key_map_for(model))
                deltas = self._deltas(network)
            except (ValueError, OSError, RuntimeError) as e:
                ctx.comments.append(f"Lora {request.name} could not be loaded: {e}")
                logger.warning("Lora %s could not be loaded: %s", request.name, e)
                continue
            key = (str(entry.path), network.mtime_ns, request.dyn)
            for component, multiplier in (("text_encoder", request.te), ("unet", request.unet)):
                modules = {path: (_DynView(m, request.dyn) if request.dyn else m)
                           for path, m in deltas.get(component, {}).items()}
                if modules:
                    wanted[component].append(WantedNetwork(key, multiplier, modules))
            shorthash = self.library.shorthash(entry)
            if shorthash:
                hashes[request.name.replace(":", "").replace(",", "")] = shorthash
        if missing:
            ctx.comments.append(f"Networks not found: {', '.join(missing)}")
        for component, networks in wanted.items():
            model.patchers[component].reconcile(networks)
        if hashes and ctx.opts.get("lora_add_hashes_to_infotext", True):
            # a hires pass's context starts with the first pass's fields: A1111 keeps those hashes and adds these
            known = dict(item.split(": ", 1) for item in ctx.infotext["Lora hashes"].split(", ")) \
                if ctx.infotext.get("Lora hashes") else {}
            ctx.infotext["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in {**known, **hashes}.items())

    def deactivate(self, ctx: ActivationContext) -> None:
        """Nothing to undo: the weights stay merged until the next job reconciles them (A1111's behaviour)."""

    @staticmethod
    def _deltas(network) -> dict[str, dict[str, object]]:
        """Per component, the network's modules keyed by live module path (built once per loaded network)."""
        if network.modules is None:
            modules: dict[str, dict[str, object]] = {}
            for (component, path), weights in network.groups.items():
                modules.setdefault(component, {})[path] = create_module(weights)
            network.modules = modules
        return network.modules
