"""(IA)³ (LyCORIS ``ia3``): learned per-channel scales, ``ΔW = W ⊙ w``.

``w`` scales the output rows, or the input columns when the file's ``on_input`` flag is set. The delta depends on
the *current* weight, so when networks stack it scales what the earlier ones produced (A1111 applies them in
order). There is no rank: ``alpha`` is ignored and the scale is 1 unless the file has ``scale``.

A1111 reshapes ``w`` to ``(-1, 1)``, which only broadcasts for Linear weights; LyCORIS stores conv scales as
``(1, C, 1, 1)``. We broadcast along the channel axis for any weight rank, which equals A1111 on Linear and makes
conv IA3 work (A1111 raises on it). A file without ``on_input`` (A1111 would fail with a ``KeyError``) scales
outputs, LyCORIS's default.
"""

from __future__ import annotations

import torch

from .network import NetworkModule, NetworkWeights


class NetworkModuleIa3(NetworkModule):
    """One module's (IA)³ scales."""

    def __init__(self, weights: NetworkWeights) -> None:
        super().__init__(weights)
        self.scales = weights.w["weight"]
        on_input = weights.w.get("on_input")
        self.on_input = bool(on_input.item()) if on_input is not None else False

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        scales = self.on(self.scales, weight).flatten()
        axis = 1 if self.on_input else 0
        if weight.dim() < 2 or scales.numel() != weight.shape[axis]:
            raise ValueError(f"{self.weights.network_key}: IA3 has {scales.numel()} scales for "
                             f"{'input' if self.on_input else 'output'} axis of a weight shaped {tuple(weight.shape)}")
        shape = [1] * weight.dim()
        shape[axis] = -1
        updown = weight * scales.reshape(shape)
        return self.finalize_updown(updown, weight, tuple(weight.shape))


def create_module(weights: NetworkWeights) -> NetworkModuleIa3 | None:
    """An IA3 module when the group holds ``weight`` (A1111's test), else ``None``."""
    if "weight" in weights.w:
        return NetworkModuleIa3(weights)
    return None
